"""Method options: resolved over a row's defaults, and split into traced (arrays) and static (Python values)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from jaxcam import _checks

if TYPE_CHECKING:
  from jaxcam.methods.table import MethodSpec


def has_array(value: Any) -> bool:
  """Whether any leaf of `value` is an array (a jax or numpy array): such an option is traced, not static."""
  return any(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree_util.tree_leaves(value))


def resolve_options(spec: MethodSpec, given: dict[str, Any]) -> dict[str, Any]:
  """Every option of `spec` with the given values over its defaults; `TypeError` for an unknown name."""
  defaults = spec.defaults()
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise TypeError(
      f"{spec.name} got unexpected option(s) {unknown}; its options are {sorted(defaults) or 'none'}. Common "
      "options: target, normalize, upsample, relu, fusion, progress."
    )
  for name, value in given.items():
    _checks.check_option(name, value)
  return {**defaults, **given}


def partition_options(options: dict[str, Any]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
  """(traced, static): options holding arrays (a PRNG key, a kernel, a mask) are traced, the rest static.

  As `equinox.filter_jit` splits its arguments: a new key or kernel never recompiles, a new Python value does.
  """
  traced = {k: v for k, v in options.items() if has_array(v)}
  static = []
  for k, v in sorted(options.items()):
    if k in traced:
      continue
    try:
      hash(v)
    except TypeError:
      raise TypeError(
        f"Expected option `{k}` to be an array (traced) or a hashable Python value (static), got "
        f"{type(v).__name__} {v!r}. Pass a tuple instead of a list, or an array."
      ) from None
    static.append((k, v))
  return traced, tuple(static)
