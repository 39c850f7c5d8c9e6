"""Providers: one registered function per *need* of a method row.

A method row (`jaxcam.methods.table.MethodSpec`) says what it consumes, e.g. ``needs=("grads",)`` or
``("grads", "hvp")``; each need is computed by exactly one provider::

    provider.fn(tap, x, fwd, /, **options) -> tuple   # one value per tapped layer

`fwd` is the shared `jaxcam.core.Forward` (output, activations A, class ids, scores, and dS/dA when any provider
of the call sets ``grads=True``). A provider declares its options with defaults (they become options of every
method that needs it), whether it reads one layer only, and its cost, so that `jaxcam.explain_many` can share it
between methods and refuse to run expensive ones unasked. Register your own with `register_provider`; a method
row of your own may then need it, with no edit to jaxcam (see tests/test_providers.py).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _checks, _spatial, chunking, core, derivatives, fullgradient
from jaxcam import targets as targets_lib
from jaxcam._errors import UnknownNameError, check_key, unknown_name_message
from jaxcam.methods import attention, classic, perturbation

__all__ = ["Provider", "PROVIDERS", "register_provider", "get_provider"]


@dataclasses.dataclass(frozen=True)
class Provider:
  """How one need is computed.

  fn: ``fn(tap, x, fwd, /, **options) -> tuple`` with one value (an array or a pytree) per layer.
  options: its keyword options with defaults; unless given, read from fn's signature (its keyword-only parameters
  with defaults), so a default is declared once. grads: whether it reads ``fwd.grads`` (then the shared pass includes
  the backward pass from the layer). single_layer: it refuses multi-layer taps. expensive: its cost grows with the
  layer's size (channels, positions) or a sample count rather than being a fixed number of passes. cost: what it
  costs per image, in words. applies: ``applies(tap) -> bool``, whether it can read this tap at all (``explain_many``
  with ``methods=None`` leaves its rows out otherwise); None: every tap.
  """

  name: str
  fn: Callable[..., tuple]
  options: tuple[tuple[str, Any], ...] = ()
  grads: bool = False
  single_layer: bool = False
  expensive: bool = False
  cost: str = ""
  applies: Callable[[Any], bool] | None = None

  def __post_init__(self):
    if not self.options:
      object.__setattr__(self, "options", signature_options(self.fn))


def signature_options(fn: Callable[..., Any]) -> tuple[tuple[str, Any], ...]:
  """``((name, default), ...)`` of `fn`'s keyword-only parameters with defaults: the options a provider takes."""
  params = inspect.signature(fn).parameters.values()
  return tuple((p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY and p.default is not p.empty)


PROVIDERS: dict[str, Provider] = {}


def register_provider(provider: Provider, *, replace: bool = False) -> Provider:
  """Add `provider` to the registry under its name (`replace=True` to redefine an existing need)."""
  if not isinstance(provider, Provider):
    raise TypeError(f"Expected a jaxcam.providers.Provider, got {type(provider).__name__}.")
  if provider.name in PROVIDERS and not replace and PROVIDERS[provider.name] != provider:
    raise ValueError(f"A provider for need {provider.name!r} is already registered; pass replace=True to redefine it.")
  PROVIDERS[provider.name] = provider
  return provider


def get_provider(need: str, *, method: str = "a method") -> Provider:
  """The provider of `need`; `KeyError` listing the registered needs."""
  if need not in PROVIDERS:
    raise UnknownNameError(
      unknown_name_message(f"need of {method}", need, sorted(PROVIDERS), "a registered provider")
      + " Register one with jaxcam.providers.register_provider."
    )
  return PROVIDERS[need]


def _layers(tap) -> int:
  return len(tap.layers)


# ------------------------------------------------------------------------------------------------ built-ins


def _grads(tap, x, fwd):
  del tap, x
  return fwd.grads


def _class_ids(tap, x, fwd):
  del x
  if fwd.ids is None:
    raise ValueError(
      "This method needs class ids as target (ints, None, or a jaxcam.targets score of class ids); got a custom "
      "score callable."
    )
  return (fwd.ids,) * _layers(tap)


def _fc_kernel(tap, x, fwd, *, fc=None):
  kernel = classic.resolve_fc_kernel(tap, fc)
  a = fwd.activations[0]
  if getattr(fwd.logits, "ndim", None) != 2:
    from jaxcam.layouts import describe

    raise ValueError(
      f"CAM weights the layer's channels by the Dense kernel of the logits (B, classes), but the model returns "
      f"{describe(fwd.logits)}. Pick the logits with the tap's output= (e.g. output='logits')."
    )
  c, n = a.shape[-1], fwd.logits.shape[-1]
  if kernel.shape != (c, n):
    raise ValueError(
      f"Expected the CAM kernel `fc` of shape (C, classes) = ({c}, {n}) for layer {tap.layer!r}, got "
      f"{tuple(kernel.shape)}."
    )
  classic.check_gap_dense_head(lambda act: tap.head(x, act), a, layer=str(tap.layer))
  return (kernel,)


def _diagonals(tap, x, fwd, *, strategy="auto", chunk_size=derivatives.DEFAULT_CHUNK_SIZE):
  return (derivatives.diagonals_k(tap, x, fwd.target, strategy=strategy, chunk_size=chunk_size, fwd=fwd),)


def _hvp(tap, x, fwd):
  a = fwd.activations[0]
  return (derivatives.hvp(tap, x, fwd.target, a, a, ids=fwd.ids),)


for _p in (
  Provider("grads", _grads, grads=True, cost="1 backward pass from the layer (shared)"),
  Provider("class_ids", _class_ids, cost="none (from the shared forward pass)"),
  Provider(
    "fc_kernel",
    _fc_kernel,
    single_layer=True,
    cost="none (the Dense kernel; the head is checked on its jaxpr)",
    applies=classic.declares_fc,
  ),
  Provider(
    "diagonals",
    _diagonals,
    grads=True,
    single_layer=True,
    expensive=True,
    cost="one third-order forward pass through the head per channel (structured) or per element of A (generic)",
  ),
  Provider("hvp", _hvp, single_layer=True, cost="1 forward-over-reverse pass through the head"),
):
  register_provider(_p)


# ------------------------------------------------------------------------- perturbation (gradient-free) needs


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


def _masked_scores(tap, x, fwd, *, chunk_size=32, top_n=None, convention="pgc", baseline=0.0):
  def field(s, b, k, mask):
    del s, b, k
    return mask

  return _score_masked_copies(
    tap, x, fwd, field, num_samples=1, chunk_size=chunk_size, top_n=top_n, convention=convention, baseline=baseline
  )


def _noisy_masked_scores(
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


def _integrated_masked_scores(
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


def _gradient_masked_scores(tap, x, fwd, *, chunk_size=32, k=300, convention="pgc", baseline=0.0):
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


def _ablated_scores(tap, x, fwd, *, chunk_size=32):
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


def _position_scores(tap, x, fwd, *, chunk_size=32):
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


def _noisy_grad_moments(tap, x, fwd, *, num_samples=4, std=0.3, key=None, noise=None, chunk_size=4):
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


def _scores(tap, x, fwd):
  del x
  return (fwd.scores,) * _layers(tap)


for _p in (
  Provider("scores", _scores, cost="none (the target scores of the shared forward pass)"),
  Provider(
    "masked_scores",
    _masked_scores,
    expensive=True,
    cost="1 forward pass per channel (top_n channels with top_n) of a masked copy of the image",
  ),
  Provider(
    "gradient_masked_scores",
    _gradient_masked_scores,
    grads=True,
    expensive=True,
    cost="1 backward pass from the layer, then 1 forward pass per chosen channel (k, default 300) of a masked copy",
  ),
  Provider(
    "noisy_masked_scores",
    _noisy_masked_scores,
    expensive=True,
    cost="num_samples forward passes per channel of a masked copy of the image with noise added to the mask",
  ),
  Provider(
    "integrated_masked_scores",
    _integrated_masked_scores,
    expensive=True,
    cost="num_samples forward passes per channel of a scaled masked copy of the image",
  ),
  Provider(
    "noisy_grad_moments",
    _noisy_grad_moments,
    expensive=True,
    cost="num_samples forward and backward passes of noisy copies of the image",
  ),
  Provider(
    "ablated_scores",
    _ablated_scores,
    single_layer=True,
    expensive=True,
    cost="1 pass through the head (from the layer on) per channel",
  ),
  Provider(
    "attention_relevance",
    attention.attention_relevance,
    cost="1 forward pass and 1 backward pass per tapped block (each block's own score, from its attention on)",
    applies=attention.reads_attention,
  ),
  Provider(
    "fullgrad",
    fullgradient.fullgrad_provider,
    cost="1 forward and 1 backward pass through the whole model (every bias layer's output perturbed)",
    applies=fullgradient.can_read_biases,
  ),
  Provider(
    "position_scores",
    _position_scores,
    single_layer=True,
    expensive=True,
    cost="1 pass through the head (from the layer on) per position h*w",
  ),
):
  register_provider(_p)
