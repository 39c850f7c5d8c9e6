"""`jaxcam.explain_model` and the layer auto-detection (`jaxcam.find_layer`)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from jaxcam import models as shipped
from jaxcam.taps import linen_aliases, parse_path
from tests import nets
from tests.nets import TinyViT


def _same_path(chosen: str, documented: str) -> bool:
  return chosen in linen_aliases(parse_path(documented))


@pytest.mark.parametrize(
  "name",  # Lite0's detection compiles 16 tapped layers (~35 s here): the slow tier runs the bigger ones
  ["resnet18"] + [pytest.param(n, marks=pytest.mark.slow) for n in shipped.MODELS if n != "resnet18"],
)
def test_auto_detection_chooses_the_shipped_default_layers(name):
  module = shipped.get_module(name)
  x = jax.random.uniform(jax.random.key(0), (1, 64, 64, 3))
  variables = module.init(jax.random.key(1), x)
  layer, layout, reason = jaxcam.find_layer((module, variables), x)
  assert _same_path(layer, module.default_layer), (layer, module.default_layer)
  assert layout is None and "spatial grid" in reason and repr(layer) in reason


def test_auto_detection_on_linen_nnx_and_vit_models(small_linen):
  module, variables, x = small_linen
  assert jaxcam.find_layer((module, variables), x)[0] == "body_2"  # the last grid before global pooling
  nnx_model = nets.ConvNetNnx(nnx.Rngs(0))
  assert jaxcam.find_layer(nnx_model, x)[0] == "body_2"
  # a ViT whose head reads only CLS: the blocks after the last attention give zero gradient at the patches, so the
  # last block's first LayerNorm is chosen (pytorch-grad-cam's blocks[-1].norm1); with mean pooling, the final norm
  vx = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  vit = TinyViT()
  vit_vars = vit.init(jax.random.key(1), vx)
  layer, layout, reason = jaxcam.find_layer((vit, vit_vars), vx)
  assert layer == "block1/LayerNorm_0" and layout == jaxcam.layouts.tokens(prefix=1)
  assert "zero gradient" in reason and "block1" in reason
  mean_vit = TinyViT(pool="mean")
  assert jaxcam.find_layer((mean_vit, mean_vit.init(jax.random.key(1), vx)), vx)[0] == "norm"


@pytest.mark.slow  # two Hugging Face models compiled (~37 s cold)
def test_auto_detection_on_hugging_face_resnet_and_vit():
  tf = pytest.importorskip("transformers", reason="optional: pip install 'transformers>=4.49,<5' (Flax models)")
  cfg = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=5)
  resnet = tf.FlaxResNetForImageClassification(cfg, seed=0, input_shape=(1, 32, 32, 3))
  images = [np.asarray(jax.random.uniform(jax.random.key(i), (40 + 8 * i, 36, 3))) for i in range(2)]
  ex = jaxcam.explain_model(resnet, images, size=32)
  assert ex.layer == "resnet/encoder/stages/1" and ex.maps.shape == (2, 32, 32)
  assert [m.shape for m in ex.image_maps()] == [(40, 36), (48, 36)]
  cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=3, id2label={0: "cat", 1: "dog", 2: "tabby"},
                     label2id={"cat": 0, "dog": 1, "tabby": 2})  # fmt: skip
  vit = tf.FlaxViTForImageClassification(cfg, seed=0)
  ex = jaxcam.explain_model(vit, images, target="tabby")
  # queries/keys/values inside the attention module are skipped; the last block's layernorm_before remains
  assert ex.layer == "vit/encoder/layer/1/layernorm_before", ex.layer_reason
  np.testing.assert_array_equal(ex.target, [2, 2])
  assert ex.maps.shape == (2, 32, 32) and ex.top5[0][0]["name"] in ("cat", "dog", "tabby")
  # the model's own normalization ((x - 0.5) / 0.5, its image processor's) is applied inside the tap
  x = jnp.asarray(np.stack([jaxcam.autoexplain._resize(jaxcam.models.to_uint8_rgb(i), (32, 32)) for i in images]))
  logits = vit(jnp.moveaxis((x / 255.0 - 0.5) / 0.5, -1, 1)).logits
  np.testing.assert_allclose(ex.logits, logits, atol=1e-5)
  with pytest.raises(KeyError, match="Closest: 'tabby'"):
    jaxcam.explain_model(vit, images, target="tabbby")


@pytest.mark.fast
def test_explain_model_inputs_result_and_writers(small_linen, tmp_path):
  from PIL import Image

  module, variables, _ = small_linen
  rng = np.random.default_rng(0)
  path = tmp_path / "photo.png"
  Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(path)
  pil = Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8))
  gray16 = rng.integers(0, 65535, (18, 14), np.uint16)  # 16-bit grayscale: scaled by depth
  floats = rng.random((12, 12, 3)).astype(np.float32)
  ex = jaxcam.explain_model((module, variables), [str(path), pil, gray16, floats], size=12, method="gradcam++")
  assert isinstance(ex, jaxcam.Explanation) and ex.method == "gradcam_pp" and ex.layer == "body_2"
  assert ex.names == ("photo", "image_1", "image_2", "image_3") and ex.maps.shape == (4, 12, 12)
  assert [o.shape for o in ex.overlays()] == [(20, 30, 3), (16, 16, 3), (18, 14, 3), (12, 12, 3)]
  # the maps equal an explicit explain on the same resized pixels at the chosen layer
  x = np.stack([jaxcam.autoexplain._resize(im, (12, 12)) for im in ex.images]).astype(np.float32) / 255.0
  tap = jaxcam.linen_tap(module, variables, "body_2")
  np.testing.assert_allclose(ex.maps, jaxcam.gradcam_pp(tap, jnp.asarray(x)), atol=1e-6)
  assert ex.images[2].shape == (18, 14, 3) and ex.images[2][0, 0, 0] == round(int(gray16[0, 0]) * 255 / 65535)
  written = ex.save(tmp_path / "a")
  again = ex.save(tmp_path / "b")
  assert [os.path.basename(p) for p in written] == [
    "photo.png", "image_1.png", "image_2.png", "image_3.png", "maps.npz", "explanation.json"
  ]  # fmt: skip
  for p, q in zip(written, again):
    assert open(p, "rb").read() == open(q, "rb").read(), p
  fig = ex.show()
  assert len(fig.axes) == 8
  # an explicit layer overrides; class names need a labelled model; bad input is named
  assert jaxcam.explain_model((module, variables), floats, layer="body_1").layer == "body_1"
  with pytest.raises(ValueError, match="has no class names"):
    jaxcam.explain_model((module, variables), floats, target="cat")
  with pytest.raises(ValueError, match=r"NaN or Inf \(image 0\)"):
    jaxcam.explain_model((module, variables), [np.full((8, 8, 3), np.nan, np.float32)])
  with pytest.raises(TypeError, match="function_tap"):
    jaxcam.explain_model(lambda x: x, floats)
  with pytest.raises(ValueError, match="no packaged weights"):
    jaxcam.explain_model("resnet18", floats)


@pytest.mark.slow
def test_explain_model_by_shipped_name_on_real_photos():
  photos = shipped.sample_images(["chelsea", "coffee"])
  ex = jaxcam.explain_model("efficientnet_lite0", list(photos.values()))
  assert ex.layer == "head" and [t[0]["name"] for t in ex.top5] == ["Egyptian cat", "espresso"]
  assert "default layer" in ex.layer_reason  # declared, no detection pass; and the detection agrees:
  assert (
    jaxcam.find_layer(shipped.efficientnet_lite0(pretrained=True), shipped.preprocess(list(photos.values())))[0]
    == "head"
  )
  assert [m.shape for m in ex.image_maps()] == [p.shape[:2] for p in photos.values()]
  tap = jaxcam.linen_tap(*shipped.efficientnet_lite0(pretrained=True))
  np.testing.assert_allclose(ex.maps, jaxcam.gradcam(tap, shipped.preprocess(list(photos.values()))), atol=1e-5)
  assert np.asarray(jaxcam.explain_model("efficientnet_lite0", photos["chelsea"], target="tabby").target) == 281


@pytest.mark.fast
def test_no_spatial_layer_is_a_clear_error_listing_the_layers():
  import flax.linen as nn

  class Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3, name="out")(nn.relu(nn.Dense(8, name="hidden")(x.reshape(x.shape[0], -1))))

  x = jnp.ones((1, 8, 8, 3))
  variables = Mlp().init(jax.random.key(0), x)
  with pytest.raises(ValueError, match=r"No layer of Mlp has a spatial output.*hidden \(1, 8\)"):
    jaxcam.find_layer((Mlp(), variables), x)


@pytest.mark.fast
def test_input_norm_is_the_inputs_and_normalize_the_maps(small_linen, tmp_path):
  """One name, one meaning: ``input_norm=(mean, std)`` normalizes the pixels inside the model, ``normalize`` is the
  map's min-max as in jaxcam.explain; ``normalize=(mean, std)`` still works, deprecated, with the same checks."""
  module, variables, _ = small_linen
  images = np.random.default_rng(1).integers(0, 255, (2, 12, 12, 3), np.uint8)
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  x = (images.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  tap = jaxcam.linen_tap(module, variables, "body_2")
  ex = jaxcam.explain_model((module, variables), images, layer="body_2", input_norm=(mean, std), target=[1, 2])
  np.testing.assert_allclose(ex.maps, jaxcam.gradcam(tap, jnp.asarray(x), target=[1, 2]), atol=1e-5)
  raw = jaxcam.explain_model((module, variables), images, layer="body_2", input_norm=(mean, std), normalize=False)
  expected = jaxcam.gradcam(tap, jnp.asarray(x), target=np.asarray(raw.target), normalize=False)
  np.testing.assert_allclose(raw.maps, expected, rtol=1e-5, atol=1e-6)
  assert np.abs(np.max(raw.maps, axis=(1, 2)) - 1.0).min() > 0.1  # not min-max normalized (a peak of 1 each)
  with pytest.warns(DeprecationWarning, match=r"input_norm=\(mean, std\)"):
    old = jaxcam.explain_model((module, variables), images, layer="body_2", normalize=(mean, std), target=[1, 2])
  np.testing.assert_allclose(old.maps, ex.maps, atol=1e-6)
  with pytest.raises(ValueError, match="Expected `input_norm` as \\(mean, std\\)"):
    jaxcam.explain_model((module, variables), images, input_norm=(1, 2, 3))
  with pytest.raises(ValueError, match="positive std in `normalize`"), pytest.warns(DeprecationWarning):
    jaxcam.explain_model((module, variables), images, normalize=(mean, (0.1, 0.0, 0.1)))
  with pytest.raises(ValueError, match="once, as `input_norm=`"):
    jaxcam.explain_model((module, variables), images, input_norm=(mean, std), normalize=(mean, std))


@pytest.mark.fast
def test_a_folder_is_read_by_the_same_extensions_as_the_cli(tmp_path):
  """One list of image extensions: a .ppm in a folder is an image for explain_model as for `jaxcam explain`."""
  from PIL import Image

  from jaxcam import cli

  Image.fromarray(np.full((6, 5, 3), 200, np.uint8)).save(tmp_path / "frame.ppm")
  (tmp_path / "notes.txt").write_text("not an image")
  images, names = jaxcam.autoexplain.load_images(str(tmp_path))
  assert names == ["frame"] and images[0].shape == (6, 5, 3)
  assert [os.path.basename(f) for f in cli.collect_images([str(tmp_path)])] == ["frame.ppm"]


@pytest.mark.fast
def test_save_gives_every_input_its_own_file(small_linen, tmp_path):
  """Stems that collide across folders and suffixes (and letter case) still give one overlay file per input."""
  import dataclasses
  import json

  from PIL import Image

  module, variables, _ = small_linen
  rng = np.random.default_rng(0)
  paths = []
  for sub, name in (("a", "cat.png"), ("b", "cat.jpg"), ("c", "cat_1.png"), ("d", "Cat.png")):
    (tmp_path / sub).mkdir()
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(tmp_path / sub / name)
    paths.append(str(tmp_path / sub / name))
  ex = jaxcam.explain_model((module, variables), paths, size=12)
  written = ex.save(tmp_path / "out")
  pngs = [p for p in written if p.endswith(".png")]
  assert len({os.path.basename(p).lower() for p in pngs}) == 4, pngs
  for p, overlay in zip(pngs, ex.overlays()):  # each file holds its own input's overlay
    np.testing.assert_array_equal(np.asarray(Image.open(p)), overlay)
  meta = json.loads((tmp_path / "out" / "explanation.json").read_text())
  assert [i["file"] for i in meta["images"]] == [os.path.basename(p) for p in pngs]
  # names that would leave the folder or clash by case: still inside it, still one file each
  odd = dataclasses.replace(ex, names=("../up", "x", "X", ""))
  pngs = [p for p in odd.save(tmp_path / "odd") if p.endswith(".png")]
  assert all(os.path.dirname(os.path.abspath(p)) == str(tmp_path / "odd") for p in pngs), pngs
  assert len({os.path.basename(p).lower() for p in pngs}) == 4 and not (tmp_path / "up.png").exists()


@pytest.mark.fast
def test_loaded_image_names_are_distinct(tmp_path):
  """Stems that collide across folders and suffixes, and a stem that looks like a de-duplicated one, keep distinct
  names (a/cat.png, b/cat.jpg, c/cat_1.png were cat, cat_1, cat_1)."""
  from PIL import Image

  paths = []
  for sub, name in (("a", "cat.png"), ("b", "cat.jpg"), ("c", "cat_1.png"), ("d", "cat.png")):
    (tmp_path / sub).mkdir()
    Image.fromarray(np.full((4, 4, 3), len(paths), np.uint8)).save(tmp_path / sub / name)
    paths.append(str(tmp_path / sub / name))
  images, names = jaxcam.autoexplain.load_images(paths)
  assert len(set(names)) == 4 and names[0] == "cat", names
  assert [int(im[0, 0, 0]) for im in images] == [0, 1, 2, 3]  # still in input order
