"""Faithfulness metrics as pure JAX functions: confidence change (Average Drop / Increase in Confidence) and the
deletion / insertion curves, their many perturbed forwards chunked on the device.

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

__all__ = ["ConfidenceChange", "Curve", "confidence_change", "deletion", "insertion", "blur_baseline"]


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
  classes = getattr(target, "classes", None)
  if classes is None:
    return target
  return dataclasses.replace(target, classes=jnp.asarray(classes)[i][None])


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
