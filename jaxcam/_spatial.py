"""The one place that knows which axes are spatial (channels-last 2-D maps today).

Feature maps are ``(..., h, w, C)``, raw maps ``(..., h, w)`` and images ``(B, H, W, C)``. 1-D or 3-D maps later
change only this file.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

N_SPATIAL = 2
FEATURE_AXES = tuple(range(-N_SPATIAL - 1, -1))  # spatial axes of (..., h, w, C)
MAP_AXES = tuple(range(-N_SPATIAL, 0))  # spatial axes of (..., h, w)
BATCHED_FEATURE_AXES = tuple(range(1, N_SPATIAL + 1))  # the same axes of (B, h, w, C), counted from the front
FEATURE_RANK = N_SPATIAL + 2  # (B, h, w, C)


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


def flatten_map(m: jax.Array) -> jax.Array:
  """``(..., h, w)`` -> ``(..., h*w)``."""
  return m.reshape(m.shape[:-N_SPATIAL] + (-1,))


def map_size(m: jax.Array) -> tuple[int, ...]:
  """The spatial size ``(h, w)`` of ``(..., h, w)`` maps."""
  return tuple(m.shape[-N_SPATIAL:])


def feature_size(a: jax.Array) -> tuple[int, ...]:
  """The spatial size ``(h, w)`` of ``(..., h, w, C)`` features."""
  return tuple(a.shape[-N_SPATIAL - 1 : -1])


def image_size(x: jax.Array) -> tuple[int, ...]:
  """The spatial size ``(H, W)`` of an image batch ``(B, H, W, C)``."""
  return tuple(x.shape[1 : 1 + N_SPATIAL])


def positions(a: jax.Array) -> int:
  """Number of spatial positions of ``(..., h, w, C)`` features."""
  return math.prod(feature_size(a))
