"""`jaxcam.models.efficientnet_lite`: real EfficientNet-Lite0/1/2 ImageNet weights against timm's logits,
on bundled photos."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import models
from tests.conftest import FIXTURES


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


@pytest.mark.fast
def test_lite0_top1_on_photos(lite0_logits):
  p = jax.nn.softmax(lite0_logits, -1)
  top = np.asarray(jnp.argmax(p, -1))
  assert top[0] == 285 and float(p[0, 285]) == pytest.approx(0.79, abs=0.01)  # Egyptian cat
  assert top[1] == 967 and float(p[1, 967]) == pytest.approx(0.90, abs=0.01)  # espresso
  assert top[2] in (665, 670)  # moped / motor scooter
  assert models.class_name(285) == "Egyptian cat" and models.imagenet_class("egyptian cat") == 285


@pytest.mark.fast
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


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_lite2_real_weights(name, photos):
  module, variables = models.get_model(name, pretrained=True)
  assert module.input_size == models.input_size(name)
  x = models.preprocess([photos["chelsea"], photos["coffee"]], name)
  top = np.asarray(jnp.argmax(jax.jit(module.apply)(variables, x), -1))
  assert top.tolist() == [285, 967]  # Egyptian cat, espresso
