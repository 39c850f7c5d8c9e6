"""Models we did not write: Hugging Face Flax (transformers 4.x) ViT / ResNet / BEiT and an Equinox CNN, each
checked against the model's own outputs or a hand split."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import reference
from tests.reference import gradcam_by_hand, patch_grid, value_and_grad_at


def _hf():
  return pytest.importorskip("transformers", reason="optional: pip install transformers==4.49 (Flax models)")


@pytest.mark.slow  # 18 s, for the default suite's budget: the slow tier checks the HF models
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
  by_hand = gradcam_by_hand(module, variables, x, layer, ids, logits=lambda out: out.logits)
  np.testing.assert_allclose(maps, by_hand, rtol=1e-4, atol=1e-6)
  # an encoder layer returns a tuple: refused with its fields listed, read with pick(0)
  with pytest.raises(ValueError, match="a tuple of 1"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "vit/encoder/layer/0", output="logits"), x, ids)
  picked = jaxcam.linen_tap(module, variables, "vit/encoder/layer/0", output="logits",
                            layout=jaxcam.layouts.pick(0, then=jaxcam.layouts.tokens()))  # fmt: skip
  assert np.isfinite(np.asarray(jaxcam.gradcam_pp(picked, x, ids))).all()


@pytest.mark.slow  # 26 s
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
  a, g = value_and_grad_at(module, variables, x, layer, hf_logits.argmax(-1), by_logits)
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
    tokens, g = value_and_grad_at(module, variables, x, layer, hf_logits.argmax(-1), by_logits)
  a, g = patch_grid(tokens), patch_grid(g)
  expected = reference.postprocess(reference.channel_map(reference.gradcam_w(a, g), a), (32, 32))
  assert maps.shape == (2, 32, 32) and expected.max() > 0.5
  np.testing.assert_allclose(maps, expected, atol=2e-4)


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
