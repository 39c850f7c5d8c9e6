"""Beyond CNN classifiers (issue 14): targets for segmentation, detection, embeddings, regression and binary models
against pytorch-grad-cam (fixture section ``targets``), token layouts, output selectors and channels-first inputs."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import targets
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
  np.testing.assert_allclose(targets.regression(3)(jnp.asarray(d["logits"])), d["logits"][:, 3])


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


def _gradcam_by_hand(module, variables, x, layer, ids):
  """Grad-CAM on block tokens from a hand-split forward: capture the tokens, add a perturbation at that block by
  an interceptor written here, differentiate, drop CLS, reshape to 4x4, weight by the mean gradient."""
  _, state = module.apply(variables, x, capture_intermediates=lambda m, _: m.name == layer, mutable=["intermediates"])
  tokens = state["intermediates"][layer]["__call__"][0]

  def logits_with(delta):
    def icpt(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if context.module.name == layer and context.method_name == "__call__" else out

    with nn.intercept_methods(icpt):
      return module.apply(variables, x)

  g = jax.grad(lambda d: jnp.sum(logits_with(d)[jnp.arange(2), ids]))(jnp.zeros_like(tokens))
  a, g = np.asarray(tokens)[:, 1:].reshape(2, 4, 4, 16), np.asarray(g)[:, 1:].reshape(2, 4, 4, 16)
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
  np.testing.assert_allclose(jaxcam.scorecam(fn_tap, x, ids), jaxcam.scorecam(tap, x, ids), atol=1e-5)
  out, a = tap(x)
  np.testing.assert_allclose(tap.head(x, a), module.apply(variables, x), atol=1e-5)  # CLS kept downstream


def test_tuple_layers_dict_outputs_and_channels_first(vit):
  module, variables, x = vit
  ids = np.array([1, 3])
  expected = jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block1", layout=jaxcam.layouts.tokens()), x, ids)
  tup = TinyViT(as_tuple=True)
  with pytest.raises(ValueError, match=r"a tuple of 2.*layouts.pick"):
    jaxcam.gradcam(jaxcam.linen_tap(tup, variables, "block1", layout=jaxcam.layouts.tokens()), x, ids)
  picked = jaxcam.linen_tap(tup, variables, "block1", layout=jaxcam.layouts.pick(0, then=jaxcam.layouts.tokens()))
  np.testing.assert_allclose(jaxcam.gradcam(picked, x, ids), expected, atol=1e-6)
  np.testing.assert_allclose(jaxcam.scorecam(picked, x, ids)[0].shape, (16, 16))
  # a dict output: a static selector, so a second tap built the same way reuses the compiled program
  dicty = TinyViT(dict_output=True)
  build = lambda: jaxcam.linen_tap(dicty, variables, "block1", layout=jaxcam.layouts.tokens(), output="logits")
  np.testing.assert_allclose(jaxcam.gradcam(build(), x, ids), expected, atol=1e-6)
  before = jaxcam.api._explain_jit._cache_size()
  jaxcam.gradcam(build(), x, ids)
  assert jaxcam.api._explain_jit._cache_size() == before
  with pytest.raises(ValueError, match=r"`output='logit'`: No 'logit' in keys \['logits', 'features'\]"):
    jaxcam.gradcam(jaxcam.linen_tap(dicty, variables, "block1", layout=jaxcam.layouts.tokens(), output="logit"), x)
  # similarity to a reference embedding, read through output="features"
  emb = jaxcam.linen_tap(dicty, variables, "block1", layout=jaxcam.layouts.tokens(), output="features")
  ref = dicty.apply(variables, x[::-1])["features"][0]
  assert jaxcam.gradcam(emb, x, jaxcam.targets.similarity(ref)).shape == (2, 16, 16)
  # channels-first pixels: the tap transposes; x and the maps stay channels-last
  cf = jaxcam.linen_tap(
    TinyViT(channels_first=True), variables, "block1", layout=jaxcam.layouts.tokens(), input_layout="NCHW"
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
