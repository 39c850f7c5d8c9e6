"""Faithfulness metrics as pure JAX functions: confidence change (Average Drop / Increase in Confidence) and the
deletion / insertion curves, their many perturbed forwards chunked on the device (ROAD: `jaxcam.metrics.removal`).

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

from jaxcam import _checks, chunking
from jaxcam import targets as targets_lib
from jaxcam._filters import gaussian_kernel, separable_filter
from jaxcam._model import split_model

__all__ = [
  "ConfidenceChange",
  "Curve",
  "blur_baseline",
  "confidence_change",
  "deletion",
  "insertion",
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
