"""`explain_model` for any head (issue 27 item 3 and 5): train flags, dict and ModelOutput outputs, embeddings,
segmentation, sequences and volumes, out-of-range ids and PyTorch objects. Each model is small; each check compares
what `explain_model` reports with a direct call of the model (or a tap built by hand)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from jaxcam import targets


class BNNet(nn.Module):
  """A convnet with BatchNorm and a required `train` flag (as in the Flax examples)."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(6, (3, 3), name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv2")(x))
    return nn.Dense(5, name="head")(jnp.mean(x, axis=(1, 2)))


class Heads(nn.Module):
  """A dict of heads: class scores and an auxiliary regression."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv")(x))
    pooled = jnp.mean(x, axis=(1, 2))
    return {"logits": nn.Dense(4, name="cls")(pooled), "aux": nn.Dense(1, name="reg")(pooled)}


@flax.struct.dataclass
class Output:
  logits: jax.Array
  hidden: jax.Array


class WithOutput(nn.Module):
  """Returns a ModelOutput-like dataclass with `.logits`."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), name="conv")(x))
    return Output(nn.Dense(3, name="cls")(jnp.mean(h, axis=(1, 2))), h)


class Embedder(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), strides=2, name="conv")(x))
    return nn.Dense(6, name="proj")(jnp.mean(x, axis=(1, 2)))


class Seg(nn.Module):
  """A tiny encoder-decoder whose output is a per-pixel map (B, H, W, K)."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(8, (3, 3), strides=2, name="down")(x))
    h = jax.image.resize(h, (h.shape[0], x.shape[1], x.shape[2], h.shape[3]), "nearest")
    h = nn.relu(nn.Conv(8, (3, 3), name="up")(h))
    return nn.Conv(3, (1, 1), name="out")(h)


class Seq(nn.Module):
  """A 1-D convnet over (B, L, C) sequences."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(6, (5,), name="conv1")(x))
    x = nn.relu(nn.Conv(8, (3,), strides=2, name="conv2")(x))
    return nn.Dense(3, name="head")(jnp.mean(x, axis=1))


class Vol(nn.Module):
  """A 3-D convnet over (B, D, H, W, C) volumes."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3, 3), strides=2, name="conv")(x))
    return nn.Dense(2, name="head")(jnp.mean(x, axis=(1, 2, 3)))


def _init(module, x, **kw):
  return module.init(jax.random.key(0), x, **kw)


@pytest.fixture(scope="module")
def photos():
  """uint8 photos: explain_model decodes images to uint8, so the model sees exactly ``photos / 255``."""
  return np.random.default_rng(0).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)


def _x(photos):
  return jnp.asarray(photos.astype(np.float32) / 255.0)


def test_a_required_train_flag_is_set_false_and_said_so(photos):
  module = BNNet()
  variables = _init(module, _x(photos), train=False)
  ex = jaxcam.explain_model((module, variables), photos)
  want = module.apply(variables, _x(photos), train=False)
  np.testing.assert_allclose(np.asarray(ex.logits), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert any("train=False" in n for n in ex.notes), ex.notes
  assert ex.layer == "conv2"
  # the user's own value wins, and no note is made for it
  ex = jaxcam.explain_model((module, variables), photos, model_kwargs={"train": False}, layer="conv2")
  assert not ex.notes
  np.testing.assert_allclose(np.asarray(ex.logits), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_dict_outputs_need_output_and_then_read_it(photos):
  module = Heads()
  variables = _init(module, _x(photos))
  with pytest.raises(ValueError, match='output="logits"'):
    jaxcam.explain_model((module, variables), photos)
  ex = jaxcam.explain_model((module, variables), photos, output="logits", target=[1, 3])
  want = module.apply(variables, _x(photos))["logits"]
  np.testing.assert_allclose(np.asarray(ex.logits), np.asarray(want), rtol=1e-5, atol=1e-6)
  scores = np.asarray(ex.scores).reshape(2, -1)[:, 0]
  np.testing.assert_allclose(scores, np.asarray(want)[[0, 1], [1, 3]], rtol=1e-5, atol=1e-6)
  assert len(ex.top5) == 2 and len(ex.top5[0]) == 4  # class scores: the top classes (4 of them)
  # the regression head, explained as such: no top classes
  ex = jaxcam.explain_model((module, variables), photos, output="aux", target=targets.regression(0))
  assert ex.top5 == ()
  aux = module.apply(variables, _x(photos))["aux"][:, 0]
  np.testing.assert_allclose(np.asarray(ex.scores).reshape(2, -1)[:, 0], np.asarray(aux), rtol=1e-5, atol=1e-6)


def test_a_model_output_with_logits_suggests_output_logits(photos):
  module = WithOutput()
  variables = _init(module, _x(photos))
  with pytest.raises(ValueError, match=r'Output with fields.*output="logits"'):
    jaxcam.explain_model((module, variables), photos)
  ex = jaxcam.explain_model((module, variables), photos, output="logits", layer="conv")
  np.testing.assert_allclose(
    np.asarray(ex.logits), np.asarray(module.apply(variables, _x(photos)).logits), rtol=1e-5, atol=1e-6
  )


def test_an_embedding_is_explained_by_similarity_without_top5(photos):
  module = Embedder()
  variables = _init(module, _x(photos))
  ref = np.random.default_rng(1).normal(size=6).astype(np.float32)
  ex = jaxcam.explain_model((module, variables), photos, target=targets.similarity(ref))
  emb = np.asarray(module.apply(variables, _x(photos)), np.float64)
  cosine = emb @ ref / (np.linalg.norm(emb, axis=1) * np.linalg.norm(ref))
  np.testing.assert_allclose(np.asarray(ex.scores).reshape(2, -1)[:, 0], cosine, rtol=1e-4, atol=1e-5)
  assert ex.top5 == ()
  assert np.isfinite(np.asarray(ex.maps)).all() and np.asarray(ex.maps).shape == (2, 12, 12)


def test_class_ids_out_of_range_are_named_as_such(photos):
  module = Embedder()
  variables = _init(module, _x(photos))
  with pytest.raises(ValueError, match=r"class ids must be in \[0, 6\).*got \[9\]"):
    jaxcam.explain_model((module, variables), photos, target=9)


@pytest.mark.slow
def test_segmentation_skips_the_output_layer(photos):
  module = Seg()
  variables = _init(module, _x(photos))
  with pytest.raises(ValueError, match="segmentation"):
    jaxcam.explain_model((module, variables), photos)  # a class id on a per-pixel output
  mask = np.zeros((2, 12, 12), bool)
  mask[:, 2:6, 3:9] = True
  ex = jaxcam.explain_model((module, variables), photos, target=targets.segmentation(1, mask))
  assert ex.layer == "up", ex.layer_reason  # not "out", the output convolution
  out = np.asarray(module.apply(variables, _x(photos)))
  scores = np.asarray(ex.scores).reshape(2, -1)[:, 0]
  np.testing.assert_allclose(scores, (out[..., 1] * mask).sum(axis=(1, 2)), rtol=1e-4)
  assert ex.top5 == ()


def test_sequences_are_explained_with_spatial_dims_1():
  module = Seq()
  x = np.random.default_rng(2).normal(size=(2, 20, 3)).astype(np.float32)  # negative values: not "normalized"
  variables = _init(module, jnp.asarray(x))
  ex = jaxcam.explain_model((module, variables), x, spatial_dims=1, target=[0, 2])
  assert ex.layer == "conv2" and np.asarray(ex.maps).shape == (2, 20)
  tap = jaxcam.linen_tap(module, variables, "conv2", input_layout="NLC")
  want = jaxcam.explain("gradcam", tap, jnp.asarray(x), target=np.array([0, 2]))
  np.testing.assert_allclose(np.asarray(ex.maps), np.asarray(want.maps), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(ex.logits), np.asarray(module.apply(variables, jnp.asarray(x))), rtol=1e-5, atol=1e-6
  )
  with pytest.raises(ValueError, match="overlays"):
    ex.overlays()


@pytest.mark.slow
def test_volumes_are_read_from_a_rank_5_array():
  module = Vol()
  x = np.random.default_rng(3).uniform(size=(1, 6, 8, 8, 1)).astype(np.float32)
  variables = _init(module, jnp.asarray(x))
  ex = jaxcam.explain_model((module, variables), x)
  assert ex.layer == "conv" and np.asarray(ex.maps).shape == (1, 6, 8, 8)
  tap = jaxcam.linen_tap(module, variables, "conv", input_layout="NDHWC")
  want = jaxcam.explain("gradcam", tap, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(ex.maps), np.asarray(want.maps), rtol=1e-5, atol=1e-6)


def test_a_batch_of_sequences_given_as_images_gets_a_hint_not_add_a_batch_axis():
  tap = jaxcam.linen_tap(Embedder(), _init(Embedder(), jnp.zeros((1, 8, 8, 3))), "conv")
  with pytest.raises(ValueError, match="input_layout='NLC'"):
    jaxcam.explain("gradcam", tap, jnp.zeros((2, 20, 3)))


class NnxNet(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 6, (3, 3), strides=2, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x, deterministic: bool):
    h = nnx.relu(self.conv(x))
    return self.head(self.drop(jnp.mean(h, axis=(1, 2)), deterministic=deterministic))


def test_an_nnx_call_with_a_required_deterministic_flag(photos):
  model = NnxNet(nnx.Rngs(0))
  ex = jaxcam.explain_model(model, photos)
  assert ex.layer == "conv" and any("deterministic=True" in n for n in ex.notes)
  np.testing.assert_allclose(
    np.asarray(ex.logits), np.asarray(model(_x(photos), deterministic=True)), rtol=1e-5, atol=1e-6
  )


def test_a_pytorch_object_is_told_what_to_do():
  Module = type("Module", (), {"__module__": "torch.nn.modules.module"})
  Fake = type("ViTForImageClassification", (Module,), {"__module__": "transformers.models.vit"})
  with pytest.raises(TypeError, match=r"PyTorch object.*transformers>=4.49,<5"):
    jaxcam.explain_model(Fake(), np.zeros((8, 8, 3), np.uint8))


class Pooled(nn.Module):
  """GAP + Dense through a full-window avg_pool (as Hugging Face ResNet's pooler), no `fc_layer` declared."""

  @nn.compact
  def __call__(self, x):
    a = nn.Conv(6, (3, 3), strides=2, name="conv")(x)  # CAM reads the layer the pooling reads
    pooled = nn.avg_pool(a, a.shape[1:3])[:, 0, 0]
    return nn.Dense(4, name="fc")(pooled)


def test_cam_reads_the_dense_kernel_from_a_head_that_declares_none(photos):
  module = Pooled()
  variables = _init(module, _x(photos))
  tap = jaxcam.linen_tap(module, variables, "conv")
  ex = jaxcam.explain("cam", tap, _x(photos), target=np.array([1, 3]), normalize=False, upsample=False, relu=False)
  _, state = module.apply(variables, _x(photos), capture_intermediates=True)
  a = np.asarray(state["intermediates"]["conv"]["__call__"][0])  # the conv's output: what the tap reads
  kernel = np.asarray(variables["params"]["fc"]["kernel"])
  want = np.einsum("bhwc,bc->bhw", a, kernel[:, [1, 3]].T)  # Zhou et al.: sum_c W[c, class] A_c
  np.testing.assert_allclose(np.asarray(ex.maps), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cam_on_hugging_face_resnet_equals_its_classifier_kernel():
  from transformers import FlaxResNetForImageClassification, ResNetConfig

  config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)
  hf = FlaxResNetForImageClassification(config, seed=0)
  images = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  opts = dict(normalize=False, upsample=False, relu=False, target=[1, 4])
  cam = jaxcam.explain_model(hf, images, method="cam", **opts)
  grad = jaxcam.explain_model(hf, images, method="gradcam", layer=cam.layer, **opts)
  h, w = np.asarray(cam.maps).shape[1:]
  # on GAP + Dense, Grad-CAM's weights are the kernel over h*w: CAM = h*w * Grad-CAM
  np.testing.assert_allclose(np.asarray(cam.maps), h * w * np.asarray(grad.maps), rtol=1e-4, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class Strict:
  """A frozen output that refuses anything but arrays (as Hugging Face 4.57's ModelOutput does when rebuilt)."""

  hidden: Any

  def __post_init__(self):
    if not hasattr(self.hidden, "dtype"):
      raise dataclasses.FrozenInstanceError(f"cannot assign {type(self.hidden).__name__} to field 'hidden'")


jax.tree_util.register_dataclass(Strict, data_fields=["hidden"], meta_fields=[])


class Encoder(nn.Module):
  @nn.compact
  def __call__(self, x):
    return Strict(nn.relu(nn.Conv(6, (3, 3), strides=2, name="conv")(x)))


class WithStrictOutputs(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="head")(Encoder(name="encoder")(x).hidden.mean(axis=(1, 2)))


def test_layers_returning_strict_output_objects_are_listed(photos):
  module = WithStrictOutputs()
  variables = _init(module, _x(photos))
  paths = [i.path for i in jaxcam.list_layers(module, variables, _x(photos))]
  assert paths == ["encoder", "encoder/conv", "head"], paths
  ex = jaxcam.explain_model((module, variables), photos)
  assert ex.layer == "encoder/conv"


def test_a_1d_taps_forward_and_metrics_take_sequences_as_the_user_has_them():
  module = Seq()
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 20, 3)), jnp.float32)
  variables = _init(module, x)
  tap = jaxcam.linen_tap(module, variables, "conv2", input_layout="NLC")
  logits = module.apply(variables, x)
  np.testing.assert_allclose(np.asarray(tap.forward(x)), np.asarray(logits), rtol=1e-5, atol=1e-6)
  maps = jaxcam.gradcam(tap, x)
  out = jaxcam.metrics.evaluate(tap, x, "gradcam", metrics=["avg_drop", "deletion", "road"], maps=maps)
  ids = np.argmax(np.asarray(logits), axis=1)
  y = np.asarray(logits)[[0, 1], ids]
  o = np.asarray(module.apply(variables, x * maps[..., None]))[[0, 1], ids]  # the score of the map-masked input
  np.testing.assert_allclose(out["avg_drop"], 100 * np.maximum(y - o, 0) / (y + 1e-7), rtol=1e-4, atol=1e-4)
  assert out["deletion"].shape == (2,) and np.isfinite(out["road"]).all()
  with pytest.raises(ValueError, match="re-run the method"):
    jaxcam.metrics.evaluate(tap, x, "gradcam", metrics=["adcc"], maps=maps)
