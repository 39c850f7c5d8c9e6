"""Localization metrics as pure JAX functions: the pointing game (with tolerance, and energy-based) and pixel-level
AUROC and IoU of maps against binary masks.

Boxes are ``(x0, y0, x1, y1)`` in pixels, half-open (``x0 <= col < x1``, ``y0 <= row < y1``); masks are boolean
``(B, H, W)``. `boxes_to_masks` turns boxes (several per image allowed) into masks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["Pointing", "Localization", "boxes_to_masks", "pointing_game", "localization", "auroc"]


def boxes_to_masks(boxes: Any, size: tuple[int, ...]) -> jax.Array:
  """Boolean masks ``(B, H, W)`` from boxes ``(B, 4)`` or ``(B, M, 4)`` (``(x0, y0, x1, y1)``, half-open; a row of
  a (B, M, 4) array with ``x1 <= x0`` is empty: pad with such rows).

  Args:
    boxes: ``(B, 4)`` one box per image, or ``(B, M, 4)`` up to M boxes per image (their union), in pixels:
      ``x0 <= col < x1``, ``y0 <= row < y1``.
    size: the masks' ``(H, W)``.

  Returns:
    ``(B, H, W)`` bool, True inside any of the image's boxes.

  Raises:
    ValueError: `boxes` not of shape ``(B, 4)`` or ``(B, M, 4)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> metrics.boxes_to_masks(jnp.array([[1, 0, 3, 2]]), (3, 4)).astype(int).tolist()
    [[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]]
    >>> two = jnp.array([[[0, 0, 1, 1], [3, 2, 4, 3]], [[0, 0, 1, 1], [0, 0, 0, 0]]])  # the 2nd image: 1 box + padding
    >>> metrics.boxes_to_masks(two, (3, 4)).sum(axis=(1, 2)).tolist()
    [2, 1]
  """
  b = jnp.asarray(boxes)
  if b.ndim == 2:
    b = b[:, None]
  if b.ndim != 3 or b.shape[-1] != 4:
    raise ValueError(f"Expected boxes of shape (B, 4) or (B, M, 4) as (x0, y0, x1, y1), got {tuple(jnp.shape(boxes))}.")
  h, w = int(size[0]), int(size[1])
  rows = jnp.arange(h)[None, None, :, None]
  cols = jnp.arange(w)[None, None, None, :]
  x0, y0, x1, y1 = (b[..., i][..., None, None] for i in range(4))
  inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
  return jnp.any(inside, axis=1)


def _regions(maps: jax.Array, boxes_or_masks: Any) -> jax.Array:
  r = jnp.asarray(boxes_or_masks)
  if r.dtype == jnp.bool_:
    if r.shape != maps.shape:
      raise ValueError(f"Expected masks of shape {tuple(maps.shape)} like the maps, got {tuple(r.shape)}.")
    return r
  return boxes_to_masks(r, maps.shape[1:])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["hits", "energy", "peaks", "valid"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Pointing:
  """What `pointing_game` returns. A registered pytree (it passes through `jax.jit`).

  Args:
    hits: ``(B,)`` bool, whether each map's maximum lies within `tolerance` pixels of the region.
    energy: ``(B,)`` the map's mass inside the region over its total (0 for an all-zero map).
    peaks: ``(B, 2)`` (row, col) of each maximum.
    valid: ``(B,)`` bool, images whose map has no NaN (the others: no hit, NaN energy).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> maps = jnp.zeros((1, 4, 4)).at[0, 1, 2].set(1.0).at[0, 3, 3].set(1.0)  # two peaks
    >>> p = metrics.pointing_game(maps, jnp.array([[2, 0, 4, 2]]))  # the box holds rows 0-1, columns 2-3
    >>> p.hits.tolist(), p.energy.tolist(), p.peaks.tolist(), p.valid.tolist()
    ([True], [0.5], [[1, 2]], [True])
  """

  hits: jax.Array
  energy: jax.Array
  peaks: jax.Array
  valid: jax.Array


@functools.partial(jax.jit, static_argnames=("tolerance",))
def _pointing(maps, region, *, tolerance):
  b, h, w = maps.shape
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  safe = jnp.where(valid[:, None, None], maps, 0.0)
  flat = jnp.argmax(safe.reshape(b, -1), axis=1)  # the first maximum in row-major order
  r, c = flat // w, flat % w
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  d2 = (rows - r[:, None, None]) ** 2 + (cols - c[:, None, None]) ** 2
  nearest = jnp.min(jnp.where(region, d2, jnp.iinfo(jnp.int32).max), axis=(1, 2))
  hits = valid & jnp.any(region, axis=(1, 2)) & (nearest <= tolerance * tolerance)
  total = jnp.sum(safe, axis=(1, 2))
  inside = jnp.sum(jnp.where(region, safe, 0.0), axis=(1, 2))
  energy = jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), 0.0)
  return Pointing(hits, jnp.where(valid, energy, jnp.nan), jnp.stack([r, c], axis=1), valid)


def pointing_game(maps: Any, boxes_or_masks: Any, *, tolerance: int = 15) -> Pointing:
  """The pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop", arXiv 1608.00507): a hit
  when the map's maximum (the first `argmax` in row-major order) lies within `tolerance` pixels (Euclidean) of the
  box or mask; and the energy-based pointing game (Wang et al., "Score-CAM", arXiv 1910.01279): the share of the
  map's mass inside the region. `maps` ``(B, H, W)``; boxes ``(B, 4)`` / ``(B, M, 4)`` or boolean masks.

  Args:
    maps: ``(B, H, W)`` (an image whose map holds a NaN scores no hit and NaN energy).
    boxes_or_masks: boxes ``(B, 4)`` / ``(B, M, 4)`` as ``(x0, y0, x1, y1)`` in pixels, half-open (see
      `boxes_to_masks`), or boolean masks ``(B, H, W)``.
    tolerance: the largest Euclidean distance in pixels from the maximum to the region that still counts as a hit
      (the paper's 15; 0: the maximum must lie inside).

  Returns:
    `Pointing`: ``hits``, ``energy``, ``peaks`` and ``valid``, per image.

  Raises:
    ValueError: `maps` not ``(B, H, W)``, a negative or non-int `tolerance`, masks of another shape than the maps,
      or boxes not ``(B, 4)`` / ``(B, M, 4)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> maps = jnp.zeros((1, 4, 4)).at[0, 1, 2].set(1.0)  # the maximum at row 1, column 2
    >>> box = jnp.array([[0, 3, 2, 4]])  # row 3, columns 0-1: 2.2 pixels away
    >>> metrics.pointing_game(maps, box, tolerance=0).hits.tolist()
    [False]
    >>> metrics.pointing_game(maps, box, tolerance=3).hits.tolist()
    [True]
  """
  maps = jnp.asarray(maps)
  if maps.ndim != 3:
    raise ValueError(f"Expected maps of shape (B, H, W), got {tuple(maps.shape)}.")
  if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
    raise ValueError(f"Expected `tolerance` to be a non-negative int (pixels), got {tolerance!r}.")
  return _pointing(maps, _regions(maps, boxes_or_masks), tolerance=tolerance)


def average_ranks(v: jax.Array) -> jax.Array:
  """1-based average ranks along the last axis (ties share their mean rank), for AUROC and Spearman."""
  srt = jnp.sort(v, axis=-1)
  flat_s, flat_v = srt.reshape(-1, srt.shape[-1]), v.reshape(-1, v.shape[-1])
  lo = jax.vmap(lambda a, b: jnp.searchsorted(a, b, side="left"))(flat_s, flat_v)
  hi = jax.vmap(lambda a, b: jnp.searchsorted(a, b, side="right"))(flat_s, flat_v)
  return ((lo + hi + 1) / 2.0).reshape(v.shape)


def auroc(scores: jax.Array, labels: jax.Array) -> jax.Array:
  """Area under the ROC curve of `scores` ``(..., N)`` for boolean `labels` ``(..., N)`` (Mann-Whitney U with
  average ranks for ties); NaN where a row has no positive or no negative.

  Args:
    scores: ``(..., N)`` float scores (e.g. a map's pixels), an array.
    labels: ``(..., N)`` bool, True for the positives (e.g. the mask's pixels).

  Returns:
    ``(...)`` the AUROC of each row, in [0, 1] (0.5: no better than chance).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> scores = jnp.array([0.1, 0.4, 0.35, 0.8])
    >>> float(metrics.auroc(scores, jnp.array([False, False, True, True])))
    0.75
    >>> bool(jnp.isnan(metrics.auroc(scores, jnp.zeros(4, bool))))  # no positive
    True
  """
  s = scores.reshape(scores.shape[:-1] + (-1,))
  y = labels.reshape(s.shape)
  ranks = average_ranks(s)
  pos = jnp.sum(y, axis=-1).astype(ranks.dtype)
  neg = y.shape[-1] - pos
  u = jnp.sum(jnp.where(y, ranks, 0.0), axis=-1) - pos * (pos + 1) / 2
  ok = (pos > 0) & (neg > 0)
  return jnp.where(ok, u / jnp.where(ok, pos * neg, 1.0), jnp.nan)


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["auroc", "iou", "thresholds", "best_iou", "valid"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class Localization:
  """What `localization` returns. A registered pytree (it passes through `jax.jit`).

  Args:
    auroc: ``(B,)`` pixel-level AUROC of each map against its mask (NaN where the mask is all or nothing, or the
      map has a NaN).
    iou: ``(B, T)`` IoU of ``map >= t`` with the mask at each threshold (1 where both are empty; NaN for a map with
      a NaN).
    thresholds: ``(T,)`` the thresholds t.
    best_iou: ``(B,)`` the best IoU over the thresholds.
    valid: ``(B,)`` bool, both classes present in the mask and no NaN in the map.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> maps = jnp.array([[[0.9, 0.2], [0.6, 0.1]], [[0.5, 0.5], [0.5, 0.5]]])
    >>> masks = jnp.array([[[True, False], [True, False]], [[False, False], [False, False]]])
    >>> loc = metrics.localization(maps, masks)
    >>> loc.thresholds.shape, loc.iou.shape, loc.valid.tolist()  # the 2nd mask is empty: no AUROC
    ((19,), (2, 19), [True, False])
  """

  auroc: jax.Array
  iou: jax.Array
  thresholds: jax.Array
  best_iou: jax.Array
  valid: jax.Array


@jax.jit
def _localization(maps, masks, thresholds):
  b = maps.shape[0]
  finite = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  flat, lab = maps.reshape(b, -1), masks.reshape(b, -1)
  area = auroc(jnp.where(finite[:, None], flat, 0.0), lab)
  pred = flat[:, None, :] >= thresholds[None, :, None]
  inter = jnp.sum(pred & lab[:, None, :], axis=-1)
  union = jnp.sum(pred | lab[:, None, :], axis=-1)
  iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  iou = jnp.where(finite[:, None], iou, jnp.nan)
  valid = finite & jnp.isfinite(area)
  return Localization(jnp.where(finite, area, jnp.nan), iou, thresholds, jnp.max(iou, axis=1), valid)


def localization(maps: Any, masks: Any, *, thresholds: Any = None) -> Localization:
  """Pixel-level AUROC and IoU at thresholds of maps ``(B, H, W)`` against boolean masks ``(B, H, W)`` (anomaly
  maps against defect masks, saliency against segmentations). `thresholds`: default 0.05, 0.10, ..., 0.95.

  Args:
    maps: ``(B, H, W)`` float, normally in [0, 1].
    masks: ``(B, H, W)`` bool, True on the region (boxes: `boxes_to_masks`).
    thresholds: the thresholds t at which ``map >= t`` is compared with the mask (a number or a sequence); None:
      0.05, 0.10, ..., 0.95.

  Returns:
    `Localization`: ``auroc`` ``(B,)``, ``iou`` ``(B, T)``, ``thresholds`` ``(T,)``, ``best_iou`` ``(B,)`` and
    ``valid``.

  Raises:
    ValueError: `masks` not boolean, not of the maps' shape, or `maps` not ``(B, H, W)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> maps = jnp.array([[[0.9, 0.2], [0.6, 0.1]]])
    >>> masks = jnp.array([[[True, False], [True, False]]])
    >>> loc = metrics.localization(maps, masks, thresholds=[0.5, 0.8])
    >>> loc.auroc.tolist(), loc.iou.tolist(), loc.best_iou.tolist()  # at 0.8 only one of the two mask pixels
    ([1.0], [[1.0, 0.5]], [1.0])
  """
  maps = jnp.asarray(maps)
  masks = jnp.asarray(masks)
  if masks.dtype != jnp.bool_ or masks.shape != maps.shape or maps.ndim != 3:
    raise ValueError(
      f"Expected boolean masks of the maps' shape (B, H, W), got masks {tuple(masks.shape)} of {masks.dtype} for "
      f"maps {tuple(maps.shape)}. Boxes: jaxcam.metrics.boxes_to_masks(boxes, (H, W))."
    )
  t = jnp.arange(1, 20, dtype=maps.dtype) * 0.05 if thresholds is None else jnp.asarray(thresholds, maps.dtype)
  return _localization(maps, masks, jnp.atleast_1d(t))
