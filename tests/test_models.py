"""Shipped models: real EfficientNet-Lite0 logits vs timm, top-1 on photos, converters vs torchvision."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import models
from tests import reference
from tests.conftest import FIXTURES
from tests.seeded import seeded_state_dict


@pytest.fixture(scope="session")
def lite0():
  return models.efficientnet_lite0(pretrained=True)


@pytest.fixture(scope="session")
def photos():
  return models.sample_images(["chelsea", "coffee", "motorcycle"])


@pytest.fixture(scope="session")
def lite0_logits(lite0, photos):
  module, variables = lite0
  x = models.preprocess(list(photos.values()), "efficientnet_lite0")
  return np.asarray(jax.jit(module.apply)(variables, x))


def test_lite0_logits_match_timm_reference(lite0_logits, photos):
  with np.load(os.path.join(FIXTURES, "efficientnet_lite0.npz")) as d:
    ref, names = d["logits"], [str(n) for n in d["names"]]
  assert names == list(photos)  # the fixture's photos, in the order the logits were computed
  np.testing.assert_allclose(lite0_logits, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_lite0_top1_on_photos(lite0_logits):
  p = jax.nn.softmax(lite0_logits, -1)
  top = np.asarray(jnp.argmax(p, -1))
  assert top[0] == 285 and float(p[0, 285]) == pytest.approx(0.79, abs=0.01)  # Egyptian cat
  assert top[1] == 967 and float(p[1, 967]) == pytest.approx(0.90, abs=0.01)  # espresso
  assert top[2] in (665, 670)  # moped / motor scooter
  assert models.class_name(285) == "Egyptian cat" and models.imagenet_class("egyptian cat") == 285


def test_model_metadata_and_default_layer(lite0):
  module, variables = lite0
  tap = jaxcam.linen_tap(module, variables)
  assert tap.layer == "head" and module.fc_layer == "fc" and models.input_size("efficientnet_lite0") == 224
  shape = tap.activation_shape(jnp.zeros((1, 224, 224, 3)))
  assert shape.shape == (1, 7, 7, 1280)


def test_cat_map_sits_on_the_cat(lite0, photos):
  """Grad-CAM at the default layer peaks inside chelsea's face (rows/cols of the 300x451 photo)."""
  module, variables = lite0
  x = models.preprocess([photos["chelsea"]], "efficientnet_lite0")
  maps = np.asarray(jaxcam.gradcam(jaxcam.linen_tap(module, variables), x, target=285))
  r, c = jaxcam.viz.peak(maps[0], photos["chelsea"].shape[:2])
  assert 40 <= r <= 260 and 120 <= c <= 400, (r, c)
  # and the map is concentrated: the top decile of the map mostly lies inside the face box
  full = jaxcam.viz.map_to_image(maps[0], photos["chelsea"].shape[:2])
  hot = full >= np.quantile(full, 0.9)
  assert hot[40:260, 120:400].sum() / hot.sum() > 0.8


def test_imagenet_lookup_errors():
  with pytest.raises(KeyError, match="Closest: 'Egyptian cat'"):
    models.imagenet_class("egyptian kat")
  with pytest.raises(ValueError, match=r"\[0, 1000\)"):
    models.imagenet_class(1000)
  with pytest.raises(KeyError, match="Closest: 'resnet50'"):
    models.get_model("resnet05")
  with pytest.raises(ValueError, match="never downloads"):
    models.resnet50(pretrained=True)


def _converted(name):
  with np.load(os.path.join(FIXTURES, "converters.npz")) as d:
    keys = [str(k) for k in d[f"{name}/keys"]]
    shapes = json.loads(str(d[f"{name}/shapes"]))
    x, logits = d[f"{name}/x"], d[f"{name}/logits"]
  sd = seeded_state_dict(list(zip(keys, shapes)), seed=7)
  module, variables = getattr(models, name)(weights=sd)
  return module, variables, x, logits


@pytest.mark.parametrize(
  "name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow), pytest.param("vgg16", marks=pytest.mark.slow)]
)
def test_torchvision_converters(name):
  module, variables, x, ref = _converted(name)
  out = np.asarray(jax.jit(module.apply)(variables, x))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_converter_rejects_wrong_state_dicts():
  module, variables, x, _ = _converted("resnet18")
  with np.load(os.path.join(FIXTURES, "converters.npz")) as d:
    keys = [str(k) for k in d["resnet18/keys"]]
    shapes = json.loads(str(d["resnet18/shapes"]))
  sd = seeded_state_dict(list(zip(keys, shapes)), seed=7)
  extra = dict(sd, **{"layer5.0.conv1.weight": np.zeros((1, 1, 1, 1), np.float32)})
  with pytest.raises(ValueError, match="unexpected key.*layer5"):
    models.resnet18(weights=extra)
  wrong = dict(sd, **{"fc.weight": np.zeros((10, 512), np.float32)})
  with pytest.raises(ValueError, match="fc.weight has shape"):
    models.resnet18(weights=wrong)


def test_converted_resnet_from_a_torch_file(tmp_path):
  """The loader and converter together: a seeded state dict stored as .npz, loaded by path, gives torchvision's
  logits, and its Grad-CAM is the numpy one from layer4's output (read with capture_intermediates) and the closed
  form gradient of GAP + fc (dS/dA = fc.kernel[:, c] / (h w))."""
  with np.load(os.path.join(FIXTURES, "converters.npz")) as d:
    sd = seeded_state_dict(list(zip([str(k) for k in d["resnet18/keys"]], json.loads(str(d["resnet18/shapes"])))), 7)
    x, ref = d["resnet18/x"], d["resnet18/logits"]
  np.savez(tmp_path / "r18.npz", **sd)
  module, variables = models.resnet18(weights=str(tmp_path / "r18.npz"))
  out, state = jax.jit(lambda v, x: module.apply(v, x, capture_intermediates=lambda m, _: m.name == "layer4"))(
    variables, x
  )
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
  classes = np.array([1, 2])
  maps = jaxcam.gradcam(jaxcam.linen_tap(module, variables), jnp.asarray(x), target=jnp.asarray(classes))
  a = np.asarray(state["intermediates"]["layer4"]["__call__"][0], np.float64)
  kernel = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
  g = np.broadcast_to(kernel.T[classes][:, None, None, :] / (a.shape[1] * a.shape[2]), a.shape)
  expected = reference.postprocess(reference.channel_map(reference.gradcam_w(a, g), a), x.shape[1:3])
  assert maps.shape == (2, 64, 64) and expected.max() > 0.5  # a map with a peak, not a degenerate all-zero one
  np.testing.assert_allclose(maps, expected, atol=2e-4)


def test_preprocess_inputs():
  img = (np.random.default_rng(0).uniform(0, 255, (30, 40, 3))).astype(np.uint8)
  x = models.preprocess([img, img[:20]], "efficientnet_lite0")
  assert x.shape == (2, 224, 224, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
  assert models.preprocess(img, 64).shape == (1, 64, 64, 3)
  with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
    models.preprocess(np.zeros((3, 30, 40)), 64)


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_real_weights(name, photos):
  module, variables = models.get_model(name, pretrained=True)
  assert module.input_size == models.input_size(name)
  x = models.preprocess([photos["chelsea"], photos["coffee"]], name)
  top = np.asarray(jnp.argmax(jax.jit(module.apply)(variables, x), -1))
  assert top.tolist() == [285, 967]  # Egyptian cat, espresso
