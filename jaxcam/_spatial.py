"""The one place that knows which axes are spatial, as pure functions of a shape and an explicit rank.

Feature maps are ``(..., *spatial, C)``, raw maps ``(..., *spatial)`` and images ``(B, *spatial, C)``, with two
spatial axes ``(h, w)`` for images (1-D inputs travel as ``(L, 1)`` grids) and three ``(d, h, w)`` for volumes.
Nothing here is global: the rank `n` is read from the arrays where their layout fixes it (`of_images` for an
input batch, `of_rows` for what a method row receives) and passed on explicitly everywhere else.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def of_images(x) -> int:
  """The spatial rank of an input batch ``(B, *spatial, C)``: 2 for images, 3 for volumes."""
  return len(x.shape) - 2


def of_rows(a) -> int:
  """The spatial rank of what a method row receives: activations / gradients ``(B, K, *spatial, C)``.

  Raises a clear error for an array of rank < 4 (rows always get the batch and target axes)."""
  rank = len(getattr(a, "shape", ()))
  if rank < 4:
    raise ValueError(
      f"Expected activations of shape (B, K, *spatial, C) (batch, targets, spatial axes, channels), got "
      f"{tuple(getattr(a, 'shape', ()))}. Add the missing axes, e.g. a[:, None] for one target."
    )
  return rank - 3


def feature_axes(n: int) -> tuple[int, ...]:
  """Spatial axes of ``(..., *spatial, C)``, counted from the end."""
  return tuple(range(-n - 1, -1))


def map_axes(n: int) -> tuple[int, ...]:
  """Spatial axes of ``(..., *spatial)``, counted from the end."""
  return tuple(range(-n, 0))


def batched_feature_axes(n: int) -> tuple[int, ...]:
  """Spatial axes of ``(B, *spatial, C)``, counted from the front."""
  return tuple(range(1, n + 1))


def feature_sum(x: jax.Array, n: int, *, keepdims: bool = True) -> jax.Array:
  """Sum over the `n` spatial axes of ``(..., *spatial, C)``."""
  return jnp.sum(x, axis=feature_axes(n), keepdims=keepdims)


def feature_mean(x: jax.Array, n: int, *, keepdims: bool = True) -> jax.Array:
  """Mean over the `n` spatial axes of ``(..., *spatial, C)``."""
  return jnp.mean(x, axis=feature_axes(n), keepdims=keepdims)


def map_min_max(m: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """Per-map minimum and maximum over the `n` spatial axes of ``(..., *spatial)``, keeping dims."""
  return jnp.min(m, axis=map_axes(n), keepdims=True), jnp.max(m, axis=map_axes(n), keepdims=True)


def flatten_positions(x: jax.Array, n: int) -> jax.Array:
  """``(..., *spatial, C)`` -> ``(..., positions, C)``."""
  return x.reshape(x.shape[: -n - 1] + (-1, x.shape[-1]))


def flatten_map(m: jax.Array, n: int) -> jax.Array:
  """``(..., *spatial)`` -> ``(..., positions)``."""
  return m.reshape(m.shape[:-n] + (-1,))


def feature_size(a: jax.Array, n: int) -> tuple[int, ...]:
  """The spatial size of ``(..., *spatial, C)`` features."""
  return tuple(a.shape[-n - 1 : -1])


def image_size(x: jax.Array) -> tuple[int, ...]:
  """The spatial size of an input batch ``(B, *spatial, C)``."""
  return tuple(x.shape[1:-1])


def positions(a: jax.Array, n: int) -> int:
  """Number of spatial positions of ``(..., *spatial, C)`` features."""
  return math.prod(feature_size(a, n))


def spatial_ones(n: int) -> tuple[None, ...]:
  """``(None,) * n``: an index that appends one axis per spatial axis."""
  return (None,) * n
