"""`jaxcam.methods.rollout`: attention rollout and Chefer et al.'s gradient rollout against a ViT written out by hand
(its attention probabilities and their gradients computed there, the rollouts in numpy)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import reference as ref


def _layer_norm(v, p):
  mean = v.mean(-1, keepdims=True)
  var = ((v - mean) ** 2).mean(-1, keepdims=True)
  return (v - mean) / jnp.sqrt(var + 1e-6) * p["scale"] + p["bias"]


@jax.jit
def _vit_by_hand(variables, x, deltas=None):
  """tests/nets.py's TinyViT written out: ``(logits, [P_l (B, heads, N, N)])``; ``deltas[l]`` is added to P_l."""
  with jax.numpy_rank_promotion("allow"):  # written with numpy's broadcasting
    return _vit_body(variables, x, deltas)


def _vit_body(variables, x, deltas):
  p = variables["params"]
  b = x.shape[0]
  patches = x.reshape(b, 4, 4, 4, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 16, 48)
  t = patches @ p["embed"]["kernel"].reshape(48, 16) + p["embed"]["bias"]
  t = jnp.concatenate([jnp.broadcast_to(p["cls"], (b, 1, 16)), t], axis=1) + p["pos"]
  probs = []
  for i in range(2):
    q = p[f"block{i}"]
    y = _layer_norm(t, q["LayerNorm_0"])
    att = q["MultiHeadDotProductAttention_0"]
    qkv = [jnp.einsum("bnd,dhe->bnhe", y, att[n]["kernel"]) + att[n]["bias"] for n in ("query", "key", "value")]
    logits = jnp.einsum("bqhe,bkhe->bhqk", qkv[0] / np.sqrt(8.0), qkv[1])
    pr = jax.nn.softmax(logits, axis=-1)
    pr = pr if deltas is None else pr + deltas[i]
    probs.append(pr)
    o = jnp.einsum("bhqk,bkhe->bqhe", pr, qkv[2])
    t = t + jnp.einsum("bqhe,hed->bqd", o, att["out"]["kernel"]) + att["out"]["bias"]
    h = jax.nn.gelu(_layer_norm(t, q["LayerNorm_1"]) @ q["Dense_1"]["kernel"] + q["Dense_1"]["bias"])
    t = t + h @ q["Dense_0"]["kernel"] + q["Dense_0"]["bias"]
  t = _layer_norm(t, p["norm"])
  return t[:, 0] @ p["head"]["kernel"] + p["head"]["bias"], probs


def _grid(row):
  """Key tokens (B, 17) -> the 4x4 patch grid (CLS dropped)."""
  return np.asarray(row)[:, 1:].reshape(-1, 4, 4)


@pytest.fixture(scope="module")
def blocks(vit):
  module, variables, x = vit
  logits, probs = _vit_by_hand(variables, x)
  np.testing.assert_allclose(logits, module.apply(variables, x), rtol=1e-4, atol=1e-5)  # the hand ViT is the model
  tap = jaxcam.linen_tap(module, variables, ["block0", "block1"], layout=jaxcam.layouts.tokens(prefix=1))
  return module, variables, x, tap, [np.asarray(pr, np.float64) for pr in probs]


@pytest.mark.fast
def test_attention_rollout_against_numpy(blocks):
  _, _, x, tap, probs = blocks
  r = None
  for pr in probs:  # Abnar & Zuidema: rownorm(mean over heads + I), multiplied on the left in block order
    a = pr.mean(axis=1) + np.eye(17)
    a = a / a.sum(-1, keepdims=True)
    r = a if r is None else a @ r
  raw = jaxcam.attention_rollout(tap, x, normalize=False, upsample=False, relu=False)
  np.testing.assert_allclose(raw, _grid(r[:, 0]), rtol=1e-4, atol=1e-6)
  maps = jaxcam.attention_rollout(tap, x)
  np.testing.assert_allclose(maps, ref.postprocess(_grid(r[:, 0]), (16, 16)), atol=1e-4)
  third = jaxcam.attention_rollout(tap, x, normalize=False, upsample=False, relu=False, token=3)  # another query
  np.testing.assert_allclose(third, _grid(r[:, 3]), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="`token`"):
    jaxcam.attention_rollout(tap, x, token=17)


def test_gradient_rollout_against_the_hand_vit(blocks):
  """Chefer et al.: R = I, R += mean_heads(relu(dS/dP_l * P_l)) R in block order, the gradients taken through the
  hand-written ViT (jax.grad w.r.t. perturbations of its probabilities), the accumulation in numpy."""
  _, variables, x, tap, probs = blocks
  t = np.array([1, 3])
  zeros = [jnp.zeros(pr.shape, jnp.float32) for pr in probs]
  grads = jax.grad(lambda d: jnp.sum(_vit_by_hand(variables, x, d)[0][jnp.arange(2), t]))(zeros)
  r = np.broadcast_to(np.eye(17), (2, 17, 17))
  for pr, g in zip(probs, grads):
    a = np.maximum(np.asarray(g, np.float64) * pr, 0).mean(axis=1)
    r = r + a @ r
  raw = jaxcam.gradient_rollout(tap, x, target=t, normalize=False, upsample=False, relu=False)
  np.testing.assert_allclose(raw, _grid(r[:, 0]), rtol=1e-4, atol=1e-6)
  both = jaxcam.gradient_rollout(tap, x, target=np.stack([t, t[::-1]], 1), normalize=False, upsample=False)
  np.testing.assert_allclose(both[:, 0], raw, rtol=1e-5, atol=1e-6)  # K targets: one backward pass each
  assert not np.allclose(both[:, 1], both[:, 0], atol=1e-6)  # and the second class is its own map


@pytest.mark.slow
def test_rollout_rows_work_through_the_entry_points_and_refuse_what_they_cannot_read(blocks, convnet_b2):
  _, _, x, tap, _ = blocks
  many = jaxcam.explain_many(["attention_rollout", "gradient_rollout", "gradcam"], tap, x, np.array([0, 1]))
  np.testing.assert_allclose(many["attention_rollout"].maps, jaxcam.attention_rollout(tap, x), atol=1e-6)
  out = list(jaxcam.explain_batches("gradient_rollout", tap, [(np.asarray(x), np.array([0, 1]))]))
  np.testing.assert_allclose(out[0].maps, jaxcam.gradient_rollout(tap, x, np.array([0, 1])), atol=1e-6)
  _, _, conv_tap, conv_x = convnet_b2
  assert not jaxcam.get_method("attention_rollout").applies(conv_tap)
  with pytest.raises(ValueError, match="Attention rollout lays the attention keys out"):
    jaxcam.attention_rollout(conv_tap, conv_x)
