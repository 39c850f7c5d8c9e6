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

  Args:
    normalize: per-map min-max to [0, 1] at layer resolution and again after fusion (pytorch-grad-cam's order).
    upsample: resize to the input's size (False keeps the layer's).
    relu: clip negative evidence.
    fusion: "mean" (pytorch-grad-cam) or "max" (torchcam) over several layers.

  Examples:
    >>> from jaxcam.postprocess import PostOptions
    >>> PostOptions(upsample=False)
    PostOptions(normalize=True, upsample=False, relu=True, fusion='mean')
    >>> PostOptions.checked(fusion="max") == PostOptions(fusion="max")  # equal flags: the same compiled explain
    True
  """

  normalize: bool = True
  upsample: bool = True
  relu: bool = True
  fusion: str = "mean"

  @classmethod
  def checked(cls, normalize=True, upsample=True, relu=True, fusion="mean") -> PostOptions:
    """The flags, validated: ``relu=None`` or ``normalize="no"`` are errors naming the argument, not bools.

    Args:
      normalize: as the field; True or False.
      upsample: as the field; True or False.
      relu: as the field; True or False.
      fusion: "mean" or "max".

    Returns:
      A `PostOptions`.

    Raises:
      TypeError: `normalize`, `upsample` or `relu` is not a bool (numpy bools are accepted).
      ValueError: `fusion` is not "mean" or "max".

    Examples:
      >>> from jaxcam.postprocess import PostOptions
      >>> PostOptions.checked(relu=False).relu
      False
      >>> PostOptions.checked(relu=None)
      Traceback (most recent call last):
        ...
      TypeError: Expected `relu` to be True or False, got None (NoneType).
    """
    return cls(
      _checks.check_bool("normalize", normalize),
      _checks.check_bool("upsample", upsample),
      _checks.check_bool("relu", relu),
      _checks.check_choice("fusion", fusion, FUSIONS),
    )


NORMALIZE_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image


def broadcast_channel_weights(weights: jax.Array, activations: jax.Array) -> jax.Array:
  """Channel weights ``(..., C)`` with one axis of size 1 inserted per spatial axis of `activations`
  ``(..., *spatial, C)`` (their rank difference), so that ``weights * activations`` broadcasts.

  Args:
    weights: channel weights ``(..., C)``.
    activations: activations ``(..., *spatial, C)``, of higher or equal rank.

  Returns:
    `weights` reshaped to ``(..., 1, ..., 1, C)``, one 1 per extra axis of `activations`.

  Raises:
    ValueError: `weights` has a higher rank than `activations`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import postprocess
    >>> postprocess.broadcast_channel_weights(jnp.ones((2, 3)), jnp.ones((2, 4, 4, 3))).shape
    (2, 1, 1, 3)
  """
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

  Args:
    weights: channel weights ``(..., C)`` or spatial weights ``(..., *spatial, C)`` (the activations' rank).
    activations: the layer's activations ``(..., *spatial, C)``.

  Returns:
    The maps ``(..., *spatial)`` (no ReLU, not normalized).

  Raises:
    ValueError: `weights` has a higher rank than `activations`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import postprocess
    >>> activations = jnp.ones((1, 2, 2, 2))  # (B, h, w, C)
    >>> postprocess.combine(jnp.array([[1.0, 2.0]]), activations).tolist()  # channel weights (B, C)
    [[[3.0, 3.0], [3.0, 3.0]]]
    >>> postprocess.combine(jnp.ones((1, 2, 2, 2)), activations).tolist()  # spatial weights (B, h, w, C)
    [[[2.0, 2.0], [2.0, 2.0]]]
  """
  if weights.ndim == activations.ndim:
    return jnp.sum(weights * activations, axis=-1)
  weights = broadcast_channel_weights(weights, activations)
  return jnp.einsum("...c,...c->...", activations, weights, precision=jax.lax.Precision.HIGHEST)


def normalize(maps: jax.Array, *, spatial_dims: int = 2, eps: float = NORMALIZE_EPS) -> jax.Array:
  """Per-map min-max: ``(m - min) / (max - min + eps)``; a constant map gives zeros, never NaN.

  ``(..., *spatial) -> (..., *spatial)``, over the last `spatial_dims` axes (2: images ``(..., h, w)``, 3: volumes
  ``(..., d, h, w)``).

  Args:
    maps: maps ``(..., *spatial)``.
    spatial_dims: how many trailing axes form one map (1 to the maps' rank).
    eps: added to the range ``max - min`` (pytorch-grad-cam's 1e-7).

  Returns:
    The maps in [0, 1], same shape (clipped; a map's maximum becomes 1 up to `eps`).

  Raises:
    ValueError: `spatial_dims` is not an int in [1, maps.ndim].

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.postprocess import normalize
    >>> normalize(jnp.array([[0.0, 1.0], [2.0, 4.0]])).round(3)
    Array([[0.  , 0.25],
           [0.5 , 1.  ]], dtype=float32)
    >>> normalize(jnp.ones((2, 2))).tolist()  # a constant map: zeros
    [[0.0, 0.0], [0.0, 0.0]]
  """
  lo, hi = _spatial.map_min_max(maps, _check_spatial_dims(spatial_dims, maps))
  # clip: approximate division on GPUs can land a hair above 1 (seen on an H200: 1.0000001)
  return jnp.clip((maps - lo) / (hi - lo + eps), 0.0, 1.0)


def upsample(maps: jax.Array, size: tuple[int, ...]) -> jax.Array:
  """Bilinear (trilinear for volumes) resize of ``(..., *spatial)`` maps to ``size`` (``(H, W)``, ``(D, H, W)``).

  ``jax.image.resize`` with ``antialias=False`` uses half-pixel centers, which matches torch's
  ``interpolate(mode="bilinear", align_corners=False)`` and ``cv2.resize`` (pytorch-grad-cam) when upsampling.

  Args:
    maps: maps ``(..., *spatial)``.
    size: the new spatial size, ``(H, W)`` or ``(D, H, W)``: it replaces the last ``len(size)`` axes.

  Returns:
    The maps ``(..., *size)``; `maps` itself when they already have that size.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import postprocess
    >>> postprocess.upsample(jnp.zeros((2, 7, 7)), (28, 28)).shape
    (2, 28, 28)
    >>> postprocess.upsample(jnp.array([[0.0, 1.0]]), (1, 4)).tolist()  # half-pixel centers
    [[0.0, 0.25, 0.75, 1.0]]
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

  Args:
    maps: per-layer maps ``(L, ..., *spatial)``, all at the same (output) resolution.
    mode: "mean" or "max".
    normalized: "mean" only: min-max normalize the mean.
    relu: "mean" only: clip negative values before the mean.
    spatial_dims: how many trailing axes form one map, as in `normalize`.

  Returns:
    The fused maps ``(..., *spatial)``.

  Raises:
    ValueError: `mode` is not "mean" or "max", or (when normalizing) a bad `spatial_dims`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import postprocess
    >>> maps = jnp.array([[[0.0, 4.0]], [[0.0, 0.0]]])  # 2 layers of one (1, 2) map
    >>> postprocess.fuse(maps).tolist(), postprocess.fuse(maps, normalized=False).tolist()
    ([[0.0, 1.0]], [[0.0, 2.0]])
    >>> postprocess.fuse(maps, mode="max").tolist()
    [[0.0, 4.0]]
  """
  if mode == "mean":
    out = jnp.mean(jax.nn.relu(maps) if relu else maps, axis=0)
    return normalize(out, spatial_dims=spatial_dims) if normalized else out
  if mode == "max":
    return jnp.max(maps, axis=0)
  raise ValueError(f"Expected `fusion` to be 'mean' or 'max', got {mode!r}.")
