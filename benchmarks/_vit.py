"""A ViT-S/16 in Flax laid out like timm's ``vit_small_patch16_224`` (the benchmark's transformer, issue 14):
the same state-dict keys (``_worker.vit_keys``), so numpy-seeded weights (tests/seeded.py) load into both sides.

CLS pooling, LayerNorm eps 1e-6, exact GELU, qkv as one Dense reshaped (B, N, 3, heads, head_dim) as timm does,
pixels in [0, 1] normalized inside with mean = std = 0.5.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _worker import CLASSES, DEPTH, DIM, HEADS, MLP, PATCH


class Block(nn.Module):
  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    y = nn.LayerNorm(epsilon=1e-6, name="norm1")(x)
    qkv = nn.Dense(3 * DIM, name="qkv")(y).reshape(b, n, 3, HEADS, DIM // HEADS)
    q, k, v = (jnp.moveaxis(qkv[:, :, i], 2, 1) for i in range(3))  # (B, heads, N, head_dim)
    att = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) * (DIM // HEADS) ** -0.5, axis=-1)
    x = x + nn.Dense(DIM, name="proj")(jnp.moveaxis(att @ v, 1, 2).reshape(b, n, DIM))
    y = nn.LayerNorm(epsilon=1e-6, name="norm2")(x)
    return x + nn.Dense(DIM, name="fc2")(nn.gelu(nn.Dense(MLP, name="fc1")(y), approximate=False))


class ViTS16(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = (x - 0.5) / 0.5
    p = nn.Conv(DIM, (PATCH, PATCH), strides=PATCH, padding="VALID", name="patch_embed")(x)
    b = p.shape[0]
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, DIM))
    t = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, DIM)), p.reshape(b, -1, DIM)], axis=1)
    t = t + self.param("pos_embed", nn.initializers.zeros, (1, t.shape[1], DIM))
    for i in range(DEPTH):
      t = Block(name=f"blocks_{i}")(t)
    t = nn.LayerNorm(epsilon=1e-6, name="norm")(t)
    return nn.Dense(CLASSES, name="head")(t[:, 0])


def flax_variables(sd: dict[str, np.ndarray]) -> dict:
  """Flax variables of `ViTS16` from a timm-layout state dict."""
  dense = lambda k: {"kernel": jnp.asarray(sd[k + ".weight"].T), "bias": jnp.asarray(sd[k + ".bias"])}
  norm = lambda k: {"scale": jnp.asarray(sd[k + ".weight"]), "bias": jnp.asarray(sd[k + ".bias"])}
  params = {
    "cls_token": jnp.asarray(sd["cls_token"]),
    "pos_embed": jnp.asarray(sd["pos_embed"]),
    "patch_embed": {
      "kernel": jnp.asarray(np.transpose(sd["patch_embed.proj.weight"], (2, 3, 1, 0))),
      "bias": jnp.asarray(sd["patch_embed.proj.bias"]),
    },  # fmt: skip
    "norm": norm("norm"),
    "head": dense("head"),
  }
  for i in range(DEPTH):
    b = f"blocks.{i}."
    params[f"blocks_{i}"] = {
      "norm1": norm(b + "norm1"),
      "qkv": dense(b + "attn.qkv"),
      "proj": dense(b + "attn.proj"),
      "norm2": norm(b + "norm2"),
      "fc1": dense(b + "mlp.fc1"),
      "fc2": dense(b + "mlp.fc2"),
    }
  return {"params": params}
