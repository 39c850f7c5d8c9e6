"""The one place that knows which axes are spatial.

Feature maps are ``(..., *spatial, C)``, raw maps ``(..., *spatial)`` and images ``(B, *spatial, C)`` with two
spatial axes ``(h, w)`` for images (1-D inputs travel as ``(L, 1)`` grids) and three ``(d, h, w)`` for volumes.
The rank is set for the duration of one traced explanation by `dims` (the entry points take it from the input's
rank); everything else asks `n()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp

_DIMS: contextvars.ContextVar[int] = contextvars.ContextVar("jaxcam_spatial_dims", default=2)


@contextlib.contextmanager
def dims(n_spatial: int) -> Iterator[None]:
  """Within the block, feature maps have `n_spatial` spatial axes (2: images, 3: volumes)."""
  token = _DIMS.set(int(n_spatial))
  try:
    yield
  finally:
    _DIMS.reset(token)


def n() -> int:
  """The number of spatial axes in effect."""
  return _DIMS.get()


def feature_axes() -> tuple[int, ...]:
  """Spatial axes of ``(..., *spatial, C)``, counted from the end."""
  return tuple(range(-n() - 1, -1))


def map_axes() -> tuple[int, ...]:
  """Spatial axes of ``(..., *spatial)``, counted from the end."""
  return tuple(range(-n(), 0))


def batched_feature_axes() -> tuple[int, ...]:
  """Spatial axes of ``(B, *spatial, C)``, counted from the front."""
  return tuple(range(1, n() + 1))


def feature_rank() -> int:
  """The rank of a batched feature map ``(B, *spatial, C)``."""
  return n() + 2


def feature_sum(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
  """Sum over the spatial axes of ``(..., *spatial, C)``."""
  return jnp.sum(x, axis=feature_axes(), keepdims=keepdims)


def feature_mean(x: jax.Array, *, keepdims: bool = True) -> jax.Array:
  """Mean over the spatial axes of ``(..., *spatial, C)``."""
  return jnp.mean(x, axis=feature_axes(), keepdims=keepdims)


def map_min_max(m: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-map minimum and maximum over the spatial axes of ``(..., *spatial)``, keeping dims."""
  return jnp.min(m, axis=map_axes(), keepdims=True), jnp.max(m, axis=map_axes(), keepdims=True)


def flatten_positions(x: jax.Array) -> jax.Array:
  """``(..., *spatial, C)`` -> ``(..., positions, C)``."""
  return x.reshape(x.shape[: -n() - 1] + (-1, x.shape[-1]))


def flatten_map(m: jax.Array) -> jax.Array:
  """``(..., *spatial)`` -> ``(..., positions)``."""
  return m.reshape(m.shape[: -n()] + (-1,))


def map_size(m: jax.Array) -> tuple[int, ...]:
  """The spatial size of ``(..., *spatial)`` maps."""
  return tuple(m.shape[-n() :])


def feature_size(a: jax.Array) -> tuple[int, ...]:
  """The spatial size of ``(..., *spatial, C)`` features."""
  return tuple(a.shape[-n() - 1 : -1])


def image_size(x: jax.Array) -> tuple[int, ...]:
  """The spatial size of an input batch ``(B, *spatial, C)``."""
  return tuple(x.shape[1 : 1 + n()])


def positions(a: jax.Array) -> int:
  """Number of spatial positions of ``(..., *spatial, C)`` features."""
  return math.prod(feature_size(a))


def spatial_ones() -> tuple[None, ...]:
  """``(None,) * n()``: an index that appends one axis per spatial axis."""
  return (None,) * n()
