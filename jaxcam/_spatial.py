"""The one place that knows which axes are spatial (channels-last 2-D maps today).

Feature maps are ``(..., h, w, C)`` and raw maps ``(..., h, w)``. 1-D or 3-D maps later change only this file.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

N_SPATIAL = 2
FEATURE_AXES = tuple(range(-N_SPATIAL - 1, -1))  # spatial axes of (..., h, w, C)
MAP_AXES = tuple(range(-N_SPATIAL, 0))  # spatial axes of (..., h, w)


def feature_sum(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
  """Sum over the spatial axes of ``(..., h, w, C)``."""
  return jnp.sum(x, axis=FEATURE_AXES, keepdims=keepdims)


def feature_mean(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
  """Mean over the spatial axes of ``(..., h, w, C)``."""
  return jnp.mean(x, axis=FEATURE_AXES, keepdims=keepdims)


def map_min_max(m: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-map minimum and maximum over the spatial axes of ``(..., h, w)``, keeping dims."""
  return jnp.min(m, axis=MAP_AXES, keepdims=True), jnp.max(m, axis=MAP_AXES, keepdims=True)


def flatten_positions(x: jax.Array) -> jax.Array:
  """``(..., h, w, C)`` -> ``(..., h*w, C)``."""
  return x.reshape(x.shape[: -N_SPATIAL - 1] + (-1, x.shape[-1]))
