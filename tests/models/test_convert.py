"""`jaxcam.models.convert`: torchvision state dicts (seeded, identical shapes) against torch's logits."""

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


def _converted(name):
  with np.load(os.path.join(FIXTURES, "converters.npz")) as d:
    keys = [str(k) for k in d[f"{name}/keys"]]
    shapes = json.loads(str(d[f"{name}/shapes"]))
    x, logits = d[f"{name}/x"], d[f"{name}/logits"]
  sd = seeded_state_dict(list(zip(keys, shapes)), seed=7)
  module, variables = getattr(models, name)(weights=sd)
  return module, variables, x, logits


@pytest.mark.parametrize(
  "name",
  [
    pytest.param("resnet18", marks=pytest.mark.fast),
    pytest.param("resnet50", marks=pytest.mark.slow),
    pytest.param("vgg16", marks=pytest.mark.slow),
  ],
)
def test_torchvision_converters(name):
  module, variables, x, ref = _converted(name)
  out = np.asarray(jax.jit(module.apply)(variables, x))
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.fast
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
