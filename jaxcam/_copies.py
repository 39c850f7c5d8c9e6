"""The providers that evaluate many copies of the input (masked, noisy, ablated, moved): Score-CAM's family,
Ablation-CAM, Recipro-CAM, Smooth Grad-CAM++'s gradient moments. Registered in `jaxcam.providers` (the one
registration site), which re-exports `input_baseline`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _checks, _spatial, chunking, core
from jaxcam import targets as targets_lib
from jaxcam._errors import check_key
from jaxcam.methods import perturbation


def _score_copy(output: Any, fwd, b) -> jax.Array:
  """``(K,)`` target scores of one perturbed copy of image `b` (a batch of one), its class ids fixed."""
  ids = None if fwd.ids is None else fwd.ids[b][None]
  _, s, _ = targets_lib.with_ids(fwd.target, ids).evaluate(output)
  return s[0]


def _probability_copy(output: Any, fwd, b) -> jax.Array:
  """Like `_score_copy`, but the softmax probability for class-id targets (Recipro-CAM's score)."""
  if fwd.ids is None:
    return _score_copy(output, fwd, b)
  _, s, _ = targets_lib.ClassScore("softmax", fwd.ids[b][None]).evaluate(output)
  return s[0]


def _check_top_n(top_n: Any, channels: int) -> None:
  if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or not 1 <= top_n <= channels):
    raise ValueError(
      f"Expected `top_n` to be None (every channel) or an int in [1, {channels}] (the layer's channels), got {top_n!r}."
    )


def _check_convention(convention: Any) -> None:
  if convention not in perturbation.SCORECAM_CONVENTIONS:
    raise ValueError(f"Expected `convention` to be one of {perturbation.SCORECAM_CONVENTIONS}, got {convention!r}.")


def input_baseline(tap, x, baseline: Any) -> jax.Array:
  """What a masked-out pixel becomes. jaxcam's perturbations act on the `x` you pass (its models take [0, 1] and
  normalize inside), so the default 0 masks to black. ``"mean"``: the model's declared ``input_mean`` (shipped
  models declare the mean they normalize with): masked pixels become 0 *after* normalization, as when the PyTorch
  peers mask a normalized tensor. Or a number, or one value per input channel."""
  if isinstance(baseline, str):
    if baseline != "mean":
      raise ValueError(f"Expected `baseline` to be a number, per-channel values or 'mean', got {baseline!r}.")
    baseline = getattr(getattr(tap, "module", None), "input_mean", None)
    if baseline is None:
      raise ValueError(
        "baseline='mean' needs a model that declares `input_mean` (jaxcam's shipped models do); pass the mean "
        "your model normalizes with, e.g. baseline=(0.485, 0.456, 0.406)."
      )
  b = jnp.asarray(baseline, x.dtype)
  if b.ndim > 1 or (b.ndim == 1 and b.shape[0] != x.shape[-1]):
    raise ValueError(
      f"Expected `baseline` to be a number, 'mean' or one value per input channel ({x.shape[-1]},), got shape "
      f"{tuple(b.shape)}."
    )
  return b.reshape((1,) * _spatial.of_images(x) + (-1,)) if b.ndim == 1 else b


def _top_std_channels(top_n: int | None):
  """Faster-Score-CAM's channel choice: ``(i, a) -> (B, top_n)`` the channels of layer i with the largest spatial
  standard deviation (None: every channel)."""

  def choose(i, a, x):
    del i
    b, c = a.shape[0], a.shape[-1]
    _check_top_n(top_n, c)
    if top_n is None:
      return jnp.broadcast_to(jnp.arange(c), (b, c))
    return jax.lax.top_k(jnp.std(a, axis=_spatial.batched_feature_axes(_spatial.of_images(x))), top_n)[1]

  return choose


def _score_masked_copies(tap, x, fwd, field, *, num_samples, chunk_size, top_n, convention, baseline, choose=None):
  """Per layer ``(B, K, C)``: the target scores of the inputs ``b + field(s, b, k, M_bk) * (x[b] - b)``
  averaged over samples ``s < num_samples``, where M_bk is Score-CAM's mask of image b's channel k
  (`perturbation.score_mask`) and b the baseline (`input_baseline`); -inf for channels left out (``top_n``) or
  constant (they mask nothing: weight 0). One chunked map over the num_samples * B * N copies, `chunk_size`
  copies at a time."""
  chunking.check_chunk_size(chunk_size)
  _check_convention(convention)
  size = _spatial.image_size(x)
  base = input_baseline(tap, x, baseline)
  choose = _top_std_channels(top_n) if choose is None else choose
  out = []
  for i, a in enumerate(fwd.activations):
    b, c = a.shape[0], a.shape[-1]
    chans = choose(i, a, x)  # (B, N): the channels scored for each image
    n = chans.shape[1]

    def one(j, a=a, chans=chans, n=n, b=b):
      s, bi, r = j // (b * n), (j // n) % b, j % n
      k = chans[bi, r]
      mask = perturbation.score_mask(jnp.take(a[bi], k, axis=-1), size, convention=convention)
      m = field(s, bi, k, mask).astype(x.dtype)[..., None]
      return _score_copy(tap.forward((base + m * (x[bi] - base))[None]), fwd, bi)

    copies = jnp.arange(num_samples * b * n)
    scores = chunking.chunked_map(one, copies, chunk_size=chunk_size, progress=fwd.progress)
    scores = scores.reshape(num_samples, b, n, -1)
    scores = jnp.mean(scores, axis=0)  # (B, N, K)
    full = jnp.full((b, c, scores.shape[-1]), -jnp.inf, scores.dtype).at[jnp.arange(b)[:, None], chans].set(scores)
    lo = jnp.min(a, axis=_spatial.batched_feature_axes(_spatial.of_images(x)))
    hi = jnp.max(a, axis=_spatial.batched_feature_axes(_spatial.of_images(x)))
    full = jnp.where((hi == lo)[..., None], -jnp.inf, full)  # a constant channel masks nothing: weight 0
    out.append(jnp.moveaxis(full, -1, 1))  # (B, K, C)
  return tuple(out)


def masked_scores(tap, x, fwd, *, chunk_size=32, top_n=None, convention="pgc", baseline=0.0):
  def field(s, b, k, mask):
    del s, b, k
    return mask

  return _score_masked_copies(
    tap, x, fwd, field, num_samples=1, chunk_size=chunk_size, top_n=top_n, convention=convention, baseline=baseline
  )


def noisy_masked_scores(
  tap,
  x,
  fwd,
  *,
  chunk_size=32,
  top_n=None,
  convention="torchcam",
  num_samples=35,
  std=2.0,
  key=None,
  noise=None,
  baseline=0.0,
):
  _checks.check_positive_int("num_samples", num_samples)
  _checks.check_float("std", std, minimum=0.0)
  size = _spatial.image_size(x)
  if noise is None:
    key = check_key(key, method="SS-CAM")
  else:
    expected = (num_samples, x.shape[0]) + size + (fwd.activations[0].shape[-1],)
    if tap.multi or tuple(getattr(noise, "shape", ())) != expected:
      raise ValueError(
        f"Expected `noise` of shape (num_samples, B, H, W, C) = {expected} for one layer (standard normal draws per "
        f"sample, image, input pixel and layer channel), got {tuple(getattr(noise, 'shape', ()))}."
      )

  def field(s, b, k, mask):
    if noise is None:
      z = perturbation.sscam_noise(key, s, k, size, mask.dtype)
    else:
      z = jnp.take(noise[s, b], k, axis=-1).astype(mask.dtype)
    return mask + jnp.asarray(std, mask.dtype) * z

  return _score_masked_copies(
    tap,
    x,
    fwd,
    field,
    num_samples=num_samples,
    chunk_size=chunk_size,
    top_n=top_n,
    convention=convention,
    baseline=baseline,
  )


def integrated_masked_scores(
  tap, x, fwd, *, chunk_size=32, top_n=None, convention="torchcam", num_samples=10, baseline=0.0
):
  _checks.check_positive_int("num_samples", num_samples)
  coeffs = perturbation.iscam_coefficients(num_samples)

  def field(s, b, k, mask):
    del b, k
    return jnp.asarray(coeffs, mask.dtype)[s] * mask

  return _score_masked_copies(
    tap,
    x,
    fwd,
    field,
    num_samples=num_samples,
    chunk_size=chunk_size,
    top_n=top_n,
    convention=convention,
    baseline=baseline,
  )


def gradient_masked_scores(tap, x, fwd, *, chunk_size=32, k=300, convention="pgc", baseline=0.0):
  """gScoreCAM's inputs: Score-CAM's masked scores for the `k` channels with the largest spatial mean gradient of
  each image (averaged over its targets), every channel when the layer has `k` or fewer."""
  _checks.check_positive_int("k", k)

  def choose(i, a, x):
    g = fwd.grads[i]  # (B, K, *spatial, C)
    mean = jnp.mean(_spatial.feature_mean(g, _spatial.of_rows(g), keepdims=False), axis=1)  # (B, C)
    return jax.lax.top_k(mean, min(k, a.shape[-1]))[1]

  return _score_masked_copies(
    tap,
    x,
    fwd,
    lambda s, b, ch, mask: mask,
    num_samples=1,
    chunk_size=chunk_size,
    top_n=None,
    convention=convention,
    baseline=baseline,
    choose=choose,
  )


def ablated_scores(tap, x, fwd, *, chunk_size=32):
  chunking.check_chunk_size(chunk_size)
  a = fwd.activations[0]
  b, c = a.shape[0], a.shape[-1]

  def one(j):
    bi, k = j // c, j % c
    keep = (jnp.arange(c) != k).reshape((1,) * _spatial.of_images(x) + (c,))
    ablated = jnp.where(keep, a[bi], perturbation.ablation_value(a[bi]))
    return _score_copy(tap.head(x[bi][None], ablated[None]), fwd, bi)

  s = chunking.chunked_map(one, jnp.arange(b * c), chunk_size=chunk_size, progress=fwd.progress).reshape(b, c, -1)
  return (jnp.moveaxis(s, -1, 1),)  # (B, K, C)


def position_scores(tap, x, fwd, *, chunk_size=32):
  chunking.check_chunk_size(chunk_size)
  a = fwd.activations[0]
  n_spatial = _spatial.of_images(x)
  b, n = a.shape[0], _spatial.positions(a, n_spatial)

  def one(j):
    bi, p = j // n, j % n
    return _probability_copy(tap.head(x[bi][None], perturbation.reciprocam_features(a[bi], p)[None]), fwd, bi)

  s = chunking.chunked_map(one, jnp.arange(b * n), chunk_size=chunk_size, progress=fwd.progress)  # (B * h * w, K)
  s = s.reshape((b,) + _spatial.feature_size(a, n_spatial) + (-1,))
  return (jnp.moveaxis(s, -1, 1),)  # (B, K, h, w)


def noisy_grad_moments(tap, x, fwd, *, num_samples=4, std=0.3, key=None, noise=None, chunk_size=4):
  """Per layer ``(mean g, mean g^2, mean g^3)`` over `num_samples` noisy copies ``x + std * z_s`` (Smooth
  Grad-CAM++'s inputs), the class ids fixed by the clean pass. ``z_s = normal(fold_in(key, s), (H, W, C))`` is
  shared by the images of the batch (an image gets the same draws alone or in any batch), or the user's `noise`
  ``(num_samples, B, H, W, C)``."""
  _checks.check_positive_int("num_samples", num_samples)
  _checks.check_float("std", std, minimum=0.0)
  chunking.check_chunk_size(chunk_size)
  if noise is None:
    key = check_key(key, method="Smooth Grad-CAM++")
  elif tuple(getattr(noise, "shape", ())) != (num_samples,) + tuple(x.shape):
    raise ValueError(
      f"Expected `noise` of shape (num_samples, B, H, W, C) = {(num_samples,) + tuple(x.shape)} (standard normal "
      f"draws per sample and image), got {tuple(getattr(noise, 'shape', ()))}."
    )
  fixed = targets_lib.with_ids(fwd.target, fwd.ids)

  def one(s):
    if noise is None:
      z = jax.random.normal(jax.random.fold_in(key, s), x.shape[1:], x.dtype)[None]
    else:
      z = jnp.take(noise, s, axis=0).astype(x.dtype)
    grads = core.forward_and_grads(tap, x + jnp.asarray(std, x.dtype) * z, fixed).grads or ()
    return tuple((gi, gi * gi, gi * gi * gi) for gi in grads)

  total = chunking.chunked_sum(one, jnp.arange(num_samples), chunk_size=chunk_size, progress=fwd.progress)
  return jax.tree.map(lambda v: v / num_samples, total)


def scores(tap, x, fwd):
  """The target scores of the shared forward pass, once per tapped layer."""
  del x
  return (fwd.scores,) * len(tap.layers)
