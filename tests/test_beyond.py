"""Beyond CNN classifiers (issue 14): targets for segmentation, detection, embeddings, regression and binary models
against pytorch-grad-cam (fixture section ``targets``), token layouts, output selectors and channels-first inputs."""

from __future__ import annotations

import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import targets
from tests import reference
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def tfix():
  with np.load(os.path.join(FIXTURES, "targets.npz")) as f:
    return {k: f[k] for k in f.files}


def test_targets_match_pytorch_grad_cam(tfix):
  d = tfix
  np.testing.assert_allclose(targets.rest(np.array([0, 4, 5]))(jnp.asarray(d["logits"])), d["rest"], atol=1e-5)
  np.testing.assert_allclose(targets.binary()(jnp.asarray(d["binary_logit"])), d["binary_pos"], atol=1e-7)
  np.testing.assert_allclose(targets.binary(False)(jnp.asarray(d["binary_logit"])), d["binary_neg"], atol=1e-7)
  np.testing.assert_allclose(
    targets.binary(probability=True)(jnp.asarray(d["binary_logit"])[:, None]),
    1 / (1 + np.exp(-d["binary_logit"])),
    atol=1e-6,
  )
  seg = jnp.asarray(np.moveaxis(d["seg_out"], 1, -1))  # jaxcam's segmentation outputs are channels-last
  np.testing.assert_allclose(targets.segmentation(2, d["seg_mask"])(seg), d["seg"], atol=1e-5)
  sim = targets.similarity(d["emb_ref"])
  np.testing.assert_allclose(sim(jnp.asarray(d["emb"])), d["similarity"], atol=1e-6)
  np.testing.assert_allclose(targets.regression(3)(jnp.asarray(d["logits"])), d["logits"][:, 3], rtol=1e-6)


def test_detection_target_matches_pytorch_grad_cam_with_padding(tfix):
  d = tfix
  t = targets.detection(d["det_ref_boxes"], d["det_ref_labels"], iou=0.5)

  def total(boxes, scores):
    out = {"boxes": boxes, "scores": scores, "labels": jnp.asarray(d["det_labels"]), "valid": d["det_valid"]}
    return jnp.sum(t(out)), t(out)

  (_, per_image), (gb, gs) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
    jnp.asarray(d["det_boxes"]), jnp.asarray(d["det_scores"])
  )
  np.testing.assert_allclose(per_image, d["det"][:, 0], atol=1e-5)  # the invalid decoys never win
  np.testing.assert_allclose(gs, d["det_grad_scores"], atol=1e-6)
  np.testing.assert_allclose(gb, d["det_grad_boxes"], atol=1e-6)  # the IoU term is differentiated too
  with pytest.raises(ValueError, match="'boxes'"):
    t({"bbox": 1})


def test_target_errors():
  with pytest.raises(ValueError, match="rank 4"):
    targets.segmentation(1, np.ones((4, 4), bool))(jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="`index`"):
    targets.regression()(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"\(M, 4\)"):
    targets.detection(np.zeros((3,)), np.zeros((3,)))
  with pytest.raises(ValueError, match="reference"):
    targets.similarity(np.zeros((1, 2, 3)))


# ----------------------------------------------------------------------------------------------- token layouts


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


@pytest.fixture(scope="module")
def vit():
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  module = TinyViT()
  return module, module.init(jax.random.key(1), x), x


def _value_and_grad_at(module, variables, x, layer, ids, logits=lambda out: out):
  """The output of the submodule at path `layer` (Flax's capture_intermediates) and the gradient of the batch-summed
  target logits w.r.t. it (a perturbation added there by an interceptor written here): no jaxcam code."""
  here = lambda m: "/".join(m.path) == layer
  _, state = module.apply(variables, x, capture_intermediates=lambda m, _: here(m), mutable=["intermediates"])
  node = state["intermediates"]
  for part in layer.split("/"):
    node = node[part]
  a = node["__call__"][0]

  def logits_with(delta):
    def icpt(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if here(context.module) and context.method_name == "__call__" else out

    with nn.intercept_methods(icpt):
      return logits(module.apply(variables, x))

  g = jax.grad(lambda d: jnp.sum(logits_with(d)[jnp.arange(len(ids)), ids]))(jnp.zeros_like(a))
  return np.asarray(a), np.asarray(g)


def _patch_grid(tokens):
  """(B, 1 + h*w, D) tokens -> (B, h, w, D): CLS dropped, the patches on their square grid."""
  b, n, d = tokens.shape
  side = int(np.sqrt(n - 1))
  return tokens[:, 1:].reshape(b, side, side, d)


def _gradcam_by_hand(module, variables, x, layer, ids, logits=lambda out: out):
  """Grad-CAM on block tokens from a hand-split forward (`_value_and_grad_at`): drop CLS, reshape to the square
  grid, weight by the mean gradient."""
  tokens, g = _value_and_grad_at(module, variables, x, layer, ids, logits)
  a, g = _patch_grid(tokens), _patch_grid(g)
  return np.maximum(np.sum(g.mean(axis=(1, 2), keepdims=True) * a, axis=-1), 0)


def test_gradcam_on_vit_tokens_matches_a_hand_split(vit):
  module, variables, x = vit
  ids = np.array([1, 3])
  tap = jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens(prefix=1))
  maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)
  np.testing.assert_allclose(maps, _gradcam_by_hand(module, variables, x, "block0", ids), rtol=1e-4, atol=1e-6)
  assert jaxcam.gradcam(tap, x, ids).shape == (2, 16, 16)  # upsampled to the input
  # a pgc-style reshape_transform (defined once) gives the same grid, and perturbation methods see the same model
  to_grid = lambda t: t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[-1])
  fn_tap = jaxcam.linen_tap(module, variables, "block0", layout=to_grid)
  np.testing.assert_allclose(jaxcam.gradcam(fn_tap, x, ids, normalize=False, upsample=False), maps, atol=1e-6)
  _, a = tap(x)
  np.testing.assert_allclose(tap.head(x, a), module.apply(variables, x), atol=1e-5)  # CLS kept downstream
  # perturbation methods replace the grid: both layouts put a changed grid back the same way (CLS untouched)
  changed = a * jnp.linspace(0.0, 1.0, 16).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(fn_tap.head(x, changed), tap.head(x, changed), atol=1e-6)
  assert not np.allclose(tap.head(x, changed), tap.head(x, a), atol=1e-4)


def test_tuple_layers_dict_outputs_and_channels_first(vit):
  module, variables, x = vit
  ids = np.array([1, 3])
  expected = jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens()), x, ids)
  by_hand = reference.postprocess(_gradcam_by_hand(module, variables, x, "block0", ids), (16, 16))
  assert by_hand.max() > 0.5  # (at block1 every map is zero: the patch tokens reach the CLS head no more)
  np.testing.assert_allclose(expected, by_hand, atol=2e-4)  # the maps the other forms are compared with
  tup = TinyViT(as_tuple=True)
  with pytest.raises(ValueError, match=r"a tuple of 2.*layouts.pick"):
    jaxcam.gradcam(jaxcam.linen_tap(tup, variables, "block0", layout=jaxcam.layouts.tokens()), x, ids)
  picked = jaxcam.linen_tap(tup, variables, "block0", layout=jaxcam.layouts.pick(0, then=jaxcam.layouts.tokens()))
  np.testing.assert_allclose(jaxcam.gradcam(picked, x, ids), expected, atol=1e-6)
  _, a = picked(x)
  tokens_tap = jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens())
  np.testing.assert_allclose(picked.head(x, 0.5 * a), tokens_tap.head(x, 0.5 * a), atol=1e-6)  # put back into the tuple
  # a dict output: a static selector, so a second tap built the same way reuses the compiled program
  dicty = TinyViT(dict_output=True)
  build = lambda: jaxcam.linen_tap(dicty, variables, "block0", layout=jaxcam.layouts.tokens(), output="logits")
  np.testing.assert_allclose(jaxcam.gradcam(build(), x, ids), expected, atol=1e-6)
  before = jaxcam.api._explain_jit._cache_size()
  jaxcam.gradcam(build(), x, ids)
  assert jaxcam.api._explain_jit._cache_size() == before
  with pytest.raises(ValueError, match=r"`output='logit'`: No 'logit' in keys \['logits', 'features'\]"):
    jaxcam.gradcam(jaxcam.linen_tap(dicty, variables, "block0", layout=jaxcam.layouts.tokens(), output="logit"), x)
  # similarity to a reference embedding, read through output="features"
  emb = jaxcam.linen_tap(dicty, variables, "block0", layout=jaxcam.layouts.tokens(), output="features")
  ref = dicty.apply(variables, x[::-1])["features"][0]
  assert jaxcam.gradcam(emb, x, jaxcam.targets.similarity(ref)).shape == (2, 16, 16)
  # channels-first pixels: the tap transposes; x and the maps stay channels-last
  cf = jaxcam.linen_tap(
    TinyViT(channels_first=True), variables, "block0", layout=jaxcam.layouts.tokens(), input_layout="NCHW"
  )
  np.testing.assert_allclose(jaxcam.gradcam(cf, x, ids), expected, atol=1e-6)


def test_layout_errors(vit):
  module, variables, x = vit
  with pytest.raises(ValueError, match="square number of patch tokens, got 17 after dropping prefix=0"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens(prefix=0)), x)
  with pytest.raises(ValueError, match=r"Expected 2 x 4 = 8 patch tokens"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens(grid=(2, 4))), x)
  with pytest.raises(ValueError, match="already a grid"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "embed", layout=jaxcam.layouts.tokens()), x)
  with pytest.raises(ValueError, match=r"feature map \(B, h, w, C\).*layouts.tokens"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0"), x)
  with pytest.raises(ValueError, match="input_layout"):
    jaxcam.linen_tap(module, variables, "block0", input_layout="CHW")
  with pytest.raises(TypeError, match="`output`"):
    jaxcam.linen_tap(module, variables, "block0", output=1.5)


# ------------------------------------------------------------------------------- third-party models (optional)


def _hf():
  return pytest.importorskip("transformers", reason="optional: pip install transformers==4.49 (Flax models)")


def test_hugging_face_flax_vit_tokens_and_tuple_layers():
  tf = _hf()
  cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=5)  # fmt: skip
  model = tf.FlaxViTForImageClassification(cfg, seed=0)
  module, variables = model.module, {"params": model.params}
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  ids = np.array([0, 4])
  layer = "vit/encoder/layer/1/layernorm_before"
  tap = jaxcam.linen_tap(module, variables, layer, layout=jaxcam.layouts.tokens(prefix=1), output="logits")
  np.testing.assert_allclose(tap.forward(x), module.apply(variables, x).logits, atol=1e-6)
  maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)
  by_hand = _gradcam_by_hand(module, variables, x, layer, ids, logits=lambda out: out.logits)
  np.testing.assert_allclose(maps, by_hand, rtol=1e-4, atol=1e-6)
  # an encoder layer returns a tuple: refused with its fields listed, read with pick(0)
  with pytest.raises(ValueError, match="a tuple of 1"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "vit/encoder/layer/0", output="logits"), x, ids)
  picked = jaxcam.linen_tap(module, variables, "vit/encoder/layer/0", output="logits",
                            layout=jaxcam.layouts.pick(0, then=jaxcam.layouts.tokens()))  # fmt: skip
  assert np.isfinite(np.asarray(jaxcam.gradcam_pp(picked, x, ids))).all()


def test_hugging_face_flax_resnet_and_beit():
  """The taps' logits are the Hugging Face models' own (their public NCHW entry point); the maps (each image's top
  class) are the numpy formulas on A and dS/dA read by `_value_and_grad_at` (capture_intermediates + an
  interceptor), through pytorch-grad-cam's pipeline (`reference.postprocess`)."""
  tf = _hf()
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  pixel_values = jnp.moveaxis(x, -1, 1)
  by_logits = lambda out: out.logits
  cfg = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
  model = tf.FlaxResNetForImageClassification(cfg, seed=0, input_shape=(1, 32, 32, 3))
  module, variables = model.module, dict(model.params)
  layer = "resnet/encoder/stages/1"
  tap = jaxcam.linen_tap(module, variables, layer, output="logits")
  hf_logits = np.asarray(model(pixel_values).logits)
  np.testing.assert_allclose(tap.forward(x), hf_logits, rtol=1e-5, atol=1e-5)
  a, g = _value_and_grad_at(module, variables, x, layer, hf_logits.argmax(-1), by_logits)
  assert a.shape == (2, 4, 4, 16)
  raw = {"gradcam": reference.channel_map(reference.gradcam_w(a, g), a), "layercam": reference.layercam_raw(a, g)}
  for name in ("gradcam", "layercam"):
    m = jaxcam.explain(name, tap, x).maps
    np.testing.assert_allclose(m, reference.postprocess(raw[name], (32, 32)), atol=2e-4, err_msg=name)
  cfg = tf.BeitConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, num_labels=5, use_mean_pooling=True)  # fmt: skip
  layer = "beit/encoder/layer/1/layernorm_after"
  with jax.numpy_rank_promotion("allow"):  # BEiT's layer scale broadcasts (D,) against (B, N, D)
    model = tf.FlaxBeitForImageClassification(cfg, seed=0)
    module, variables = model.module, {"params": model.params}
    tap = jaxcam.linen_tap(module, variables, layer, layout=jaxcam.layouts.tokens(prefix=1), output="logits")
    hf_logits = np.asarray(model(pixel_values).logits)
    np.testing.assert_allclose(tap.forward(x), hf_logits, rtol=1e-5, atol=1e-5)
    maps = jaxcam.gradcam(tap, x)
    tokens, g = _value_and_grad_at(module, variables, x, layer, hf_logits.argmax(-1), by_logits)
  a, g = _patch_grid(tokens), _patch_grid(g)
  expected = reference.postprocess(reference.channel_map(reference.gradcam_w(a, g), a), (32, 32))
  assert maps.shape == (2, 32, 32) and expected.max() > 0.5
  np.testing.assert_allclose(maps, expected, atol=2e-4)


def test_a_cls_head_after_the_last_block_warns(vit):
  module, variables, x = vit
  # the final norm's tokens reach the head only through CLS: the patch tokens have zero gradient
  tap = jaxcam.linen_tap(module, variables, "norm", layout=jaxcam.layouts.tokens())
  with pytest.warns(UserWarning, match="CLS token"):
    maps = jaxcam.gradcam(tap, x)
  assert not np.any(np.asarray(maps))


def test_nnx_containers_list_and_tap():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.convs = nnx.List([nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.Conv(8, 8, (3, 3), rngs=rngs)])
      self.seq = nnx.Sequential(nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.relu)
      self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
      for conv in self.convs:
        x = nnx.relu(conv(x))
      return self.fc(self.seq(x).mean((1, 2)))

  model = Net(nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  infos = {i.path: i for i in jaxcam.list_layers(model, x=x)}
  assert infos["convs/1"].shape == (2, 8, 8, 8) and infos["seq/layers/0"].type == "Conv"
  assert infos["fc"].shape == (2, 4)
  for layer in ("convs/1", "seq/layers/0"):
    assert jaxcam.gradcam(jaxcam.nnx_tap(model, layer), x).shape == (2, 8, 8)


@pytest.mark.slow  # float64 brute force (jacfwd of the Hessian) and the generic strategy's compiles
def test_exact_derivatives_on_tokens_against_brute_force():
  from jaxcam import derivatives

  d = 4
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    wq, wk, wv = (jnp.asarray(rng.standard_normal((d, d)) * 0.5) for _ in range(3))
    params = {"cls": jnp.asarray(rng.standard_normal((1, 1, d))), "wo": jnp.asarray(rng.standard_normal((d, 3)))}

    def body(p, x):  # 2x2 "patches" of width d, plus a CLS token
      return jnp.concatenate([jnp.broadcast_to(p["cls"], (x.shape[0], 1, d)), x.reshape(x.shape[0], 4, d)], axis=1)

    def head(p, x, t):  # one attention layer, mean pooling over all tokens, a dense layer
      att = jax.nn.softmax((t @ wq) @ jnp.swapaxes(t @ wk, 1, 2) / 2.0, axis=-1)
      return jnp.mean(t + jnp.tanh(att @ (t @ wv)), axis=1) @ p["wo"]

    tap = jaxcam.function_tap(body, head, params, layout=jaxcam.layouts.tokens(prefix=1))
    x = jnp.asarray(rng.standard_normal((2, 2, 2, d)))
    ids = np.array([0, 2])
    diag = derivatives.diagonals(tap, x, ids, strategy="generic", chunk_size=5)
    for b in range(2):

      def score(flat, b=b):
        tokens = body(params, x[b : b + 1]).at[:, 1:].set(flat.reshape(1, 4, d))
        return head(params, None, tokens)[0, ids[b]]

      flat = x[b].reshape(-1)
      second = jnp.diagonal(jax.hessian(score)(flat))
      third = jnp.einsum("iii->i", jax.jacfwd(jax.hessian(score))(flat))
      np.testing.assert_allclose(np.asarray(diag.second[b]).reshape(-1), second, rtol=1e-10, atol=1e-13)
      np.testing.assert_allclose(np.asarray(diag.third[b]).reshape(-1), third, rtol=1e-10, atol=1e-13)
    assert np.all(np.isfinite(np.asarray(jaxcam.gradcam_pp(tap, x, ids, derivatives="exact"))))
    # mean pooling over the tokens (CLS included) + Dense: the structured strategy applies, checked against generic
    pooled = jaxcam.function_tap(body, lambda p, x, t: jnp.tanh(jnp.mean(t, axis=1) @ p["wo"]), params,
                                 layout=jaxcam.layouts.tokens(prefix=1))  # fmt: skip
    auto = derivatives.diagonals(pooled, x, ids)
    generic = derivatives.diagonals(pooled, x, ids, strategy="generic")
    assert auto.strategy == "structured" and float(auto.check) < 1e-10
    np.testing.assert_allclose(auto.third, generic.third, rtol=1e-10, atol=1e-13)


def test_pooling_detection_sees_layouts_avg_pool_and_call_wrappers():
  from jaxcam.derivatives import enters_only_through_spatial_sum as only_sums

  a = jnp.ones((2, 4, 4, 3))
  w = jnp.ones((3, 5))
  cls = jnp.ones((2, 1, 3))
  only_through_sums = {
    "channels-first mean (Equinox)": lambda t: jnp.moveaxis(t, -1, 1).mean(axis=(2, 3)) @ w,
    "full-window avg_pool (HF ResNet)": lambda t: nn.avg_pool(t, (4, 4)).reshape(2, 3) @ w,
    "tokens + CLS, mean over tokens": lambda t: jnp.concatenate([cls, t.reshape(2, 16, 3)], axis=1).mean(1) @ w,
    "under remat": jax.checkpoint(lambda t: jnp.tanh(t.mean((1, 2)) @ w)),
    "under jit and custom_jvp": jax.jit(lambda t: jax.nn.relu(t.mean((1, 2))) @ w),
  }
  for name, head in only_through_sums.items():
    assert only_sums(head, a), name
  elsewhere = {
    "a ReLU per position": lambda t: jax.nn.relu(t).mean((1, 2)) @ w,
    "the CLS token only": lambda t: jnp.concatenate([cls, t.reshape(2, 16, 3)], axis=1)[:, 0] @ w,
    "a 2x2 avg_pool": lambda t: nn.avg_pool(t, (2, 2)).mean((1, 2)) @ w,
    "a sum over one spatial axis": lambda t: t.sum(1).max(1) @ w,
  }
  for name, head in elsewhere.items():
    assert not only_sums(head, a), name


# ------------------------------------------------------------------------------------------------ 1-D models


def _value_and_grad_by_hand(module, variables, x, name, ids):
  """A top-level layer's value (Flax's capture_intermediates) and the gradient of the batch-summed target logits
  w.r.t. it (an interceptor adding a perturbation): the reference the taps are checked against."""

  def logits_with(delta):
    def icpt(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if context.module.name == name else out

    with nn.intercept_methods(icpt):
      return module.apply(variables, x)

  _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  a = np.asarray(state["intermediates"][name]["__call__"][0])
  g = jax.grad(lambda d: jnp.sum(logits_with(d)[jnp.arange(len(ids)), ids]))(jnp.zeros(a.shape))
  return a, np.asarray(g)


class Net1d(nn.Module):
  @nn.compact
  def __call__(self, x):  # (B, L, C)
    x = nn.relu(nn.Conv(8, (3,), name="conv1")(x))
    x = nn.relu(nn.Conv(8, (3,), strides=2, name="conv2")(x))
    return nn.Dense(4, name="fc")(x.mean(axis=1))


def test_one_dimensional_model_maps_have_the_input_length():
  module = Net1d()
  x = jax.random.normal(jax.random.key(0), (3, 32, 2))
  variables = module.init(jax.random.key(1), x)
  ids = np.array([0, 1, 3])
  tap = jaxcam.linen_tap(module, variables, "conv2", input_layout="NLC")
  raw = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)

  # by hand: the layer's value and gradient from an interceptor, Grad-CAM's mean-gradient weights
  a, g = _value_and_grad_by_hand(module, variables, x, "conv2", ids)  # (B, 16, 8)
  by_hand = np.maximum(np.sum(g.mean(axis=1, keepdims=True) * a, axis=-1), 0)
  np.testing.assert_allclose(raw, by_hand, rtol=1e-4, atol=1e-6)
  # upsampled to the input length: linear interpolation with half-sample centres, edges held
  up = jaxcam.gradcam(tap, x, ids, normalize=False)
  pos = np.clip((np.arange(32) + 0.5) * 16 / 32 - 0.5, 0, 15)
  np.testing.assert_allclose(up, np.stack([np.interp(pos, np.arange(16), m) for m in by_hand]), rtol=1e-4, atol=1e-6)
  maps = jaxcam.explain_many(["gradcam", "layercam"], tap, x, ids)
  assert maps["layercam"].maps.shape == (3, 32) and maps["gradcam"].feature_sizes == ((16,),)
  with pytest.raises(ValueError, match=r"\(B, L, C\) for a tap with input_layout='NLC'"):
    jaxcam.gradcam(tap, x[:, :, None, :])


# ------------------------------------------------------------------------------------------------ 3-D models


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


@pytest.fixture(scope="module")
def net3d():
  module = Net3d()
  x = jax.random.normal(jax.random.key(0), (2, 6, 10, 8, 2))
  return module, module.init(jax.random.key(1), x), x


def test_volume_gradcam_matches_a_hand_computation_with_trilinear_upsampling(net3d):
  module, variables, x = net3d
  ids = np.array([1, 3])
  tap = jaxcam.linen_tap(module, variables, "block", input_layout="NDHWC")

  a, g = _value_and_grad_by_hand(module, variables, x, "block", ids)  # (B, 3, 5, 4, 8)
  raw = np.sum(g.mean(axis=(1, 2, 3), keepdims=True) * a, axis=-1)
  ex = jaxcam.explain("gradcam", tap, x, ids)
  assert ex.maps.shape == (2, 6, 10, 8) and ex.feature_sizes == ((3, 5, 4),)
  mm = lambda m: (m - m.min(axis=(1, 2, 3), keepdims=True)) / (np.ptp(m, axis=(1, 2, 3), keepdims=True) + 1e-7)
  expected = mm(np.maximum(reference.trilinear(mm(np.maximum(raw, 0)), (6, 10, 8)), 0))
  np.testing.assert_allclose(ex.maps, expected, rtol=1e-4, atol=1e-5)
  raw_maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)
  np.testing.assert_allclose(raw_maps, np.maximum(raw, 0), atol=1e-6)
  # channels-first volumes: the same maps, still channels-last on jaxcam's side
  cf = Net3d(channels_first=True)
  tap_cf = jaxcam.linen_tap(cf, variables, "block", input_layout="NCDHW")
  np.testing.assert_allclose(jaxcam.gradcam(tap_cf, x, ids), ex.maps, atol=1e-6)
  with pytest.raises(ValueError, match=r"rank 5 \(B, D, H, W, C\)"):
    jaxcam.gradcam(tap, x[0])
  with pytest.raises(ValueError, match="input_layout='NDHWC'"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block"), x)


@pytest.mark.slow  # every cheap row compiled for volumes (~20 s cold)
def test_volume_methods_run_and_recipro_cam_uses_the_3d_kernel(net3d):
  module, variables, x = net3d
  tap = jaxcam.linen_tap(module, variables, "block", input_layout="NDHWC")
  out = jaxcam.explain_many(None, tap, x, key=jax.random.key(0))
  assert len(out) >= 10 and all(ex.maps.shape == (2, 6, 10, 8) for ex in out.values()), {
    k: v.maps.shape for k, v in out.items()
  }
  assert all(bool(jnp.all(jnp.isfinite(ex.maps))) for ex in out.values())
  cam = jaxcam.cam(tap, x, normalize=False, upsample=False)
  np.testing.assert_allclose(cam, jaxcam.gradcam(tap, x, normalize=False, upsample=False) * 60, rtol=1e-4, atol=1e-5)
  # Recipro-CAM's neighbourhood in 3-D: the outer product of [1, 2, 1] / 4 along each axis, clipped at the border
  a = jax.random.normal(jax.random.key(2), (3, 5, 4, 2))
  from jaxcam.methods import perturbation

  with jaxcam._spatial.dims(3):
    feats = np.asarray(perturbation.reciprocam_features(a, jnp.asarray(np.ravel_multi_index((0, 2, 3), (3, 5, 4)))))
  k = np.zeros((3, 5, 4))
  for dd, dh, dw in np.ndindex(3, 3, 3):
    i, j, m = dd - 1, 2 + dh - 1, 3 + dw - 1
    if 0 <= i < 3 and 0 <= j < 5 and 0 <= m < 4:
      k[i, j, m] = [1, 2, 1][dd] * [1, 2, 1][dh] * [1, 2, 1][dw] / 64
  np.testing.assert_allclose(feats, k[..., None] * np.asarray(a)[0, 2, 3], rtol=1e-6)


# ------------------------------------------------------------------------------------------------ LeGrad


@pytest.fixture(scope="module")
def tv_vit():
  from tests.models import TvViT, tv_vit_params

  data = dict(np.load(os.path.join(FIXTURES, "legrad.npz")))
  sd = {k[2:]: v for k, v in data.items() if k.startswith("w/")}
  module = TvViT(patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=24, num_classes=5, num_patches=16)
  variables = jax.tree.map(jnp.asarray, tv_vit_params(sd, num_layers=3, num_heads=2))
  return module, variables, data


def test_legrad_matches_torchcam(tv_vit):
  module, variables, data = tv_vit
  x, ids = jnp.asarray(data["x"]), data["ids"]
  np.testing.assert_allclose(module.apply(variables, x), data["logits"], rtol=1e-4, atol=1e-5)
  tokens = jaxcam.layouts.tokens(prefix=1)
  for tag, layers in (("last", "layers_2"), ("two", ["layers_1", "layers_2"])):
    tap = jaxcam.linen_tap(module, variables, layers, layout=tokens)
    np.testing.assert_allclose(jaxcam.legrad(tap, x, ids, upsample=False), data[f"{tag}_ids"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jaxcam.legrad(tap, x, upsample=False), data[f"{tag}_top"], rtol=1e-4, atol=1e-5)
  up = jaxcam.legrad(jaxcam.linen_tap(module, variables, "layers_2", layout=tokens), x, ids)
  assert up.shape == (2, 32, 32)
  # a `score` method given explicitly equals the module's legrad_score
  tap = jaxcam.linen_tap(module, variables, "layers_2", layout=tokens)
  np.testing.assert_allclose(
    jaxcam.legrad(tap, x, ids, upsample=False, score=type(module).legrad_score), data["last_ids"], rtol=1e-4, atol=1e-5
  )


def test_legrad_errors_and_explain_many(tv_vit, vit):
  module, variables, data = tv_vit
  x = jnp.asarray(data["x"])
  with pytest.raises(ValueError, match=r"layout=jaxcam.layouts.tokens"):
    jaxcam.legrad(jaxcam.linen_tap(module, variables, "conv_proj"), x)
  with pytest.raises(ValueError, match="No nn.MultiHeadDotProductAttention ran inside"):
    jaxcam.legrad(jaxcam.linen_tap(module, variables, "layers_2/ln_2", layout=jaxcam.layouts.tokens()), x)
  vit_module, vit_variables, vx = vit
  with pytest.raises(ValueError, match="define a method `legrad_score`"):
    jaxcam.legrad(jaxcam.linen_tap(vit_module, vit_variables, "block1", layout=jaxcam.layouts.tokens()), vx)
  # explain_many(None) runs the rows that apply: LeGrad on linen token taps only (test_contract runs explain_many)
  legrad = jaxcam.get_method("legrad")
  assert legrad.applies(jaxcam.linen_tap(module, variables, "layers_1", layout=jaxcam.layouts.tokens()))
  assert not legrad.applies(jaxcam.linen_tap(module, variables, "conv_proj"))
  assert not legrad.applies(jaxcam.linen_tap(module, variables, "layers_1", layout=jaxcam.layouts.tokens(),
                                             where="input"))  # fmt: skip


# ------------------------------------------------------------------------------------------------ capture filters


def test_layer_filters_resolve_to_one_path_and_list_layers_reads_capture_intermediates(vit):
  module, variables, x = vit
  pick_block1 = lambda mdl, name: isinstance(mdl, Block) and mdl.name == "block1"
  tap = jaxcam.linen_tap(module, variables, pick_block1, example=x, layout=jaxcam.layouts.tokens())
  assert tap.layer == "block1"
  by_path = jaxcam.linen_tap(module, variables, "block1", layout=jaxcam.layouts.tokens())
  np.testing.assert_allclose(jaxcam.gradcam(tap, x), jaxcam.gradcam(by_path, x), atol=1e-6)
  multi = jaxcam.linen_tap(
    module, variables, ["block0", pick_block1], example=jax.ShapeDtypeStruct(x.shape, x.dtype),
    layout=jaxcam.layouts.tokens(),
  )  # fmt: skip
  assert multi.layer == ("block0", "block1")
  with pytest.raises(ValueError, match=r"exactly one submodule __call__ .* it selects 2: block0, block1"):
    jaxcam.linen_tap(module, variables, lambda mdl, name: isinstance(mdl, Block), example=x)
  with pytest.raises(ValueError, match="pass `example=`"):
    jaxcam.linen_tap(module, variables, pick_block1)
  # list_layers: shapes from Flax's capture_intermediates, call order and types from the calls, a layout hint
  infos = {i.path: i for i in jaxcam.list_layers(module, variables, x)}
  assert list(infos)[:2] == ["embed", "block0"]
  assert infos["block0"].shape == (2, 17, 16) and infos["block0"].type == "Block"
  assert infos["block0"].layout.startswith("tokens(prefix=1)") and infos["embed"].layout == "grid (default)"
  assert infos["head"].layout == "no spatial axes" and "tokens(prefix=1)" in str(infos["block0"])
  _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  assert infos["block1/MultiHeadDotProductAttention_0"].shape == (
    state["intermediates"]["block1"]["MultiHeadDotProductAttention_0"]["__call__"][0].shape
  )


def test_a_module_called_once_per_scan_step_is_listed_as_such():
  class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
      body = nn.scan(lambda m, c, _: (m(c), None), variable_broadcast="params", split_rngs={"params": False}, length=3)
      y, _ = body(nn.Dense(4, name="step"), x, None)
      return nn.Dense(2, name="out")(y)

  x = jnp.ones((2, 4))
  module = Scanned()
  variables = module.init(jax.random.key(0), x)
  infos = {i.path: i for i in jaxcam.list_layers(module, variables, x)}
  assert infos["out"].calls == 1 and infos["out"].shape == (2, 2)
  assert "step" in infos and "not tappable" not in str(infos["out"])


# ------------------------------------------------------------------------------------------------ Equinox


def test_equinox_cnn_through_function_tap():
  eqx = pytest.importorskip("equinox")

  class EqxCNN(eqx.Module):
    conv1: Any
    conv2: Any
    fc: Any

    def __init__(self, key):
      k1, k2, k3 = jax.random.split(key, 3)
      self.conv1 = eqx.nn.Conv2d(3, 6, 3, padding=1, key=k1)
      self.conv2 = eqx.nn.Conv2d(6, 8, 3, stride=2, padding=1, key=k2)
      self.fc = eqx.nn.Linear(8, 4, key=k3)

    def features(self, x):  # one image, channels-first (3, H, W) -> (8, h, w)
      return jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))

    def head(self, a):
      return self.fc(jnp.mean(a, axis=(1, 2)))  # a channels-first global average pool

  model = EqxCNN(jax.random.key(0))
  params, static = eqx.partition(model, eqx.is_array)

  def body(p, x):  # x (B, 3, H, W): input_layout="NCHW" hands the model channels-first pixels
    return jax.vmap(eqx.combine(p, static).features)(x)

  def head(p, x, a):
    del x
    return jax.vmap(eqx.combine(p, static).head)(a)

  # the layer is (B, C, h, w): layouts.channels_first() moves it to channels-last and back
  tap = jaxcam.function_tap(body, head, params, layout=jaxcam.layouts.channels_first(), input_layout="NCHW")
  x = jax.random.uniform(jax.random.key(1), (2, 12, 12, 3))
  ids = np.array([0, 3])
  cf = jnp.moveaxis(x, -1, 1)
  a = np.asarray(body(params, cf))  # (B, 8, 6, 6)
  g = np.asarray(jax.grad(lambda t: jnp.sum(head(params, cf, t)[jnp.arange(2), ids]))(jnp.asarray(a)))
  by_hand = np.maximum(np.einsum("bc,bchw->bhw", g.mean(axis=(2, 3)), a), 0)
  np.testing.assert_allclose(jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False), by_hand, atol=1e-6)
  # CAM from the Linear layer's weight, and the structured exact derivatives through the channels-first mean
  cam = jaxcam.cam(tap, x, ids, fc=model.fc.weight.T, normalize=False, upsample=False)
  np.testing.assert_allclose(cam, by_hand * 36, rtol=1e-4, atol=1e-5)
  assert jaxcam.derivatives.enters_only_through_spatial_sum(lambda t: tap.head(x, t), jnp.moveaxis(a, 1, -1))
  exact = jaxcam.gradcam_pp(tap, x, ids, derivatives="exact")
  generic = jaxcam.gradcam_pp(tap, x, ids, derivatives="exact", strategy="generic")
  np.testing.assert_allclose(exact, generic, atol=1e-5)
  # a reshape_transform-style function works too (perturbations mapped back through its transpose)
  fn_tap = jaxcam.function_tap(body, head, params, layout=lambda v: jnp.moveaxis(v, 1, -1), input_layout="NCHW")
  np.testing.assert_allclose(jaxcam.gradcam(fn_tap, x, ids), jaxcam.gradcam(tap, x, ids), atol=1e-6)


# ------------------------------------------------------------------------------------------------ an nnx ViT


def test_nnx_vit_tokens_match_a_hand_split_and_auto_detection():
  from flax import nnx

  class NnxBlock(nnx.Module):
    def __init__(self, dim, rngs):
      self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=dim, decode=False, rngs=rngs)
      self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
      self.mlp = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
      y = self.norm1(x)
      x = x + self.attn(y, y)
      return x + self.mlp(nnx.gelu(self.norm2(x)))

  class NnxViT(nnx.Module):
    def __init__(self, rngs, dim=16):
      self.embed = nnx.Conv(3, dim, (4, 4), strides=4, rngs=rngs)
      self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)) * 0.02)
      self.blocks = nnx.List([NnxBlock(dim, rngs) for _ in range(2)])
      self.norm = nnx.LayerNorm(dim, rngs=rngs)
      self.head = nnx.Linear(dim, 5, rngs=rngs)

    def tokens(self, x):
      t = self.embed(x).reshape(x.shape[0], -1, self.cls.shape[-1])
      return jnp.concatenate([jnp.broadcast_to(self.cls[...], (x.shape[0], 1, t.shape[-1])), t], axis=1)

    def __call__(self, x):
      t = self.tokens(x)
      for b in self.blocks:
        t = b(t)
      return self.head(self.norm(t)[:, 0])  # the head reads CLS

  model = NnxViT(nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  ids = np.array([1, 4])
  tap = jaxcam.nnx_tap(model, "blocks/1/norm1", layout=jaxcam.layouts.tokens(prefix=1))
  maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)

  # by hand: the network split at blocks[1].norm1 (its output y feeds the attention; x0 is the residual)
  last = model.blocks[1]
  x0 = model.blocks[0](model.tokens(x))
  y = np.asarray(last.norm1(x0))

  def logits_from(y):
    t = x0 + last.attn(y, y)
    t = t + last.mlp(nnx.gelu(last.norm2(t)))
    return model.head(model.norm(t)[:, 0])

  g = np.asarray(jax.grad(lambda y: jnp.sum(logits_from(y)[jnp.arange(2), ids]))(jnp.asarray(y)))
  patches, gp = y[:, 1:], g[:, 1:]
  by_hand = np.maximum(np.sum(gp.mean(axis=1, keepdims=True) * patches, axis=-1), 0).reshape(2, 4, 4)
  np.testing.assert_allclose(maps, by_hand, rtol=1e-4, atol=1e-6)
  # the auto-detection picks the same layer: after it, only CLS reaches the head
  layer, layout, _ = jaxcam.find_layer(model, x, ids)
  assert layer == "blocks/1/norm1" and layout == jaxcam.layouts.tokens(prefix=1)
