"""The single method table: name -> weight function and what it requires.

Every public method function (`jaxcam.gradcam`, ...), `jaxcam.explain`, the CLI's ``--method`` and the common
test suite come from this table. Adding a method is one pure function in its family file plus one row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxcam._errors import UnknownNameError, unknown_name_message
from jaxcam.methods import classic, factorization, gradient

__all__ = ["MethodSpec", "METHODS", "get_method", "method_names"]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One row of the method table.

  kind: "channel" (fn -> (..., C)), "spatial" (fn -> (..., h, w, C)), "map" (fn -> (..., h, w)) or "cam"
  (classic CAM: weights from the Dense kernel). needs_grads: whether a backward pass is needed.
  class_specific: whether the map depends on the target. differentiable: whether maps are meant to be
  differentiated (the Eigen methods are not). options: keyword options with their defaults.
  """

  name: str
  fn: Callable[..., Any]
  kind: str
  needs_grads: bool = True
  class_specific: bool = True
  differentiable: bool = True
  options: tuple[tuple[str, Any], ...] = ()
  aliases: tuple[str, ...] = ()
  title: str = ""
  extra: str | None = None  # "diagonals" (exact Grad-CAM++) or "hvp" (Shapley-CAM): computed from the tap


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("cam", classic.cam_weights, "cam", needs_grads=False, options=(("fc", None),),
                   title="CAM"),
        MethodSpec("gradcam", gradient.gradcam_weights, "channel", title="Grad-CAM"),
        MethodSpec("gradcam_pp", gradient.gradcam_pp_weights, "channel",
                   options=(("eps", 1e-6), ("derivatives", "approx"), ("convention", "exp"), ("strategy", "auto"),
                            ("chunk_size", 256)),
                   aliases=("gradcam++", "gradcampp"), title="Grad-CAM++", extra="diagonals"),
        MethodSpec("xgradcam", gradient.xgradcam_weights, "channel", options=(("eps", 1e-7),),
                   title="XGrad-CAM"),
        MethodSpec("layercam", gradient.layercam_weights, "spatial", title="LayerCAM"),
        MethodSpec("hirescam", gradient.hirescam_weights, "spatial", title="HiResCAM"),
        MethodSpec("gradcam_elementwise", gradient.gradcam_elementwise_weights, "spatial",
                   aliases=("gradcamelementwise",), title="Grad-CAM element-wise"),
        MethodSpec("shapleycam", gradient.shapleycam_weights, "channel", title="Shapley-CAM", extra="hvp"),
        MethodSpec("eigencam", factorization.eigencam_map, "map", needs_grads=False, class_specific=False,
                   differentiable=False, title="Eigen-CAM"),
        MethodSpec("eigengradcam", factorization.eigengradcam_map, "map", differentiable=False,
                   title="EigenGrad-CAM"),
    ]
}

_ALIASES = {alias: spec.name for spec in METHODS.values() for alias in spec.aliases}


def method_names() -> list[str]:
  """Registered method names, in table order."""
  return list(METHODS)


def get_method(name: str) -> MethodSpec:
  """The table row for `name` (aliases such as "gradcam++" and dashes accepted); KeyError with hints."""
  if isinstance(name, MethodSpec):
    return name
  if not isinstance(name, str):
    raise TypeError(f"Expected `method` to be a method name such as 'gradcam', got {type(name).__name__}.")
  key = name.lower().replace("-", "_")
  key = _ALIASES.get(key, _ALIASES.get(key.replace("_", ""), key))
  if key not in METHODS:
    raise UnknownNameError(unknown_name_message("method", name, method_names(), "a registered CAM method"))
  return METHODS[key]
