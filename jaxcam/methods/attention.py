"""Attention-based maps for vision transformers: LeGrad.

LeGrad (Bousselham et al. 2024, "LeGrad: An Explainability Method for Vision Transformers via Feature Formation
Sensitivity", arXiv 2404.03214), as torchcam 0.5.0's ``LeGrad``: for each tapped transformer block l, the block's
own class score ``s_l = score(tokens_l)`` (torchcam's default for torchvision ViTs: ``heads(ln(tokens.mean(1)))``)
is differentiated w.r.t. that block's post-softmax attention probabilities ``P_l`` ``(B, heads, queries, keys)``;
the positive part is averaged over heads and queries, the prefix keys (CLS, registers) are dropped, the rest laid
out on the patch grid, and the maps are averaged over the blocks before one min-max normalization. Attention
values are not multiplied in.

The probabilities are read without model edits: while a tapped block runs, its ``nn.MultiHeadDotProductAttention``
(linen) computes its weights with ``flax.linen.dot_product_attention_weights`` through a stand-in for its
``attention_fn`` that adds a zero perturbation to the probabilities (the derivative is taken w.r.t. it), then
multiplies the values exactly as ``flax.linen.dot_product_attention`` does.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import targets as targets_lib

__all__ = ["legrad_map", "attention_relevance", "reads_attention", "read_blocks", "token_blocks", "keys_on_grid"]


def legrad_map(activations: jax.Array, attention_relevance: jax.Array, /) -> jax.Array:
  """LeGrad's map of one block: its attention relevance on the patch grid, ``(B, K, h, w)`` (computed by the
  ``attention_relevance`` provider: ``relu(dS_l / dP_l)`` averaged over heads and queries, prefix keys dropped)."""
  del activations
  return attention_relevance


def _token_blocks(tap: Any) -> tuple[Any, Any] | None:
  """``(selector, tokens layout)`` when `tap` is a linen tap on block outputs laid out as tokens (directly or
  through ``pick(selector, then=tokens())``), else None."""
  from jaxcam import layouts as layouts_lib

  if not getattr(tap, "can_intercept", False) or tap.where != "output":
    return None
  layout, selector = layouts_lib.as_layout(tap.layout), None
  if isinstance(layout, layouts_lib.Pick):
    selector, layout = layout.selector, layouts_lib.as_layout(layout.then)
  return (selector, layout) if isinstance(layout, layouts_lib.Tokens) else None


def token_blocks(tap: Any, method: str) -> tuple[Any, Any]:
  """``(selector, tokens layout)`` of a tap whose attention `method` can read; a clear error otherwise."""
  if not getattr(tap, "can_intercept", False) or tap.where != "output":
    raise ValueError(
      f"{method} reads the attention probabilities of flax.linen attention modules: pass a linen_tap on the "
      f"transformer blocks' outputs (where='output'), got {type(tap).__name__}."
    )
  blocks = _token_blocks(tap)
  if blocks is None:
    raise ValueError(
      f"{method} lays the attention keys out on the patch grid: tap the blocks with "
      f"layout=jaxcam.layouts.tokens(prefix=...) (or pick(i, then=tokens(...))), got {tap.layout!r}."
    )
  return blocks


def keys_on_grid(relevance: jax.Array, layout: Any) -> jax.Array:
  """Relevance per key token ``(B, K, keys)`` laid out like the blocks' tokens: ``(B, K, h, w)`` (prefix keys, such
  as CLS and registers, dropped by the tokens layout)."""
  b, k = relevance.shape[:2]
  grid = layout.to_grid(relevance.reshape(b * k, -1)[..., None])
  return grid[..., 0].reshape((b, k) + grid.shape[1:3])


def reads_attention(tap: Any) -> bool:
  """Whether LeGrad can read `tap`: a linen tap on block outputs laid out as tokens."""
  return _token_blocks(tap) is not None


def _score_method(tap, score: Any):
  if score is None:
    score = getattr(tap.module, "legrad_score", None)
    if score is None:
      raise ValueError(
        f"LeGrad needs each block's own class score: pass `score=` a method ``(module, tokens (B, N, D)) -> "
        f"logits (B, classes)`` (torchcam's default for torchvision ViTs is ``heads(ln(tokens.mean(1)))``, e.g. "
        f"``lambda m, t: m.head(m.norm(t.mean(1)))`` on a module with setup()-defined submodules), or define a "
        f"method `legrad_score` on {type(tap.module).__name__}."
      )
    return type(tap.module).legrad_score
  if not callable(score):
    raise TypeError(f"Expected `score` to be a method (module, tokens) -> logits, got {type(score).__name__}.")
  return score


def attention_relevance(tap, x, fwd, *, score: Any = None) -> tuple:
  """Per tapped block, ``relu(dS_l / dP_l)`` averaged over heads and queries on the patch grid, ``(B, K, h, w)``.

  `score`: ``(module, tokens) -> logits`` run with ``module.apply(variables, tokens, method=score)``; default: the
  module's ``legrad_score`` method. Linen taps only (the blocks' attention must be ``nn.MultiHeadDotProductAttention``
  or ``nn.SelfAttention`` with the default ``attention_fn``).
  """
  selector, layout = token_blocks(tap, "LeGrad")
  method = _score_method(tap, score)
  run = functools.partial(read_blocks, tap, x, selector)
  shapes = jax.eval_shape(lambda: run(None)[0])
  zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)
  tgt = targets_lib.with_ids(fwd.target, fwd.ids)

  def block_scores(deltas):
    _, toks, _ = run(deltas)
    logits = [tap.module.apply(tap.variables, t, method=method) for t in toks]
    return tuple(tgt.evaluate(lg)[1] for lg in logits)  # each (B, K)

  scores, pullback = jax.vjp(block_scores, zeros)
  return tuple(_block_relevance(pullback, scores, i, layout) for i in range(len(tap.layers)))


def _block_relevance(pullback, scores: tuple, i: int, layout: Any) -> jax.Array:
  """Block i's ``relu(dS_i / dP_i)`` averaged over heads and queries, laid out like its tokens: ``(B, K, h, w)``."""
  k = scores[0].shape[1]

  def grad_i(onehot):
    cot = tuple(
      jnp.broadcast_to(onehot, s.shape).astype(s.dtype) if j == i else jnp.zeros_like(s) for j, s in enumerate(scores)
    )
    return pullback(cot)[0][i]  # (B, heads, Q, keys)

  g = jax.vmap(grad_i, out_axes=1)(jnp.eye(k))  # (B, K, heads, Q, keys)
  return keys_on_grid(jnp.mean(jax.nn.relu(g), axis=(2, 3)), layout)  # (B, K, keys) on the grid


def _block_of(tap, path: tuple[str, ...]) -> int | None:
  """The tapped block that holds the module at `path` (an ancestor is tapped), or None."""
  for n in range(len(path) - 1, 0, -1):
    i = tap.layer_index(path[:n])
    if i is not None:
      return i
  return None


def read_blocks(tap, x, selector: Any, deltas: tuple | None) -> tuple[tuple, tuple, Any]:
  """One run of the model through ``tap.intercept``: each tapped block's attention probabilities ``(B, heads,
  queries, keys)`` (plus ``deltas[i]``, to differentiate through them) and output tokens, in the tap's layer
  order, and the model's output."""
  import flax.linen as nn

  from jaxcam import layouts as layouts_lib
  from jaxcam.taps import format_path

  probs: dict[int, Any] = {}
  tokens: dict[int, Any] = {}

  def interceptor(next_fun, args, kwargs, mdl, path):
    tapped = tap.layer_index(path)
    if tapped is not None:
      out = next_fun(*args, **kwargs)
      tokens[tapped] = out if selector is None else layouts_lib.select(out, selector)
      return out
    i = _block_of(tap, path) if isinstance(mdl, nn.MultiHeadDotProductAttention) else None
    if i is None:
      return next_fun(*args, **kwargs)
    if i in probs:
      raise ValueError(
        f"Block {format_path(tap.layers[i])!r} holds more than one attention module; LeGrad needs one per tapped block."
      )
    if mdl.attention_fn is not nn.dot_product_attention:
      raise ValueError(
        f"The attention module {'/'.join(path)!r} uses a custom attention_fn; LeGrad reads probabilities through "
        "flax.linen's default dot_product_attention."
      )
    delta = None if deltas is None else deltas[i]
    object.__setattr__(mdl, "attention_fn", _recording_attention(delta, i, probs))  # this call's bound clone
    try:
      return next_fun(*args, **kwargs)
    finally:
      object.__setattr__(mdl, "attention_fn", nn.dot_product_attention)

  out = tap.intercept(x, interceptor)
  missing = [format_path(tap.layers[i]) for i in range(len(tap.layers)) if i not in probs]
  if missing:
    raise ValueError(
      f"No nn.MultiHeadDotProductAttention ran inside block(s) {missing}: LeGrad needs the tapped layers to be "
      "transformer blocks holding flax.linen attention (a block whose attention calls a function directly, as "
      "Hugging Face's Flax ViT does, cannot be read)."
    )
  order = range(len(tap.layers))
  return tuple(probs[i] for i in order), tuple(tokens[i] for i in order), out


def _recording_attention(delta: Any, i: int, probs: dict) -> Any:
  """flax.linen's `dot_product_attention`, recording its probabilities (plus `delta`) as ``probs[i]``."""
  import flax.linen as nn
  from flax.linen.dtypes import promote_dtype

  def attend(query, key, value, bias=None, mask=None, broadcast_dropout=True, dropout_rng=None,
             dropout_rate=0.0, deterministic=False, dtype=None, precision=None, module=None,
             force_fp32_for_softmax=False, einsum_dot_general=None, qk_attn_weights_einsum=None,
             attn_weights_value_einsum=None):  # fmt: skip
    query, key, value = promote_dtype(query, key, value, dtype=dtype)
    weights = nn.dot_product_attention_weights(
      query,
      key,
      bias,
      mask,
      broadcast_dropout,
      dropout_rng,
      dropout_rate,
      deterministic,
      query.dtype,
      precision,
      module,
      force_fp32_for_softmax,
      einsum_dot_general=einsum_dot_general,
      einsum=qk_attn_weights_einsum,
    )
    if delta is not None:
      weights = weights + delta.astype(weights.dtype)
    probs[i] = weights
    einsum = attn_weights_value_einsum or functools.partial(
      jnp.einsum, precision=precision, _dot_general=einsum_dot_general or jax.lax.dot_general
    )
    return einsum("...hqk,...khd->...qhd", weights, value)  # as flax.linen.dot_product_attention

  return attend
