"""jaxcam: class activation maps for JAX and Flax, by autodiff instead of hooks.

Importing jaxcam changes no global state (no XLA flags, no JAX config).
"""

from jaxcam import derivatives, postprocess, targets
from jaxcam._errors import LayerNotFoundError, UnknownNameError
from jaxcam.api import PUBLIC as _PUBLIC
from jaxcam.api import Explanation, check_images, explain, explain_many
from jaxcam.batch import explain_batches, local_mesh
from jaxcam.methods.table import METHODS, get_method, method_names
from jaxcam.taps import FunctionTap, LayerInfo, LinenTap, NnxTap, Tap, function_tap, linen_tap, list_layers, nnx_tap

__version__ = "0.1.0"

cam = _PUBLIC["cam"]
gradcam = _PUBLIC["gradcam"]
gradcam_pp = _PUBLIC["gradcam_pp"]
xgradcam = _PUBLIC["xgradcam"]
layercam = _PUBLIC["layercam"]
hirescam = _PUBLIC["hirescam"]
gradcam_elementwise = _PUBLIC["gradcam_elementwise"]
eigencam = _PUBLIC["eigencam"]
eigengradcam = _PUBLIC["eigengradcam"]
shapleycam = _PUBLIC["shapleycam"]


def __getattr__(name):  # lazy submodules with heavier imports (numpy-only loaders, matplotlib)
  import importlib

  if name in ("models", "viz", "io", "cli"):
    return importlib.import_module(f"jaxcam.{name}")
  raise AttributeError(f"module 'jaxcam' has no attribute {name!r}")


__all__ = [
    "METHODS",
    "Explanation",
    "FunctionTap",
    "LayerInfo",
    "LayerNotFoundError",
    "LinenTap",
    "NnxTap",
    "Tap",
    "UnknownNameError",
    "__version__",
    "cam",
    "check_images",
    "derivatives",
    "eigencam",
    "eigengradcam",
    "explain",
    "explain_batches",
    "explain_many",
    "function_tap",
    "get_method",
    "gradcam",
    "gradcam_elementwise",
    "gradcam_pp",
    "hirescam",
    "layercam",
    "linen_tap",
    "list_layers",
    "local_mesh",
    "method_names",
    "nnx_tap",
    "postprocess",
    "shapleycam",
    "targets",
    "xgradcam",
]
