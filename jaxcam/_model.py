"""What the functions that need "the model" accept: a function ``x -> output`` or a jaxcam tap (its plain forward).

A tap travels into `jax.jit` as a pytree argument (new weights never recompile); a plain function is static.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["split_model", "tap_forward"]


def tap_forward(x, tap):
  return tap.forward(x)


def split_model(model: Any, *, argname: str = "model_fn") -> tuple[Callable, Any]:
  """``(static function f(x, *arg), traced argument or None)`` for a function or a jaxcam tap."""
  if hasattr(model, "forward") and hasattr(model, "activation_shape"):  # a jaxcam tap: its plain forward pass
    return tap_forward, model
  if not callable(model):
    raise TypeError(
      f"Expected `{argname}` to be a function x -> logits or a jaxcam tap, got {type(model).__name__}. For a linen "
      "module: functools.partial(module.apply, variables)."
    )
  return model, None
