"""Post-processing as pure functions: combine, ReLU, normalize, upsample, multi-layer fusion.

The default order is pytorch-grad-cam's, so maps compare one to one: per layer ``relu -> min-max normalize at
layer resolution -> bilinear upsample``; the layers (one or several) are then stacked, passed through ReLU,
averaged and min-max normalized again, at the output resolution.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcam import _spatial

__all__ = ["combine", "normalize", "upsample", "fuse"]

NORMALIZE_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def combine(weights: jax.Array, activations: jax.Array) -> jax.Array:
  """Weighted sum over channels ``sum_k w_k A_k``.

  weights ``(..., C)`` (channel) or ``(..., *spatial, C)`` (spatial); activations ``(..., *spatial, C)`` ->
  ``(..., *spatial)``.
  """
  if weights.ndim == activations.ndim:
    return jnp.sum(weights * activations, axis=-1)
  weights = weights[(Ellipsis,) + _spatial.spatial_ones() + (slice(None),)]
  return jnp.einsum("...c,...c->...", activations, weights, precision=jax.lax.Precision.HIGHEST)


def normalize(maps: jax.Array, *, eps: float = NORMALIZE_EPS) -> jax.Array:
  """Per-map min-max: ``(m - min) / (max - min + eps)``; a constant map gives zeros, never NaN.

  ``(..., h, w) -> (..., h, w)``.
  """
  lo, hi = _spatial.map_min_max(maps)
  # clip: approximate division on GPUs can land a hair above 1 (seen on an H200: 1.0000001)
  return jnp.clip((maps - lo) / (hi - lo + eps), 0.0, 1.0)


def upsample(maps: jax.Array, size: tuple[int, ...]) -> jax.Array:
  """Bilinear (trilinear for volumes) resize of ``(..., *spatial)`` maps to ``size`` (``(H, W)``, ``(D, H, W)``).

  ``jax.image.resize`` with ``antialias=False`` uses half-pixel centers, which matches torch's
  ``interpolate(mode="bilinear", align_corners=False)`` and ``cv2.resize`` (pytorch-grad-cam) when upsampling.
  """
  size = tuple(int(s) for s in size)
  lead = maps.shape[: maps.ndim - len(size)]
  if maps.shape[len(lead) :] == size:
    return maps
  return jax.image.resize(maps, lead + size, method="linear", antialias=False)


def fuse(maps: jax.Array, *, mode: str = "mean", normalized: bool = True, relu: bool = True) -> jax.Array:
  """Fuse per-layer maps stacked on axis 0, ``(L, ..., H, W) -> (..., H, W)``.

  mode "mean" is pytorch-grad-cam's (ReLU, mean, then normalize again when `normalized`, which it does for a
  single layer too); "max" is torchcam's element-wise max (torchcam's LayerCAM first rescales each layer's
  normalized map by ``tanh(2 * cam)``; `jaxcam.explain` does that at layer resolution, as torchcam).
  """
  if mode == "mean":
    out = jnp.mean(jax.nn.relu(maps) if relu else maps, axis=0)
    return normalize(out) if normalized else out
  if mode == "max":
    return jnp.max(maps, axis=0)
  raise ValueError(f"Expected `fusion` to be 'mean' or 'max', got {mode!r}.")
