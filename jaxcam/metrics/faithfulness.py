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
  """What `confidence_change` returns: the target score of ``maps * x`` (``o``) against that of ``x`` (``y``).

  A registered pytree (it passes through `jax.jit`); per-image fields are ``(B,)``, the means scalars.

  Args:
    change: ``o - y`` per image (pytorch-grad-cam's ``CamMultImageConfidenceChange``; its ``DropInConfidence`` is
      ``max(y - o, 0)``); NaN for an image whose map holds a NaN.
    drop: ``relu(y - o) / (y + 1e-7)`` per image (a fraction; NaN for an invalid image).
    increased: ``o > y`` per image (False for an invalid image).
    avg_drop: the mean of `drop` over the valid images, in **percent** (the Grad-CAM++ paper's Average Drop;
      torchcam's ``ClassificationMetric`` reports it as a fraction).
    increase: the share of valid images with ``o > y``, in **percent** (the paper's Increase in Confidence).
    valid: ``(B,)`` bool, the images whose map has no NaN.
    nan_count: how many images are not valid.
    score: ``y``, the target score of ``x``.
    masked_score: ``o``, the target score of ``maps * x``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))  # logits: the channel means
    >>> x, maps = jnp.ones((2, 4, 4, 3)), jnp.stack([jnp.ones((4, 4)), jnp.zeros((4, 4))])
    >>> cc = metrics.confidence_change(model, x, maps, target=0)
    >>> cc.masked_score.tolist(), cc.change.tolist(), cc.increased.tolist()
    ([1.0, 0.0], [0.0, -1.0], [False, False])
    >>> round(float(cc.avg_drop), 3), int(cc.nan_count)
    (50.0, 0)
  """

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

  Chattopadhay et al., "Grad-CAM++", arXiv 1710.11063, Sec. 5.1: Average Drop and Increase in Confidence.

  Args:
    model_fn: a function ``x -> logits`` or a jaxcam tap.
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` in [0, 1], at the input's size (an image whose map holds a NaN is left out of the means).
    target: class ids / None (logits) or a `jaxcam.targets` score (``softmax(ids)`` for probabilities, as the
      Grad-CAM++ paper); the class is fixed on ``x``.

  Returns:
    `ConfidenceChange`: per-image ``change``, ``drop``, ``increased``, the scores, and ``avg_drop`` / ``increase``
    in percent over the valid images.

  Raises:
    ValueError: `x` is not a batch of images ``(B, H, W, C)``, `maps` is not ``(B, H, W)`` at the input's size, or
      the target gives several classes per image.
    TypeError: integer `x` or non-float `maps`, or a `model_fn` that is neither a function nor a tap.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))  # logits: the channel means
    >>> x = jnp.ones((1, 4, 4, 3))
    >>> maps = jnp.zeros((1, 4, 4)).at[:, :2].set(1.0)  # keeps the top half of the image
    >>> cc = metrics.confidence_change(model, x, maps, target=0)
    >>> cc.score.tolist(), cc.masked_score.tolist(), cc.change.tolist()
    ([1.0], [0.5], [-0.5])
    >>> round(float(cc.avg_drop), 3), float(cc.increase)  # percent
    (50.0, 0.0)
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
  """What `deletion` and `insertion` return: the target score along the perturbation and the area under it.

  A registered pytree (it passes through `jax.jit`).

  Args:
    curve: ``(B, P)`` target scores at each perturbed fraction (NaN rows for invalid images).
    fractions: ``(P,)`` the fractions of pixels removed (deletion) or restored (insertion), from 0 to 1.
    auc: ``(B,)`` the trapezoid area under `curve` over `fractions` (NaN for invalid images).
    mean_auc: the mean of `auc` over the valid images.
    valid: ``(B,)`` bool, the images whose map has no NaN (as in `ConfidenceChange`).
    nan_count: how many images are not valid.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.ones((1, 4, 4, 3))
    >>> c = metrics.deletion(model, x, jnp.zeros((1, 4, 4)).at[:, 0].set(1.0), steps=4)
    >>> c.fractions.tolist(), c.curve.tolist()
    ([0.0, 0.25, 0.5, 0.75, 1.0], [[1.0, 0.75, 0.5, 0.25, 0.0]])
    >>> c.auc.tolist(), c.mean_auc.tolist(), c.valid.tolist()
    ([0.5], 0.5, [True])
  """

  curve: jax.Array
  fractions: jax.Array
  auc: jax.Array
  mean_auc: jax.Array
  valid: jax.Array
  nan_count: jax.Array


def step_counts(n: int, steps: int) -> list[int]:
  """torchcam's perturbation counts: every ``ceil(n / steps)`` positions from 0, then all ``n``.

  The pixel counts at which `deletion` and `insertion` evaluate the model (``n = H * W``).

  Args:
    n: the number of positions (pixels), a non-negative int.
    steps: the number of blocks, a positive int.

  Returns:
    A list of ints from 0 to `n`: ``steps + 1`` counts when `steps` divides `n`, fewer otherwise.

  Examples:
    >>> from jaxcam import metrics
    >>> metrics.step_counts(16, 4)
    [0, 4, 8, 12, 16]
    >>> metrics.step_counts(16, 3)  # blocks of ceil(16 / 3) = 6
    [0, 6, 12, 16]
  """
  size = -(-n // steps)
  return [*range(0, n, size), n]


def blur_baseline(x: jax.Array, *, size: int = 11, sigma: float = 5.0) -> jax.Array:
  """RISE's insertion baseline: each image blurred by a separable Gaussian (reflected borders).

  What ``baseline="blur"`` in `deletion` and `insertion` uses.

  Args:
    x: images ``(B, H, W, C)``, float.
    size: the Gaussian window's width in pixels.
    sigma: the Gaussian's standard deviation in pixels.

  Returns:
    The blurred images, ``(B, H, W, C)`` like `x`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> x = jnp.zeros((1, 9, 9, 3)).at[:, 4, 4].set(1.0)  # one bright pixel
    >>> b = metrics.blur_baseline(x, size=5, sigma=1.0)
    >>> b.shape, bool(b[0, 4, 4, 0] < 1), bool(b[0, 4, 5, 0] > 0)  # spread onto its neighbours
    ((1, 9, 9, 3), True, True)
    >>> round(float(b[0, ..., 0].sum()), 4)  # away from the borders the mass is kept
    1.0
  """
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
  position), the mask shared over channels, points at 0, s, 2s, ... and all pixels (`step_counts`), AUC by the
  trapezoid over the actual fractions. ``(steps + 1) B`` forwards, `chunk_size` at a time in one compiled program.
  Petsiuk et al., "RISE", arXiv 1806.07421.

  Args:
    model_fn: a function ``x -> logits`` or a jaxcam tap.
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` at the input's size (an image whose map holds a NaN is left out of the means).
    target: as for `confidence_change`: class ids / None (logits) or a `jaxcam.targets` score; the class is
      fixed on ``x``.
    steps: the number of blocks the ``H * W`` pixels are removed in.
    baseline: what a removed pixel becomes: None / "zeros" (default), "blur" (`blur_baseline`), an array
      broadcastable to `x`, or a function ``x -> baseline``.
    chunk_size: perturbed copies evaluated per forward pass.

  Returns:
    `Curve`: ``curve`` ``(B, steps + 1)`` (fewer points when `steps` does not divide ``H * W``), ``fractions``,
    ``auc`` ``(B,)`` and ``mean_auc``.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, `steps` or `chunk_size` not a positive int, an unknown
      `baseline` name, or a `baseline` array that does not broadcast to `x`.
    TypeError: integer `x` or non-float `maps`, a non-int `steps`, or a `model_fn` that is neither a function nor a tap.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # the evidence: the bright top half
    >>> maps = x[..., 0]  # a map pointing at it
    >>> d = metrics.deletion(model, x, maps, steps=2)
    >>> d.fractions.tolist(), d.curve.tolist(), d.auc.tolist()
    ([0.0, 0.5, 1.0], [[0.5, 0.0, 0.0]], [0.125])
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
  AUC: a more faithful map). Everything else as `deletion`; RISE uses ``baseline="blur"``.

  Args:
    model_fn: a function ``x -> logits`` or a jaxcam tap.
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` at the input's size (an image whose map holds a NaN is left out of the means).
    target: as for `confidence_change`; the class is fixed on ``x``.
    steps: the number of blocks the ``H * W`` pixels are restored in.
    baseline: the image the pixels are restored onto: None / "zeros" (default), "blur" (`blur_baseline`), an
      array broadcastable to `x`, or a function ``x -> baseline``.
    chunk_size: perturbed copies evaluated per forward pass.

  Returns:
    `Curve`, as for `deletion` (the fractions are those restored).

  Raises:
    ValueError: as for `deletion`.
    TypeError: as for `deletion`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # the evidence: the bright top half
    >>> maps = x[..., 0]  # a map pointing at it
    >>> i = metrics.insertion(model, x, maps, steps=2)
    >>> i.curve.tolist(), i.auc.tolist()
    ([[0.0, 0.5, 0.5]], [0.375])
  """
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
  """What `road` returns. MoRF: lower is more faithful; LeRF and combined: higher.

  A registered pytree (it passes through `jax.jit`; `order` is static).

  Args:
    change: ``(B, P)`` target score after removal and imputation minus before, per percentile (for
      ``order="combined"``: ``(LeRF - MoRF) / 2``); NaN rows for invalid images.
    percentiles: ``(P,)`` the percentiles evaluated.
    score: ``(B,)`` the mean of `change` over the percentiles (pytorch-grad-cam's ``ROAD*Average`` /
      ``ROADCombined``).
    mean_score: the mean of `score` over the valid images.
    valid: ``(B,)`` bool, the images whose map has no NaN (as in `ConfidenceChange`).
    nan_count: how many images are not valid.
    order: "morf", "lerf" or "combined".

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # the evidence: the bright top half
    >>> r = metrics.road(model, x, x[..., 0], percentiles=(50,), noise=0.0)  # MoRF: remove the top half
    >>> r.order, r.percentiles.tolist(), r.change.shape, r.score.tolist(), int(r.nan_count)
    ('morf', [50.0], (1, 1), [-0.5], 0)
  """

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

  Args:
    model_fn: a function ``x -> logits`` or a jaxcam tap.
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` at the input's size (an image whose map holds a NaN is left out of the means).
    target: as for `confidence_change`; the class is fixed on ``x``.
    percentiles: the percentiles p in [0, 100] (a number or a sequence); default 10, 20, ..., 90.
    order: "morf" (most relevant first), "lerf" (least relevant first) or "combined".
    noise: the standard deviation of the imputation's Gaussian noise, in the units of `x`; 0 turns it off.
    key: the noise's PRNG key (None: ``jax.random.key(0)``).
    chunk_size: imputed images evaluated per forward pass.
    tol: the imputation's relative residual at which CG stops (> 0).
    max_iter: the most CG iterations per imputation.

  Returns:
    `Road`: ``change`` (B, P), ``score`` (B,) its mean over the percentiles, ``mean_score`` over valid images.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, an unknown `order`, a percentile outside [0, 100], a negative
      `noise`, a non-positive `tol`, `max_iter` or `chunk_size`.
    TypeError: integer `x` or non-float `maps`, a non-number `noise` / `tol`, or a non-int `max_iter`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # the evidence: the bright top half
    >>> maps = x[..., 0]  # a map pointing at it
    >>> r = metrics.road(model, x, maps, percentiles=(50,), order="combined", noise=0.0)
    >>> r.change.shape, round(float(r.score[0]), 3)  # (LeRF: +0.5 - MoRF: -0.5) / 2
    ((1, 1), 0.5)
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
  `order` "morf" or "lerf"; the noise of image i is drawn from ``fold_in(key, i)``.

  Args:
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` at the input's size.
    percentile: one percentile p in [0, 100]: the pixels whose map value is below the map's p-th percentile are
      kept (on ``1 - map`` for LeRF), the others imputed.
    order: "morf" or "lerf".
    noise: the standard deviation of the imputation's Gaussian noise, in the units of `x`; 0 turns it off.
    key: the noise's PRNG key (None: ``jax.random.key(0)``).
    tol: the imputation's relative residual at which CG stops (> 0).
    max_iter: the most CG iterations per image.

  Returns:
    ``(imputed, kept)``: the images with the removed pixels imputed ``(B, H, W, C)``, and the boolean mask of the
    kept pixels ``(B, H, W)``.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, a percentile outside [0, 100] or more than one, order
      "combined" or unknown, a negative `noise`, a non-positive `tol` or `max_iter`.
    TypeError: integer `x` or non-float `maps`, a non-number `noise` / `tol`, or a non-int `max_iter`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # a bright top half
    >>> imputed, kept = metrics.remove_and_impute(x, x[..., 0], 50, noise=0.0)  # MoRF: remove the top half
    >>> imputed.shape, kept[0, :, 0].tolist()
    ((1, 4, 4, 3), [False, False, True, True])
    >>> float(imputed.max())  # filled from the dark bottom half
    0.0
  """
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
