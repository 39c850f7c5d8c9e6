"""Post-processing as pure functions: combine, ReLU, normalize, upsample, multi-layer fusion.

The default order is pytorch-grad-cam's, so maps compare one to one: per layer ``relu -> min-max normalize at
layer resolution -> bilinear upsample``; the layers (one or several) are then stacked, passed through ReLU,
averaged and min-max normalized again, at the output resolution.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxcam import _checks, _spatial

__all__ = ["PostOptions", "combine", "broadcast_channel_weights", "normalize", "upsample", "fuse"]

FUSIONS = ("mean", "max")


@dataclasses.dataclass(frozen=True)
class PostOptions:
  """The post-processing flags of one explanation, as one static value (hashable: a compiled explain is keyed on
  it, so equal flags never recompile). `jaxcam.explain` and the other entry points take them as keyword arguments
  and build one with `checked`.

  normalize: per-map min-max to [0, 1] at layer resolution and again after fusion (pytorch-grad-cam's order).
  upsample: resize to the input's size (False keeps the layer's). relu: clip negative evidence.
  fusion: "mean" (pytorch-grad-cam) or "max" (torchcam) over several layers.
  """

  normalize: bool = True
  upsample: bool = True
  relu: bool = True
  fusion: str = "mean"

  @classmethod
  def checked(cls, normalize=True, upsample=True, relu=True, fusion="mean") -> PostOptions:
    """The flags, validated: ``relu=None`` or ``normalize="no"`` are errors naming the argument, not bools."""
    return cls(
      _checks.check_bool("normalize", normalize),
      _checks.check_bool("upsample", upsample),
      _checks.check_bool("relu", relu),
      _checks.check_choice("fusion", fusion, FUSIONS),
    )


NORMALIZE_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def broadcast_channel_weights(weights: jax.Array, activations: jax.Array) -> jax.Array:
  """Channel weights ``(..., C)`` with one axis of size 1 inserted per spatial axis of `activations`
  ``(..., *spatial, C)`` (their rank difference), so that ``weights * activations`` broadcasts."""
  n = activations.ndim - weights.ndim
  if n < 0:
    raise ValueError(
      f"Expected channel weights (..., C) of lower rank than the activations (..., *spatial, C), got weights "
      f"{tuple(weights.shape)} and activations {tuple(activations.shape)}."
    )
  return weights[(Ellipsis,) + _spatial.spatial_ones(n) + (slice(None),)]


def combine(weights: jax.Array, activations: jax.Array) -> jax.Array:
  """Weighted sum over channels ``sum_k w_k A_k``.

  weights ``(..., C)`` (channel) or ``(..., *spatial, C)`` (spatial); activations ``(..., *spatial, C)`` ->
  ``(..., *spatial)``. Which kind the weights are is read from the ranks: the activations have one more axis per
  spatial axis than channel weights.
  """
  if weights.ndim == activations.ndim:
    return jnp.sum(weights * activations, axis=-1)
  weights = broadcast_channel_weights(weights, activations)
  return jnp.einsum("...c,...c->...", activations, weights, precision=jax.lax.Precision.HIGHEST)


def normalize(maps: jax.Array, *, spatial_dims: int = 2, eps: float = NORMALIZE_EPS) -> jax.Array:
  """Per-map min-max: ``(m - min) / (max - min + eps)``; a constant map gives zeros, never NaN.

  ``(..., *spatial) -> (..., *spatial)``, over the last `spatial_dims` axes (2: images ``(..., h, w)``, 3: volumes
  ``(..., d, h, w)``).

  >>> import jax.numpy as jnp
  >>> normalize(jnp.array([[0.0, 1.0], [2.0, 4.0]])).round(3)
  Array([[0.  , 0.25],
         [0.5 , 1.  ]], dtype=float32)
  """
  lo, hi = _spatial.map_min_max(maps, _check_spatial_dims(spatial_dims, maps))
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


def _check_spatial_dims(spatial_dims: int, maps: jax.Array) -> int:
  if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or not 1 <= spatial_dims <= maps.ndim:
    raise ValueError(
      f"Expected `spatial_dims` to be an int in [1, {maps.ndim}] (the maps' rank), got {spatial_dims!r}."
    )
  return spatial_dims


def fuse(
  maps: jax.Array, *, mode: str = "mean", normalized: bool = True, relu: bool = True, spatial_dims: int = 2
) -> jax.Array:
  """Fuse per-layer maps stacked on axis 0, ``(L, ..., *spatial) -> (..., *spatial)`` (`spatial_dims` as in
  `normalize`).

  mode "mean" is pytorch-grad-cam's (ReLU, mean, then normalize again when `normalized`, which it does for a
  single layer too); "max" is torchcam's element-wise max (torchcam's LayerCAM first rescales each layer's
  normalized map by ``tanh(2 * cam)``; `jaxcam.explain` does that at layer resolution, as torchcam).
  """
  if mode == "mean":
    out = jnp.mean(jax.nn.relu(maps) if relu else maps, axis=0)
    return normalize(out, spatial_dims=spatial_dims) if normalized else out
  if mode == "max":
    return jnp.max(maps, axis=0)
  raise ValueError(f"Expected `fusion` to be 'mean' or 'max', got {mode!r}.")
