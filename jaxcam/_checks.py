"""One small validation layer for public options: bools are bools, counts are positive ints, errors name the option.

`check_option(name, value)` applies the rule registered for a method option's name (`OPTION_RULES`); options
holding arrays (traced under `jax.jit`) are left to the code that uses them. The helpers are also used directly
by entry points (`explain`'s flags, `explain_batches`, the model builders).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["check_bool", "check_positive_int", "check_float", "check_choice", "check_option", "OPTION_RULES"]


def traced_hint(name: str, value: Any) -> str:
  """A hint for an option that arrived as a tracer: it was passed as an argument of the user's `jax.jit`."""
  import jax

  if not isinstance(value, jax.core.Tracer):
    return ""
  return (
    f" `{name}` is a Python option, but it arrived traced: under jax.jit bind it with functools.partial, e.g. "
    f"jax.jit(functools.partial(jaxcam.gradcam, {name}=...)), so that only tap, x and target are traced."
  )


def check_bool(name: str, value: Any) -> bool:
  """`value` if it is True or False (numpy bools too); else a TypeError naming `name`."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  hint = traced_hint(name, value)
  if hint:
    raise TypeError(f"Expected `{name}` to be True or False, got a traced value.{hint}")
  raise TypeError(f"Expected `{name}` to be True or False, got {value!r} ({type(value).__name__}).")


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> Any:
  """`value` if it is an int >= 1 (or None when allowed); else a clear error naming `name`."""
  if value is None and allow_none:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"Expected `{name}` to be a positive int{' or None' if allow_none else ''}, got {value!r}.")
  if value < 1:
    raise ValueError(f"Expected `{name}` to be a positive int{' or None' if allow_none else ''}, got {value!r}.")
  return int(value)


def check_float(name: str, value: Any, *, minimum: float = -math.inf, strict: bool = False) -> float:
  """`value` as a finite float >= `minimum` (> with `strict`); else a clear error naming `name`."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"Expected `{name}` to be a number, got {value!r} ({type(value).__name__}).")
  v = float(value)
  if not math.isfinite(v) or v < minimum or (strict and v == minimum):
    bound = f"{'>' if strict else '>='} {minimum:g}" if minimum > -math.inf else "finite"
    raise ValueError(f"Expected `{name}` to be a finite number {bound}, got {value!r}.")
  return v


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
  if value not in tuple(choices):
    raise ValueError(f"Expected `{name}` to be one of {tuple(choices)}, got {value!r}.")
  return value


def _positive_float(name: str, value: Any) -> None:
  check_float(name, value, minimum=0.0, strict=True)


def _nonneg_float(name: str, value: Any) -> None:
  check_float(name, value, minimum=0.0)


def _positive_int(name: str, value: Any) -> None:
  check_positive_int(name, value)


def _optional_positive_int(name: str, value: Any) -> None:
  check_positive_int(name, value, allow_none=True)


def _optional_positive_float(name: str, value: Any) -> None:
  if value is not None:
    check_float(name, value, minimum=0.0, strict=True)


def _kernel(name: str, value: Any) -> None:
  from jaxcam.methods.factorization import KERNELS

  check_choice(name, value, KERNELS)


OPTION_RULES: dict[str, Callable[[str, Any], None]] = {
  "eps": _positive_float,
  "k": _positive_float,
  "gamma": _optional_positive_float,
  "kernel": _kernel,
  "degree": _positive_int,
  "n_components": _positive_int,
  "std": _nonneg_float,
  "chunk_size": _positive_int,
  "num_samples": _positive_int,
  "top_n": _optional_positive_int,
}
"""Rules for method options by name (rows and providers share names: ``chunk_size`` means the same everywhere)."""


def _is_array(value: Any) -> bool:
  import jax

  return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree_util.tree_leaves(value))


def check_option(name: str, value: Any) -> None:
  """Apply the rule for option `name` to a static (non-array) value; a static option given as a tracer is an
  error that explains the functools.partial rule."""
  rule = OPTION_RULES.get(name)
  if rule is None:
    return
  hint = traced_hint(name, value)
  if hint:
    raise TypeError(f"Expected `{name}` to be a Python number, got a traced value.{hint}")
  if not _is_array(value):
    rule(name, value)
