"""Faithfulness metrics as pure JAX functions: confidence change (Average Drop / Increase in Confidence), the
deletion / insertion curves and ROAD, their many perturbed forwards chunked on the device.

``model_fn`` is any JAX function ``x -> logits`` or a jaxcam tap (its plain forward pass). ``target`` means what it
means for the methods: class ids (None: each image's top class) measure the **logit**, as pytorch-grad-cam's
``ClassifierOutputTarget``; ``jaxcam.targets.softmax(ids)`` measures the probability, as the Grad-CAM++ paper and
torchcam's examples. Maps are ``(B, H, W)`` at the input's size, in [0, 1]. Perturbations act on the `x` you pass:
jaxcam's models take [0, 1] and normalize inside, so a removed pixel (baseline 0) is black, while pytorch-grad-cam
and torchcam perturb the normalized tensor (a removed pixel is the mean colour): numbers are comparable with
published tables only when the perturbation is made comparable (e.g. ``baseline=`` the mean colour).

Images whose map holds a NaN are reported (``nan_count``, ``valid``) and left out of every mean, never propagated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import _checks, chunking
from jaxcam import targets as targets_lib
from jaxcam._filters import gaussian_kernel, separable_filter
from jaxcam._model import split_model
from jaxcam.metrics.imputation import impute

__all__ = [
  "ConfidenceChange",
  "Curve",
  "Road",
  "blur_baseline",
  "confidence_change",
  "deletion",
  "insertion",
  "remove_and_impute",
  "road",
]


def _check_maps(x: Any, maps: Any) -> jax.Array:
  from jaxcam.api import check_images

  check_images(x)
  maps = jnp.asarray(maps)
  if maps.shape != x.shape[:3]:
    raise ValueError(
      f"Expected `maps` of shape (B, H, W) = {tuple(x.shape[:3])} (one map per image at the input's size), got "
      f"{tuple(maps.shape)}. Explain with upsample=True, or resize the maps first."
    )
  if not jnp.issubdtype(maps.dtype, jnp.floating):
    raise TypeError(f"Expected float maps, got dtype {maps.dtype}.")
  return maps


def _scores(fn, arg, x, target) -> tuple[jax.Array, jax.Array | None, Any]:
  out = fn(x) if arg is None else fn(x, arg)
  ids, s, multi = target.evaluate(out)
  if multi or s.shape[1] != 1:
    raise ValueError("Expected one target class per image for a metric, got (B, K) targets; evaluate each k.")
  return s[:, 0], ids, targets_lib.with_ids(target, ids)


def _for_image(target: Any, i: jax.Array) -> Any:
  """The target of image `i` alone (its fixed class id); a score callable as it is."""
  return _for_images(target, jnp.asarray(i)[None])


def _for_images(target: Any, idx: jax.Array) -> Any:
  """The targets of images ``idx`` (a batch of possibly repeated image indices); a score callable as it is."""
  classes = getattr(target, "classes", None)
  if classes is None:
    return target
  return dataclasses.replace(target, classes=jnp.asarray(classes)[idx])


def _masked_mean(v: jax.Array, valid: jax.Array) -> jax.Array:
  n = jnp.sum(valid)
  return jnp.where(n > 0, jnp.sum(jnp.where(valid, v, 0.0)) / jnp.maximum(n, 1), jnp.nan)


# ------------------------------------------------------------------------------------------- confidence change


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["change", "drop", "increased", "avg_drop", "increase", "valid", "nan_count", "score", "masked_score"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class ConfidenceChange:
  """change: ``o - y`` per image (pytorch-grad-cam's ``CamMultImageConfidenceChange``; its ``DropInConfidence`` is
  ``max(y - o, 0)``). drop: ``relu(y - o) / (y + 1e-7)`` per image. increased: ``o > y`` per image. avg_drop,
  increase: their means over the valid images, in **percent** (the Grad-CAM++ paper's Average Drop and Increase in
  Confidence; torchcam's ``ClassificationMetric`` reports the same two as fractions). valid: the images whose map
  has no NaN; nan_count: how many do. score ``y``, masked_score ``o``: the target score of ``x`` and of
  ``maps * x``."""

  change: jax.Array
  drop: jax.Array
  increased: jax.Array
  avg_drop: jax.Array
  increase: jax.Array
  valid: jax.Array
  nan_count: jax.Array
  score: jax.Array
  masked_score: jax.Array


@functools.partial(jax.jit, static_argnums=(0,))
def _confidence_change(fn, arg, x, maps, target):
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  y, _, fixed = _scores(fn, arg, x, target)
  safe = jnp.where(valid[:, None, None], maps, 0.0).astype(x.dtype)
  o, _, _ = _scores(fn, arg, x * safe[..., None], fixed)
  drop = jax.nn.relu(y - o) / (y + 1e-7)
  increased = o > y
  return ConfidenceChange(
    change=jnp.where(valid, o - y, jnp.nan),
    drop=jnp.where(valid, drop, jnp.nan),
    increased=increased & valid,
    avg_drop=100.0 * _masked_mean(drop, valid),
    increase=100.0 * _masked_mean(increased.astype(drop.dtype), valid),
    valid=valid,
    nan_count=jnp.sum(~valid),
    score=y,
    masked_score=o,
  )


def confidence_change(model_fn: Any, x: jax.Array, maps: Any, /, target: Any = None) -> ConfidenceChange:
  """The target score of ``maps * x`` against that of ``x`` (the map multiplies every channel).

  Args:
    model_fn: a function ``x -> logits`` or a jaxcam tap.
    x: images ``(B, H, W, C)``; maps: ``(B, H, W)`` in [0, 1].
    target: class ids / None (logits) or a `jaxcam.targets` score (``softmax(ids)`` for probabilities, as the
      Grad-CAM++ paper); the class is fixed on ``x``.

  Returns:
    `ConfidenceChange`. Chattopadhay et al., "Grad-CAM++", arXiv 1710.11063, Sec. 5.1.
  """
  maps = _check_maps(x, maps)
  fn, arg = split_model(model_fn)
  return _confidence_change(fn, arg, x, maps, targets_lib.as_target(target))


# ------------------------------------------------------------------------------------- deletion and insertion


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["curve", "fractions", "auc", "mean_auc", "valid", "nan_count"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Curve:
  """curve: ``(B, P)`` target scores at each perturbed fraction; fractions: ``(P,)`` the fractions of pixels
  removed (deletion) or restored (insertion); auc: ``(B,)`` trapezoid area over the fractions; mean_auc: its mean
  over the valid images; valid, nan_count: as in `ConfidenceChange` (invalid images' curves are NaN)."""

  curve: jax.Array
  fractions: jax.Array
  auc: jax.Array
  mean_auc: jax.Array
  valid: jax.Array
  nan_count: jax.Array


def step_counts(n: int, steps: int) -> list[int]:
  """torchcam's perturbation counts: every ``ceil(n / steps)`` positions from 0, then all ``n``."""
  size = -(-n // steps)
  return [*range(0, n, size), n]


def blur_baseline(x: jax.Array, *, size: int = 11, sigma: float = 5.0) -> jax.Array:
  """RISE's insertion baseline: each image blurred by a separable Gaussian (reflected borders)."""
  return separable_filter(x, gaussian_kernel(size, sigma), axes=(1, 2), mode="reflect")


def _baseline(x: jax.Array, baseline: Any) -> jax.Array:
  if baseline is None:
    return jnp.zeros_like(x)
  if isinstance(baseline, str):
    _checks.check_choice("baseline", baseline, ("blur", "zeros"))
    return blur_baseline(x) if baseline == "blur" else jnp.zeros_like(x)
  b = baseline(x) if callable(baseline) else jnp.asarray(baseline, x.dtype)
  try:
    return jnp.broadcast_to(jnp.asarray(b, x.dtype), x.shape)
  except ValueError:
    raise ValueError(
      f"Expected `baseline` broadcastable to `x`'s shape {tuple(x.shape)}, got {tuple(jnp.shape(b))}."
    ) from None


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("insert", "steps", "chunk_size"))
def _curve(fn, arg, x, maps, target, base, *, insert, steps, chunk_size):
  b, h, w, _ = x.shape
  n = h * w
  counts = step_counts(n, steps)
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  _, _, fixed = _scores(fn, arg, x, target)
  flat = jnp.where(valid[:, None, None], maps, 0.0).reshape(b, n)
  order = jnp.argsort(-flat, axis=1, stable=True)  # highest first, ties by position (torchcam's stable ranking)
  ranks = jnp.argsort(order, axis=1).reshape(b, h, w)
  count_arr = jnp.asarray(counts, jnp.int32)

  def one(j):  # image j // P, point j % P
    bi, p = j // len(counts), j % len(counts)
    top = ranks[bi] < count_arr[p]  # the `count` highest-ranked pixels
    keep = top if insert else ~top
    xi = jnp.where(keep[..., None], x[bi], base[bi])
    return _scores(fn, arg, xi[None], _for_image(fixed, bi))[0][0]

  curve = chunking.chunked_map(one, jnp.arange(b * len(counts)), chunk_size=chunk_size).reshape(b, len(counts))
  fractions = count_arr.astype(curve.dtype) / n
  auc = jnp.sum(0.5 * (curve[:, 1:] + curve[:, :-1]) * jnp.diff(fractions)[None, :], axis=1)  # trapezoid
  return Curve(
    curve=jnp.where(valid[:, None], curve, jnp.nan),
    fractions=fractions,
    auc=jnp.where(valid, auc, jnp.nan),
    mean_auc=_masked_mean(auc, valid),
    valid=valid,
    nan_count=jnp.sum(~valid),
  )


def _run_curve(model_fn, x, maps, target, steps, baseline, chunk_size, insert) -> Curve:
  maps = _check_maps(x, maps)
  steps = _checks.check_positive_int("steps", steps)
  chunking.check_chunk_size(chunk_size)
  fn, arg = split_model(model_fn)
  base = _baseline(x, baseline)
  return _curve(
    fn, arg, x, maps, targets_lib.as_target(target), base, insert=insert, steps=steps, chunk_size=int(chunk_size)
  )


def deletion(
  model_fn: Any,
  x: jax.Array,
  maps: Any,
  /,
  target: Any = None,
  *,
  steps: int = 20,
  baseline: Any = None,
  chunk_size: int = 32,
) -> Curve:
  """The deletion curve: the target score as the highest-ranked pixels are replaced by the baseline, a
  ``ceil(HW / steps)`` block at a time (lower AUC: a more faithful map).

  torchcam's ``DeletionInsertionMetric`` semantics: pixels ranked by map value (stable: ties by row-major
  position), the mask shared over channels, points at 0, s, 2s, ... and all pixels, AUC by the trapezoid over the
  actual fractions. `baseline`: None / "zeros" (default), "blur" (`blur_baseline`), an array broadcastable to `x`,
  or a function ``x -> baseline``. ``(steps + 1) B`` forwards, `chunk_size` at a time in one compiled program.
  Petsiuk et al., "RISE", arXiv 1806.07421.
  """
  return _run_curve(model_fn, x, maps, target, steps, baseline, chunk_size, insert=False)


def insertion(
  model_fn: Any,
  x: jax.Array,
  maps: Any,
  /,
  target: Any = None,
  *,
  steps: int = 20,
  baseline: Any = None,
  chunk_size: int = 32,
) -> Curve:
  """The insertion curve: the target score as the highest-ranked pixels are restored onto the baseline (higher
  AUC: a more faithful map). Everything else as `deletion`; RISE uses ``baseline="blur"``."""
  return _run_curve(model_fn, x, maps, target, steps, baseline, chunk_size, insert=True)


# ----------------------------------------------------------------------------------------------------------- ROAD

ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_ORDERS = ("morf", "lerf", "combined")


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["change", "percentiles", "score", "mean_score", "valid", "nan_count"],
  meta_fields=["order"],
)
@dataclasses.dataclass(frozen=True)
class Road:
  """change: ``(B, P)`` target score after removal and imputation minus before, per percentile (for
  ``order="combined"``: ``(LeRF - MoRF) / 2``); percentiles: ``(P,)``; score: ``(B,)`` the mean over the
  percentiles (pytorch-grad-cam's ``ROAD*Average`` / ``ROADCombined``); mean_score: its mean over the valid images;
  valid, nan_count: as in `ConfidenceChange`; order: "morf", "lerf" or "combined". MoRF: lower is more faithful;
  LeRF and combined: higher."""

  change: jax.Array
  percentiles: jax.Array
  score: jax.Array
  mean_score: jax.Array
  valid: jax.Array
  nan_count: jax.Array
  order: str = "morf"


def _kept(m: jax.Array, percentile: jax.Array, lerf: jax.Array) -> jax.Array:
  """pytorch-grad-cam's ``RemoveMostRelevantFirst``: keep the pixels strictly below the map's percentile
  (numpy's linear interpolation), on ``1 - map`` for LeRF."""
  m = jnp.where(lerf, 1 - m, m)
  return m < jnp.percentile(m, percentile)


def _check_road(x, maps, percentiles, order, noise, chunk_size, tol, max_iter):
  maps = _check_maps(x, maps)
  _checks.check_choice("order", order, ROAD_ORDERS)
  pct = tuple(float(p) for p in np.atleast_1d(np.asarray(percentiles, dtype=float)))
  if not pct or not all(0 <= p <= 100 for p in pct):
    raise ValueError(f"Expected `percentiles` in [0, 100] (e.g. {ROAD_PERCENTILES}), got {percentiles!r}.")
  noise = _checks.check_float("noise", noise, minimum=0.0)
  tol = _checks.check_float("tol", tol, minimum=0.0, strict=True)
  max_iter = _checks.check_positive_int("max_iter", max_iter)
  chunking.check_chunk_size(chunk_size)
  return maps, pct, noise, tol, max_iter


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("chunk_size",))
def _road(fn, arg, x, maps, target, key, pct, lerf, noise, tol, max_iter, *, chunk_size):
  # Only the shapes and chunk_size are static: every percentile, order, noise and tolerance shares one program.
  b = x.shape[0]
  n_p, n_o = pct.shape[0], lerf.shape[0]
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  y, _, fixed = _scores(fn, arg, x, target)
  safe = jnp.where(valid[:, None, None], maps, 0.0)

  def lane(j):  # lane j: image j // (O P), order (j // P) % O, percentile j % P
    bi, oi, pi = j // (n_o * n_p), (j // n_p) % n_o, j % n_p
    keep = _kept(safe[bi], pct[pi], lerf[oi])
    return impute(x[bi], keep, noise=noise, key=jax.random.fold_in(key, j), tol=tol, max_iter=max_iter)[0]

  def chunk(lanes):  # the solves one at a time (each in cache), the forward batched
    imputed = jax.lax.map(lane, lanes)
    return _scores(fn, arg, imputed, _for_images(fixed, lanes // (n_o * n_p)))[0]

  after = chunking.chunked_map(chunk, jnp.arange(b * n_o * n_p), chunk_size=chunk_size, vectorized=True)
  change = after.reshape(b, n_o, n_p) - y[:, None, None]
  change = change[:, 0] if n_o == 1 else (change[:, 1] - change[:, 0]) / 2  # combined: (LeRF - MoRF) / 2
  score = jnp.mean(change, axis=1)
  return change, score, valid


def road(
  model_fn: Any,
  x: jax.Array,
  maps: Any,
  /,
  target: Any = None,
  *,
  percentiles: Any = ROAD_PERCENTILES,
  order: str = "morf",
  noise: float = 0.01,
  key: jax.Array | None = None,
  chunk_size: int = 16,
  tol: float = 1e-5,
  max_iter: int = 200,
) -> Road:
  """ROAD: the change of the target score when the most (MoRF) or least (LeRF) relevant pixels are removed and
  filled by noisy linear imputation, at each percentile.

  pytorch-grad-cam's conventions: at percentile p the pixels whose map value is below the map's p-th percentile
  are kept and the rest imputed (so MoRF at 80 removes the top 20 %); LeRF ranks by ``1 - map``; combined is
  ``(LeRF - MoRF) / 2`` per percentile. Imputation (`jaxcam.metrics.imputation`): each removed pixel the weighted
  mean of its 8 neighbours, solved on the device by multigrid-preconditioned CG to a relative residual `tol`,
  plus Gaussian `noise` (in the units of `x`; 0 turns it off) drawn from `key` (None: ``jax.random.key(0)``; each
  image, order and percentile its own ``fold_in``), so results are deterministic given the key and independent
  of `chunk_size`. ``B x P`` forwards (twice that for combined), `chunk_size` at a time.

  Unlike pytorch-grad-cam, which perturbs the normalized tensor, the imputation acts on the `x` you pass (jaxcam's
  models normalize inside); the linear imputation commutes with a per-channel affine normalization, so only the
  noise's scale differs (pgc's 0.01 in normalized units is ``0.01 * std`` here). Rong et al., "A Consistent and
  Efficient Evaluation Strategy for Attribution Methods", arXiv 2202.00449.

  Returns:
    `Road`: ``change`` (B, P), ``score`` (B,) its mean over the percentiles, ``mean_score`` over valid images.
  """
  maps, pct, noise, tol, max_iter = _check_road(x, maps, percentiles, order, noise, chunk_size, tol, max_iter)
  fn, arg = split_model(model_fn)
  key = jax.random.key(0) if key is None else key
  orders = ("morf", "lerf") if order == "combined" else (order,)
  change, score, valid = _road(
    fn,
    arg,
    x,
    maps,
    targets_lib.as_target(target),
    key,
    jnp.asarray(pct, maps.dtype),
    jnp.asarray([o == "lerf" for o in orders]),
    jnp.asarray(noise, x.dtype),
    jnp.asarray(tol, x.dtype),
    jnp.asarray(max_iter),
    chunk_size=int(chunk_size),
  )
  return Road(
    change=jnp.where(valid[:, None], change, jnp.nan),
    percentiles=jnp.asarray(pct),
    score=jnp.where(valid, score, jnp.nan),
    mean_score=_masked_mean(score, valid),
    valid=valid,
    nan_count=jnp.sum(~valid),
    order=order,
  )


def remove_and_impute(
  x: jax.Array,
  maps: Any,
  percentile: float,
  *,
  order: str = "morf",
  noise: float = 0.01,
  key: jax.Array | None = None,
  tol: float = 1e-5,
  max_iter: int = 200,
) -> tuple[jax.Array, jax.Array]:
  """The images `road` scores at one percentile (to look at them): ``(imputed (B, H, W, C), kept (B, H, W))``.
  `order` "morf" or "lerf"; the noise of image i is drawn from ``fold_in(key, i)``."""
  maps, pct, noise, tol, max_iter = _check_road(x, maps, percentile, order, noise, 1, tol, max_iter)
  if order == "combined" or len(pct) != 1:
    raise ValueError(f"Expected one percentile and order 'morf' or 'lerf', got {percentile!r} and {order!r}.")
  key = jax.random.key(0) if key is None else key
  return _remove_and_impute(
    x, maps, key, jnp.asarray(pct[0], maps.dtype), jnp.asarray(order == "lerf"), jnp.asarray(noise, x.dtype),
    jnp.asarray(tol, x.dtype), jnp.asarray(max_iter),
  )  # fmt: skip


@jax.jit
def _remove_and_impute(x, maps, key, percentile, lerf, noise, tol, max_iter):
  keep = jax.vmap(lambda m: _kept(m, percentile, lerf))(maps)

  def one(i):
    return impute(x[i], keep[i], noise=noise, key=jax.random.fold_in(key, i), tol=tol, max_iter=max_iter)[0]

  return jax.lax.map(one, jnp.arange(x.shape[0])), keep
