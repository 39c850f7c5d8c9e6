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
  return pytest.importorskip("transformers", reason='optional: pip install "transformers>=4.49,<5" (Flax models)')


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


# ------------------------------------------------------------- Hugging Face: BatchNorm variables, docs/huggingface.md

TINY_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64)  # fmt: skip
TINY_CONV = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
OPENAI_CLIP_NORM = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # CLIP's processor


def hf_variables(hf):
  """The variables docs/huggingface.md builds: ResNet/RegNet's params already hold "params" and "batch_stats"."""
  return dict(hf.params) if "params" in hf.params else {"params": hf.params}


@pytest.mark.slow  # two BatchNorm models compiled (~15 s)
def test_hugging_face_batchnorm_models_take_their_params_as_the_variables():
  """Flax ResNet and RegNet keep BatchNorm statistics: `hf.params` is already ``{"params", "batch_stats"}``; wrapped
  once more Flax refuses it. With the documented variables the tap's logits are the model's own (its public NCHW
  call, running statistics) and Grad-CAM equals the numpy formula on A and dS/dA read without jaxcam."""
  tf = _hf()
  from flax.errors import ApplyScopeInvalidVariablesStructureError

  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  models = {
    "resnet": tf.FlaxResNetForImageClassification(tf.ResNetConfig(**TINY_CONV, layer_type="basic"), seed=0,
                                                  input_shape=(1, 32, 32, 3)),
    "regnet": tf.FlaxRegNetForImageClassification(tf.RegNetConfig(**TINY_CONV, groups_width=4), seed=0,
                                                  input_shape=(1, 32, 32, 3)),
  }  # fmt: skip
  for name, hf in models.items():
    assert set(hf.params) == {"params", "batch_stats"}, name
    variables = hf_variables(hf)
    assert variables.keys() == {"params", "batch_stats"}
    layer = f"{name}/encoder/stages/{len(hf.config.depths) - 1}"
    with pytest.raises(ApplyScopeInvalidVariablesStructureError, match="extra params layer"):
      jaxcam.linen_tap(hf.module, {"params": hf.params}, layer, output="logits").forward(x)
    tap = jaxcam.linen_tap(hf.module, variables, layer, output="logits")
    hf_logits = np.asarray(hf(jnp.moveaxis(x, -1, 1)).logits)
    np.testing.assert_allclose(tap.forward(x), hf_logits, rtol=1e-5, atol=1e-5, err_msg=name)
    ids = hf_logits.argmax(-1)
    a, g = value_and_grad_at(hf.module, variables, x, layer, ids, lambda out: out.logits)
    by_hand = np.maximum(reference.channel_map(reference.gradcam_w(a, g), a), 0)
    assert (by_hand.max(axis=(1, 2)) > 0).all(), name  # no degenerate all-zero map
    maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)
    np.testing.assert_allclose(maps, by_hand, rtol=1e-4, atol=1e-6, err_msg=name)
  # a model without BatchNorm: its params are the "params" collection itself
  vit = tf.FlaxViTForImageClassification(tf.ViTConfig(**TINY_VIT, num_labels=5), seed=0)
  assert "params" not in vit.params and list(hf_variables(vit)) == ["params"]


def lively(hf, std=0.2):
  """`hf` with every parameter redrawn from N(0, std): at Hugging Face's initialization (std 0.01-0.02) a small
  ViT's or CLIP's output hardly depends on the image, so a wrong normalization would go unnoticed (std 0.2: a mean
  of 0.5 instead of CLIP's moves the similarities by ~2e-2)."""
  leaves, tree = jax.tree.flatten(hf.params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  hf.params = jax.tree.unflatten(tree, [std * jax.random.normal(k, v.shape, v.dtype) for k, v in zip(keys, leaves)])
  return hf


def offline_transformers(tf):
  """`transformers` as docs/huggingface.md uses it, offline: each `from_pretrained` it calls builds a small random
  model (or a small CLIP image processor, or a tokenizer stand-in); everything else is the real module."""
  import types

  clip = tf.CLIPConfig(
    text_config=dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16),
    vision_config=TINY_VIT, projection_dim=16)  # fmt: skip

  def tokenizer(texts, return_tensors):
    assert return_tensors == "np"
    return {"input_ids": np.tile([[1, 5, 7, 2]], (len(texts), 1)), "attention_mask": np.ones((len(texts), 4), int)}

  tiny = {
    "FlaxViTForImageClassification": lambda: lively(tf.FlaxViTForImageClassification(
      tf.ViTConfig(**TINY_VIT, num_labels=5), seed=0)),
    "FlaxResNetForImageClassification": lambda: tf.FlaxResNetForImageClassification(
      tf.ResNetConfig(**TINY_CONV, layer_type="basic"), seed=0, input_shape=(1, 32, 32, 3)),
    "FlaxCLIPModel": lambda: lively(tf.FlaxCLIPModel(clip, seed=0)),
    "FlaxCLIPVisionModel": lambda: lively(tf.FlaxCLIPVisionModel(clip.vision_config, seed=0)),
    "CLIPImageProcessor": lambda: tf.CLIPImageProcessor(size={"shortest_edge": 32},
                                                        crop_size={"height": 32, "width": 32}),
    "CLIPTokenizer": lambda: tokenizer,
  }  # fmt: skip

  class Offline(types.ModuleType):
    def __getattr__(self, name):
      if name in tiny:
        return types.SimpleNamespace(from_pretrained=lambda repo, **kw: tiny[name]())
      return getattr(tf, name)

  return Offline("transformers")


def python_blocks(path: str) -> list[str]:
  import re

  with open(path, encoding="utf-8") as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)


def _pixels(files, size, norm):
  """What explain_model feeds the model, computed here: PIL's bilinear resize of the decoded files, the processor's
  normalization, channels-first for the Hugging Face wrapper (its public call)."""
  from PIL import Image

  bilinear = Image.Resampling.BILINEAR
  x = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), bilinear)) for f in files])
  x = (x / 255.0 - np.asarray(norm[0])) / np.asarray(norm[1])
  return jnp.asarray(np.moveaxis(x, -1, 1), jnp.float32)


def _cosine(u, v):
  u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
  return (u @ v) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v))


@pytest.mark.slow  # runs every python block of docs/huggingface.md on small random models (~60 s)
def test_hugging_face_docs_snippets_run_and_mean_what_they_say(tmp_path, monkeypatch):
  """docs/huggingface.md's python blocks, executed in order in one namespace with `transformers` answering
  `from_pretrained` offline; after each, what it computed is checked against the Hugging Face model's own call."""
  import os
  import sys

  from PIL import Image

  tf = _hf()
  root = os.path.join(os.path.dirname(__file__), os.pardir)
  blocks = python_blocks(os.path.join(root, "docs", "huggingface.md"))
  assert len(blocks) == 5, "update this test with the page: one check per python block"
  monkeypatch.setitem(sys.modules, "transformers", offline_transformers(tf))
  monkeypatch.chdir(tmp_path)
  rng = np.random.default_rng(0)
  files = ["cat.jpg", "dog.jpg"]
  for f, shape in zip(files, [(40, 48, 3), (36, 30, 3)]):
    Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(f)
  ns: dict = {}
  # 1. explain_model on a ViT: its image size, its processor's normalization, its logits, the layer the page names
  exec(blocks[0], ns)
  ex, hf = ns["ex"], ns["hf"]
  assert ex.layer == "vit/encoder/layer/1/layernorm_before" and ex.maps.shape == (2, 32, 32)
  np.testing.assert_allclose(ex.logits, hf(_pixels(files, 32, ((0.5,) * 3, (0.5,) * 3))).logits, atol=1e-5)
  assert os.path.exists(tmp_path / "out" / "maps.npz")
  # 2. ResNet's variables and tap: the model's own logits, Grad-CAM by hand through pytorch-grad-cam's pipeline
  exec(blocks[1], ns)
  tap, x, hf = ns["tap"], ns["x"], ns["hf"]
  assert ns["variables"].keys() == {"params", "batch_stats"} and x.shape == (2, 224, 224, 3)
  hf_logits = np.asarray(hf(jnp.moveaxis(x, -1, 1)).logits)
  np.testing.assert_allclose(tap.forward(x), hf_logits, rtol=1e-5, atol=1e-5)
  a, g = value_and_grad_at(hf.module, ns["variables"], x, ns["layer"], hf_logits.argmax(-1), lambda out: out.logits)
  expected = reference.postprocess(reference.channel_map(reference.gradcam_w(a, g), a), (224, 224))
  np.testing.assert_allclose(ns["maps"], expected, atol=2e-4)
  # 3. a ViT tap on token layers
  exec(blocks[2], ns)
  vit, xv = ns["vit"], jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  np.testing.assert_allclose(ns["tap"].forward(xv), vit(jnp.moveaxis(xv, -1, 1)).logits, atol=1e-5)
  # 4. CLIP through model_method: the scores are cosine similarities of get_image_features to the text embedding
  exec(blocks[3], ns)
  clip, ex = ns["clip"], ns["ex"]
  assert ex.layer == "vision_model/encoder/layers/1/layer_norm1", ex.layer_reason
  image_features = clip.get_image_features(_pixels(files, 32, OPENAI_CLIP_NORM))
  np.testing.assert_allclose(ex.scores, _cosine(image_features, ns["text_embedding"]), atol=1e-5)
  # 5. CLIPVisionModel's pooler_output compared with another image's
  exec(blocks[4], ns)
  pooled = ns["vision"](_pixels(files, 32, OPENAI_CLIP_NORM)).pooler_output
  np.testing.assert_allclose(ns["ex"].scores, _cosine(pooled, ns["reference"]), atol=1e-5)


@pytest.mark.slow  # five small models, one find_layer pass each (~30 s)
def test_hugging_face_docs_layer_table_is_what_find_layer_picks():
  """docs/huggingface.md's table of auto-detected layers, row by row (CLIP's row: the snippet test above)."""
  import os
  import re

  tf = _hf()
  with open(os.path.join(os.path.dirname(__file__), os.pardir, "docs", "huggingface.md"), encoding="utf-8") as f:
    rows = dict(re.findall(r"^\| (ViT|BEiT|DINOv2|ResNet|RegNet)\b[^|]*\| `([^`]+)`", f.read(), flags=re.MULTILINE))
  conv = dict(seed=0, input_shape=(1, 32, 32, 3))
  with jax.numpy_rank_promotion("allow"):  # BEiT's and DINOv2's layer scales broadcast (D,) against (B, N, D)
    models = {
      "ViT": tf.FlaxViTForImageClassification(tf.ViTConfig(**TINY_VIT, num_labels=5), seed=0),
      "BEiT": tf.FlaxBeitForImageClassification(tf.BeitConfig(**TINY_VIT, num_labels=5, use_mean_pooling=True), seed=0),
      "DINOv2": tf.FlaxDinov2ForImageClassification(tf.Dinov2Config(**TINY_VIT, num_labels=5), seed=0),
      "ResNet": tf.FlaxResNetForImageClassification(tf.ResNetConfig(**TINY_CONV, layer_type="basic"), **conv),
      "RegNet": tf.FlaxRegNetForImageClassification(tf.RegNetConfig(**TINY_CONV, groups_width=4), **conv),
    }
  assert rows.keys() == models.keys()
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
  for name, hf in models.items():
    expected = rows[name].replace("{L-1}", str(getattr(hf.config, "num_hidden_layers", 0) - 1))
    expected = expected.replace("{S-1}", str(len(getattr(hf.config, "depths", ())) - 1))
    with jax.numpy_rank_promotion("allow"):
      layer, layout, _ = jaxcam.find_layer(hf, x)
    assert layer == expected, name
    assert layout == (jaxcam.layouts.tokens(prefix=1) if name in ("ViT", "BEiT", "DINOv2") else None), name
