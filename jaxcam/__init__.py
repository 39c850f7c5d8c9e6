"""jaxcam: class activation maps for JAX and Flax, by autodiff instead of hooks.

Importing jaxcam changes no global state (no XLA flags, no JAX config). One public function per registered method
(`jaxcam.gradcam`, `jaxcam.gradcam_pp`, ...) is served from the live method table (`jaxcam._public` makes them): a
row registered later (`jaxcam.register_method`) is ``jaxcam.<its name>`` at once.
"""

from jaxcam import chunking, core, derivatives, guided, layouts, lrp, postprocess, providers, targets
from jaxcam._errors import LayerNotFoundError, UnknownNameError
from jaxcam._version import __version__
from jaxcam.api import Explanation, check_images, explain, explain_many, public_function
from jaxcam.api import public_functions as public_functions  # jaxcam.public_functions, kept for users
from jaxcam.batch import explain_batches, local_mesh
from jaxcam.chunking import chunked_map, chunked_sum
from jaxcam.concepts import Concepts, dff
from jaxcam.fullgradient import fullgrad
from jaxcam.guided import guided_backprop, guided_gradcam
from jaxcam.methods.opticam import trajectory as opticam_trajectory
from jaxcam.methods.table import METHODS, MethodSpec, get_method, method_names, register_method
from jaxcam.multiscale import sess
from jaxcam.providers import Provider, register_provider
from jaxcam.taps import (
  FunctionTap,
  IdentityLayout,
  KerasTap,
  LayerInfo,
  LinenTap,
  NnxTap,
  Tap,
  function_tap,
  keras_tap,
  linen_tap,
  list_layers,
  nnx_tap,
)
from jaxcam.wrappers import Augmentation, aug_smooth, eigen_smooth, finer, flip_multiply_tta, refine, smooth

_METHOD_FUNCTIONS: dict = {}  # name -> (row, function), rebuilt when the row under a name changes
_LAZY_MODULES = ("models", "viz", "io", "cli", "study", "writers", "stream", "metrics", "autoexplain", "compile_cache")
_LAZY_FRONT_DOOR = ("explain_model", "find_layer", "ModelExplanation")


def __getattr__(name):
  """`jaxcam.<method>` from the live method table (a row registered later is there at once), and lazy submodules
  with heavier imports (numpy-only loaders, matplotlib)."""
  import importlib

  spec = METHODS.get(name)
  if spec is not None:
    cached = _METHOD_FUNCTIONS.get(name)
    if cached is None or cached[0] is not spec:
      cached = _METHOD_FUNCTIONS[name] = (spec, public_function(spec))
    return cached[1]
  if name in _LAZY_MODULES:
    return importlib.import_module(f"jaxcam.{name}")
  if name in _LAZY_FRONT_DOOR:  # the one-line front door (imports viz)
    return getattr(importlib.import_module("jaxcam.autoexplain"), name)
  raise AttributeError(f"module 'jaxcam' has no attribute {name!r}")


__all__ = [
  "Augmentation",
  "aug_smooth",
  "Concepts",
  "METHODS",
  "Explanation",
  "ModelExplanation",
  "FunctionTap",
  "IdentityLayout",
  "KerasTap",
  "LayerInfo",
  "LayerNotFoundError",
  "LinenTap",
  "MethodSpec",
  "NnxTap",
  "Provider",
  "Tap",
  "UnknownNameError",
  "__version__",
  "check_images",
  "chunked_map",
  "chunked_sum",
  "chunking",
  "guided",
  "layouts",
  "core",
  "derivatives",
  "dff",
  "eigen_smooth",
  "explain",
  "explain_batches",
  "explain_many",
  "explain_model",
  "find_layer",
  "finer",
  "flip_multiply_tta",
  "fullgrad",
  "function_tap",
  "get_method",
  "guided_backprop",
  "guided_gradcam",
  "keras_tap",
  "linen_tap",
  "list_layers",
  "local_mesh",
  "lrp",
  "method_names",
  "nnx_tap",
  "opticam_trajectory",
  "postprocess",
  "providers",
  "refine",
  "register_method",
  "register_provider",
  "sess",
  "smooth",
  "targets",
]
__all__ += sorted(METHODS)  # the built-in rows' functions, generated from the method table


def __dir__():
  return sorted(set(globals()) | set(METHODS) | set(_LAZY_MODULES) | set(_LAZY_FRONT_DOOR))
