"""Small Flax models for the tests (linen and nnx), and the torch-layout weight converters they need."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ConvBlock(nn.Module):
  features: int
  strides: int = 1
  act: callable = nn.relu

  @nn.compact
  def __call__(self, x):
    pad = ((1, 1), (1, 1))
    return self.act(nn.Conv(self.features, (3, 3), strides=self.strides, padding=pad, name="conv")(x))


class ConvNet(nn.Module):
  """body_0 -> body_1 (default layer) -> body_2 -> GAP -> fc: a head that is not piecewise affine-free."""

  classes: int = 5
  default_layer = "body/1"
  fc_layer = "fc"

  @nn.compact
  def __call__(self, x):
    x = ConvBlock(6, name="body_0")(x)
    x = ConvBlock(8, strides=2, name="body_1")(x)
    x = ConvBlock(8, name="body_2")(x)
    return nn.Dense(self.classes, name="fc")(x.mean(axis=(1, 2)))


class GapDense(nn.Module):
  """conv -> relu (layer 'features') -> GAP -> Dense: dS/dA is W[:, c] / (h w) in closed form."""

  classes: int = 4
  fc_layer = "fc"
  default_layer = "features"

  @nn.compact
  def __call__(self, x):
    a = ConvBlock(5, name="features")(x)
    return nn.Dense(self.classes, name="fc")(jnp.mean(a, axis=(1, 2)))


class GapDenseNnx(nnx.Module):
  fc_layer = "fc"

  def __init__(self, rngs: nnx.Rngs, classes: int = 4):
    self.features = nnx.Conv(3, 5, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(5, classes, rngs=rngs)

  def __call__(self, x):
    a = nnx.relu(self.features(x))
    return self.fc(jnp.mean(a, axis=(1, 2)))


class ResBlock(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv1")(x)
    y = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
    y = nn.BatchNorm(use_running_average=True, name="bn2")(y)
    return nn.relu(x + y)


class ResNetTiny(nn.Module):
  """stem -> layer_0 -> layer_1 (residual blocks, eval BatchNorm) -> GAP -> fc."""

  classes: int = 6

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="stem")(x))
    x = ResBlock(8, name="layer_0")(x)
    x = ResBlock(8, name="layer_1")(x)
    return nn.Dense(self.classes, name="fc")(x.mean(axis=(1, 2)))


def randomize_batch_stats(variables, seed=0):
  """Non-trivial running statistics so eval-mode BatchNorm is not the identity."""
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(
    lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape).astype(np.float32)), variables["batch_stats"]
  )
  return {**variables, "batch_stats": stats}


class ParityCNN(nn.Module):
  """The same network as scripts/make_fixtures.py's SmallCNN (torch padding=1 written explicitly).

  ``head_act=nn.silu`` gives its SmoothHeadCNN (a smooth head after block2, for Shapley-CAM's Hessian term).
  """

  head_act: Callable = nn.relu
  fc_layer = "fc"
  default_layer = "block2"

  @nn.compact
  def __call__(self, x):
    x = ConvBlock(8, name="block1")(x)
    x = ConvBlock(16, strides=2, name="block2")(x)
    x = ConvBlock(16, name="block3", act=self.head_act)(x)
    return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


def parity_variables(data):
  """Flax variables of ParityCNN from the torch state dict stored in the fixture (OIHW -> HWIO)."""
  conv = lambda n: {
    "conv": {
      "kernel": jnp.asarray(np.transpose(data[f"w/{n}.0.weight"], (2, 3, 1, 0))),
      "bias": jnp.asarray(data[f"w/{n}.0.bias"]),
    }
  }
  return {
    "params": {
      "block1": conv("block1"),
      "block2": conv("block2"),
      "block3": conv("block3"),
      "fc": {"kernel": jnp.asarray(data["w/fc.weight"].T), "bias": jnp.asarray(data["w/fc.bias"])},
    }
  }


# ------------------------------------------------------------------ one network as linen, nnx and plain functions


class _ConvBlockNnx(nnx.Module):
  def __init__(self, cin, cout, strides, rngs):
    self.conv = nnx.Conv(cin, cout, (3, 3), strides=strides, padding=((1, 1), (1, 1)), rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.conv(x))


class ConvNetNnx(nnx.Module):
  """`ConvNet` in nnx, same parameter names and shapes (see `convnet_nnx`)."""

  fc_layer = "fc"
  default_layer = "body_1"

  def __init__(self, rngs: nnx.Rngs, classes: int = 5):
    self.body_0 = _ConvBlockNnx(3, 6, 1, rngs)
    self.body_1 = _ConvBlockNnx(6, 8, 2, rngs)
    self.body_2 = _ConvBlockNnx(8, 8, 1, rngs)
    self.fc = nnx.Linear(8, classes, rngs=rngs)

  def __call__(self, x):
    return self.fc(self.body_2(self.body_1(self.body_0(x))).mean(axis=(1, 2)))


def convnet_nnx(variables) -> ConvNetNnx:
  """A `ConvNetNnx` holding the linen `ConvNet`'s variables."""
  model = ConvNetNnx(nnx.Rngs(0))
  p = variables["params"]
  for name in ("body_0", "body_1", "body_2"):
    conv = getattr(model, name).conv
    conv.kernel = nnx.Param(p[name]["conv"]["kernel"])
    conv.bias = nnx.Param(p[name]["conv"]["bias"])
  model.fc.kernel = nnx.Param(p["fc"]["kernel"])
  model.fc.bias = nnx.Param(p["fc"]["bias"])
  return model


def _block(p, y, name, stride):
  k, b = p[name]["conv"]["kernel"], p[name]["conv"]["bias"]
  y = jax.lax.conv_general_dilated(y, k, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y + b[None, None, None, :])


def convnet_body(variables, x):
  """`ConvNet` up to and including body_2, by hand (a `function_tap` body; params = the linen variables)."""
  p = variables["params"]
  return _block(p, _block(p, _block(p, x, "body_0", 1), "body_1", 2), "body_2", 1)


def convnet_head(variables, x, a):
  """`ConvNet` after body_2: global average pooling + Dense."""
  del x
  p = variables["params"]
  return a.mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"][None, :]


class DictOutput(nn.Module):
  """GapDense whose output is a dict (logits + embedding): taps accept any pytree output."""

  @nn.compact
  def __call__(self, x):
    a = ConvBlock(5, name="features")(x)
    pooled = jnp.mean(a, axis=(1, 2))
    return {"logits": nn.Dense(4, name="fc")(pooled), "embedding": pooled}


# ------------------------------------------------------------------------------------------------ torchvision ViT


class TvEncoderBlock(nn.Module):
  """torchvision's ``EncoderBlock``: pre-norm attention and MLP, each with a residual."""

  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm(epsilon=1e-6, name="ln_1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, name="self_attention")(y, y)
    y = nn.LayerNorm(epsilon=1e-6, name="ln_2")(x)
    y = nn.Dense(x.shape[-1], name="mlp_3")(nn.gelu(nn.Dense(self.mlp_dim, name="mlp_0")(y), approximate=False))
    return x + y


class TvViT(nn.Module):
  """torchvision's ``VisionTransformer`` in linen (channels-last pixels), for weights converted by `tv_vit_params`.

  Submodules come from setup() so that `legrad_score` (torchcam's LeGrad projection ``heads(ln(tokens.mean(1)))``)
  can call the final norm and head on any block's tokens."""

  patch_size: int
  num_layers: int
  num_heads: int
  hidden_dim: int
  mlp_dim: int
  num_classes: int
  num_patches: int

  def setup(self):
    p, d = self.patch_size, self.hidden_dim
    self.conv_proj = nn.Conv(d, (p, p), strides=p, padding="VALID")
    self.class_token = self.param("class_token", nn.initializers.zeros, (1, 1, d))
    self.pos_embedding = self.param("pos_embedding", nn.initializers.normal(0.02), (1, self.num_patches + 1, d))
    self.layers = [TvEncoderBlock(self.num_heads, self.mlp_dim) for _ in range(self.num_layers)]
    self.ln = nn.LayerNorm(epsilon=1e-6)
    self.head = nn.Dense(self.num_classes)

  def __call__(self, x):
    x = self.conv_proj(x)
    b = x.shape[0]
    x = x.reshape(b, -1, x.shape[-1])
    x = jnp.concatenate([jnp.broadcast_to(self.class_token, (b, 1, x.shape[-1])), x], axis=1) + self.pos_embedding
    for block in self.layers:
      x = block(x)
    return self.head(self.ln(x)[:, 0])

  def legrad_score(self, tokens):
    return self.head(self.ln(tokens.mean(axis=1)))


def tv_vit_params(sd: dict, num_layers: int, num_heads: int) -> dict:
  """torchvision ViT state dict (numpy arrays) -> TvViT params."""
  dense = lambda w, b: {"kernel": w.T, "bias": b}
  ln = lambda w, b: {"scale": w, "bias": b}
  d = sd["conv_proj.weight"].shape[0]
  hd = d // num_heads
  params = {
    "conv_proj": {"kernel": sd["conv_proj.weight"].transpose(2, 3, 1, 0), "bias": sd["conv_proj.bias"]},
    "class_token": sd["class_token"],
    "pos_embedding": sd["encoder.pos_embedding"],
    "ln": ln(sd["encoder.ln.weight"], sd["encoder.ln.bias"]),
    "head": dense(sd["heads.head.weight"], sd["heads.head.bias"]),
  }
  for i in range(num_layers):
    pre = f"encoder.layers.encoder_layer_{i}."
    w, bias = sd[pre + "self_attention.in_proj_weight"], sd[pre + "self_attention.in_proj_bias"]
    attn = {
      name: {
        "kernel": w[j * d : (j + 1) * d].T.reshape(d, num_heads, hd),
        "bias": bias[j * d : (j + 1) * d].reshape(num_heads, hd),
      }
      for j, name in enumerate(("query", "key", "value"))
    }
    attn["out"] = {
      "kernel": sd[pre + "self_attention.out_proj.weight"].T.reshape(num_heads, hd, d),
      "bias": sd[pre + "self_attention.out_proj.bias"],
    }
    params[f"layers_{i}"] = {
      "ln_1": ln(sd[pre + "ln_1.weight"], sd[pre + "ln_1.bias"]),
      "self_attention": attn,
      "ln_2": ln(sd[pre + "ln_2.weight"], sd[pre + "ln_2.bias"]),
      "mlp_0": dense(sd[pre + "mlp.0.weight"], sd[pre + "mlp.0.bias"]),
      "mlp_3": dense(sd[pre + "mlp.3.weight"], sd[pre + "mlp.3.bias"]),
    }
  return {"params": params}


class Block(nn.Module):
  """A pre-norm transformer block; returns ``(x, None)`` when `as_tuple` (scan-style blocks)."""

  dim: int = 16
  as_tuple: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2)(y, y)
    x = x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(x))))
    return (x, None) if self.as_tuple else x


class TinyViT(nn.Module):
  """16x16 images, 4x4 patches -> 16 tokens + CLS, two blocks; the head reads CLS (or the patch mean)."""

  pool: str = "cls"
  as_tuple: bool = False
  channels_first: bool = False
  dict_output: bool = False

  @nn.compact
  def __call__(self, x):
    if self.channels_first:
      x = jnp.moveaxis(x, 1, -1)
    p = nn.Conv(16, (4, 4), strides=4, name="embed")(x)
    b = p.shape[0]
    t = p.reshape(b, -1, 16)
    cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, 16))
    t = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, 16)), t], axis=1)
    t = t + self.param("pos", nn.initializers.normal(0.02), (1, 17, 16))
    for i in range(2):
      t = Block(as_tuple=self.as_tuple, name=f"block{i}")(t)
      t = t[0] if self.as_tuple else t
    t = nn.LayerNorm(name="norm")(t)
    feat = t[:, 0] if self.pool == "cls" else t[:, 1:].mean(axis=1)
    logits = nn.Dense(5, name="head")(feat)
    return {"logits": logits, "features": feat} if self.dict_output else logits


class Net3d(nn.Module):
  channels_first: bool = False
  fc_layer = "fc"  # CAM's Dense layer (jaxcam reads this attribute)

  @nn.compact
  def __call__(self, x):  # (B, D, H, W, C), or (B, C, D, H, W)
    if self.channels_first:
      x = jnp.moveaxis(x, 1, -1)
    x = nn.relu(nn.Conv(6, (3, 3, 3), name="conv1")(x))
    x = Conv3dBlock(name="block")(x)
    return nn.Dense(4, name="fc")(x.mean(axis=(1, 2, 3)))


class Conv3dBlock(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(8, (3, 3, 3), strides=2, name="conv")(x))


def piecewise_linear_nets():
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
  conv_net = ConvNet()
  gap = GapDense()
  return x, [
    (conv_net, conv_net.init(jax.random.key(1), x), "body_1"),  # conv + ReLU head: generic
    (gap, gap.init(jax.random.key(2), x), "features"),
  ]  # GAP + Dense: structured
