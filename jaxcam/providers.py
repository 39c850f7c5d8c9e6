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

from jaxcam import _copies, derivatives, fullgradient
from jaxcam._errors import UnknownNameError, unknown_name_message
from jaxcam.lrp import rows as lrp_rows
from jaxcam.methods import attention, classic, opticam, rollout

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

  Args:
    name, fn, options, grads, single_layer, expensive, cost, applies: the fields above.

  Examples:
    >>> from jaxcam.providers import get_provider
    >>> p = get_provider("grads")
    >>> p.grads, p.expensive
    (True, False)
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
  """Add `provider` to the registry under its name (`replace=True` to redefine an existing need).

  Args:
    provider: the `Provider`. replace: redefine an existing need of that name.

  Returns:
    `provider`; rows whose `needs` name it now compute it.

  Raises:
    ValueError: another provider already has that name (without `replace`). TypeError: not a `Provider`.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> def channel_means(tap, x, fwd):  # one value per tapped layer
    ...   return tuple(jnp.mean(a, axis=tuple(range(1, a.ndim - 1))) for a in fwd.activations)
    >>> jaxcam.register_provider(jaxcam.Provider("channel_means", channel_means), replace=True).name
    'channel_means'
    >>> _ = jaxcam.providers.PROVIDERS.pop("channel_means")  # leave the registry as it was
  """
  if not isinstance(provider, Provider):
    raise TypeError(f"Expected a jaxcam.providers.Provider, got {type(provider).__name__}.")
  if provider.name in PROVIDERS and not replace and PROVIDERS[provider.name] != provider:
    raise ValueError(f"A provider for need {provider.name!r} is already registered; pass replace=True to redefine it.")
  PROVIDERS[provider.name] = provider
  return provider


def get_provider(need: str, *, method: str = "a method") -> Provider:
  """The provider of `need`; `KeyError` listing the registered needs.

  Args:
    need: a need's name, as a method row lists it in ``needs`` (``"grads"``, ``"hvp"``, ...).
    method: what asks for it, for the error message (e.g. "gradcam").

  Returns:
    The registered `Provider`.

  Raises:
    UnknownNameError: no provider of that name (a `KeyError`, also a `ValueError`); the message lists the
      registered needs.

  Examples:
    >>> from jaxcam.providers import get_provider
    >>> p = get_provider("hvp")
    >>> p.name, p.grads, p.single_layer
    ('hvp', False, True)
    >>> get_provider("no_such_need")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxcam._errors.UnknownNameError: Expected `need of a method` to name a registered provider, got 'no_such_need'. ...
  """
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
  a = fwd.activations[0]
  if fc is None and not classic.declares_fc(tap) and getattr(fwd.logits, "ndim", None) == 2:
    head = lambda act: tap.head(x, act)
    classic.check_gap_dense_head(head, a, layer=str(tap.layer))  # a clear error for any other head
    return (classic.head_kernel(head, a),)  # read from the head: no fc_layer declared (Hugging Face ResNet)
  kernel = classic.resolve_fc_kernel(tap, fc)
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

input_baseline = _copies.input_baseline

for _p in (
  Provider("scores", _copies.scores, cost="none (the target scores of the shared forward pass)"),
  Provider(
    "masked_scores",
    _copies.masked_scores,
    expensive=True,
    cost="1 forward pass per channel (top_n channels with top_n) of a masked copy of the image",
  ),
  Provider(
    "gradient_masked_scores",
    _copies.gradient_masked_scores,
    grads=True,
    expensive=True,
    cost="1 backward pass from the layer, then 1 forward pass per chosen channel (k, default 300) of a masked copy",
  ),
  Provider(
    "noisy_masked_scores",
    _copies.noisy_masked_scores,
    expensive=True,
    cost="num_samples forward passes per channel of a masked copy of the image with noise added to the mask",
  ),
  Provider(
    "integrated_masked_scores",
    _copies.integrated_masked_scores,
    expensive=True,
    cost="num_samples forward passes per channel of a scaled masked copy of the image",
  ),
  Provider(
    "noisy_grad_moments",
    _copies.noisy_grad_moments,
    expensive=True,
    cost="num_samples forward and backward passes of noisy copies of the image",
  ),
  Provider(
    "ablated_scores",
    _copies.ablated_scores,
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
    "attention_rollout",
    rollout.rollout_provider,
    cost="1 forward pass (every tapped block's attention read while it runs)",
    applies=attention.reads_attention,
  ),
  Provider(
    "gradient_rollout",
    rollout.gradient_rollout_provider,
    cost="1 forward and 1 backward pass through the model per target (the attention probabilities' gradients)",
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
    _copies.position_scores,
    single_layer=True,
    expensive=True,
    cost="1 pass through the head (from the layer on) per position h*w",
  ),
  Provider(
    "optimized_weights",
    opticam.optimized_weights,
    expensive=True,
    cost="steps (default 50) forward and backward passes through the whole model of a masked copy (Adam, Opti-CAM)",
  ),
  Provider(
    "lrp",
    lrp_rows.lrp_provider,
    cost="1 forward and 1 modified backward pass through the whole model (relevance rules per primitive)",
  ),
):
  register_provider(_p)

BUILTIN_PROVIDERS: dict[str, Provider] = dict(PROVIDERS)
"""The providers jaxcam defines (before any `register_provider` of yours): `jaxcam.compile_cache` stores a built-in
row's program only while every one of these is still the registered one (a replaced provider is your code)."""
