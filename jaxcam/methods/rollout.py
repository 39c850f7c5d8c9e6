"""Attention attribution for vision transformers: attention rollout and gradient-weighted rollout.

Both read the post-softmax attention probabilities ``P_l`` ``(B, heads, N, N)`` of every tapped transformer block
while the model runs, as LeGrad does (`jaxcam.methods.attention`: linen ``nn.MultiHeadDotProductAttention`` with
its default ``attention_fn``; tap the blocks, in block order, with ``layout=jaxcam.layouts.tokens(prefix=...)``),
and return one token's row of the accumulated matrix over the patch tokens, laid on the token grid:

- **Attention rollout** (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  ``Â_l = rownorm(mean_heads(P_l) + I)``, ``R = Â_L ⋯ Â_1`` (each block's matrix multiplied on the left, in block
  order), no discard ratio. Class-agnostic.
- **Gradient rollout** (Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", ICCV 2021, Eq. 13 for self-attention): ``Ā_l = mean_heads(relu(dS/dP_l ⊙ P_l))``,
  ``R ← R + Ā_l R`` from ``R = I`` in block order; ``dS/dP_l`` is the target score's gradient through the whole
  model (one backward pass per target).

The map of the query token `token` (0: CLS) is ``R[token, prefix:]``: the prefix keys are dropped by the tokens
layout. Every tapped block contributes to the one map, which each layer's row repeats (so the usual fusion over
layers leaves it as is).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import targets as targets_lib
from jaxcam.methods.attention import keys_on_grid, read_blocks, token_blocks

__all__ = [
  "rollout_matrix",
  "gradient_rollout_matrix",
  "attention_rollout_map",
  "gradient_rollout_map",
  "rollout_provider",
  "gradient_rollout_provider",
]


def rollout_matrix(probs: tuple) -> jax.Array:
  """``R = Â_L ⋯ Â_1`` with ``Â_l = rownorm(mean_heads(P_l) + I)``, from the blocks' ``P_l`` ``(B, heads, N, N)``
  in block order: ``(B, N, N)``.

  >>> import jax.numpy as jnp
  >>> p = jnp.full((1, 2, 2, 2), 0.5)  # uniform attention, two heads, two tokens
  >>> rollout_matrix((p, p))[0]  # every row of (0.5 P + 0.5 I) is (0.75, 0.25) / (0.25, 0.75); their product:
  Array([[0.625, 0.375],
         [0.375, 0.625]], dtype=float32)
  """
  if not probs:
    raise ValueError("Expected the attention probabilities of at least one block, got none.")
  n = probs[0].shape[-1]
  eye = jnp.eye(n, dtype=probs[0].dtype)[None]
  r = jnp.broadcast_to(eye, (probs[0].shape[0], n, n))
  for p in probs:
    a = jnp.mean(p, axis=1) + eye
    a = a / jnp.sum(a, axis=-1, keepdims=True)
    r = jnp.matmul(a, r, precision=jax.lax.Precision.HIGHEST)
  return r


def gradient_rollout_matrix(probs: tuple, grads: tuple) -> jax.Array:
  """Chefer et al.'s ``R``: from ``R = I``, ``R ← R + mean_heads(relu(g_l ⊙ P_l)) R`` in block order, with ``g_l``
  the target score's gradient w.r.t. ``P_l``; ``probs[l]`` ``(B, heads, N, N)``, ``grads[l]`` ``(B, K, heads, N,
  N)`` -> ``(B, K, N, N)``."""
  b, k = grads[0].shape[:2]
  n = probs[0].shape[-1]
  r = jnp.broadcast_to(jnp.eye(n, dtype=probs[0].dtype), (b, k, n, n))
  for p, g in zip(probs, grads):
    a = jnp.mean(jax.nn.relu(g * p[:, None]), axis=2)  # (B, K, N, N)
    r = r + jnp.matmul(a, r, precision=jax.lax.Precision.HIGHEST)
  return r


def _check_token(token: Any, n: int) -> int:
  if isinstance(token, bool) or not isinstance(token, int) or not -n <= token < n:
    raise ValueError(f"Expected `token` to be the index of a query token in [0, {n}) (0: CLS), got {token!r}.")
  return token


def rollout_provider(tap, x, fwd, *, token: int = 0) -> tuple:
  """The ``attention_rollout`` need: query `token`'s row of the rollout over the key tokens on the grid,
  ``(B, K, h, w)`` (the same for every target), repeated for each tapped block."""
  selector, layout = token_blocks(tap, "Attention rollout")
  probs, _, _ = read_blocks(tap, x, selector, None)
  row = rollout_matrix(probs)[:, _check_token(token, probs[0].shape[-1])]  # (B, N)
  k = fwd.scores.shape[1]
  grid = keys_on_grid(jnp.broadcast_to(row[:, None], (row.shape[0], k, row.shape[1])), layout)
  return (grid,) * len(tap.layers)


def gradient_rollout_provider(tap, x, fwd, *, token: int = 0) -> tuple:
  """The ``gradient_rollout`` need: query `token`'s row of Chefer et al.'s ``R`` over the key tokens on the grid,
  ``(B, K, h, w)``, repeated for each tapped block. One forward pass and one backward pass per target."""
  selector, layout = token_blocks(tap, "Gradient rollout")
  shapes = jax.eval_shape(lambda: read_blocks(tap, x, selector, None)[0])
  zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)
  tgt = targets_lib.with_ids(fwd.target, fwd.ids)

  def scores(deltas):
    probs, _, out = read_blocks(tap, x, selector, deltas)
    return tgt.evaluate(out)[1], probs  # (B, K)

  s, pullback, probs = jax.vjp(scores, zeros, has_aux=True)

  def grads_for(onehot):  # the probabilities' gradient of target column k, summed over the batch (images independent)
    return pullback(jnp.broadcast_to(onehot, s.shape).astype(s.dtype))[0]

  grads = tuple(jnp.moveaxis(g, 0, 1) for g in jax.vmap(grads_for)(jnp.eye(s.shape[1])))  # (B, K, heads, N, N)
  r = gradient_rollout_matrix(probs, grads)
  row = r[:, :, _check_token(token, r.shape[-1])]  # (B, K, N)
  return (keys_on_grid(row, layout),) * len(tap.layers)


def attention_rollout_map(activations: jax.Array, attention_rollout: jax.Array, /) -> jax.Array:
  """Attention rollout's map: the ``attention_rollout`` need, ``(B, K, h, w)`` (see the module docstring)."""
  del activations
  return attention_rollout


def gradient_rollout_map(activations: jax.Array, gradient_rollout: jax.Array, /) -> jax.Array:
  """Gradient rollout's map (Chefer et al. 2021): the ``gradient_rollout`` need, ``(B, K, h, w)``."""
  del activations
  return gradient_rollout
