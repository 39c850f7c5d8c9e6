"""Parity with pytorch-grad-cam and torchcam on identical weights (fixtures from scripts/make_fixtures.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.methods import gradient
from tests import models

CHANNEL = {
  "gradcam": gradient.gradcam_weights,
  "gradcam_pp": gradient.gradcam_pp_weights,
  "xgradcam": gradient.xgradcam_weights,
}
PGC = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise", "eigencam", "eigengradcam"]


@pytest.fixture(scope="module")
def parity(parity_data):
  d = parity_data
  module = models.ParityCNN()
  variables = models.parity_variables(d)
  return d, module, variables


def _align_sign(ours, theirs):
  """Eigen methods: the peer's SVD sign is arbitrary; flip theirs per image to best match ours."""
  out = theirs.copy()
  for b in range(theirs.shape[0]):
    if np.abs(ours[b] + theirs[b]).sum() < np.abs(ours[b] - theirs[b]).sum():
      out[b] = -theirs[b]
  return out


def test_same_network(parity):
  d, module, variables = parity
  np.testing.assert_allclose(module.apply(variables, d["x"]), d["logits"], rtol=1e-4, atol=1e-5)
  tap = jaxcam.linen_tap(module, variables)
  fwd = jaxcam.core.forward_and_grads(tap, jnp.asarray(d["x"]), jnp.asarray(d["ids"]))
  np.testing.assert_allclose(fwd.activations[0], d["block2/A"], atol=1e-5)
  np.testing.assert_allclose(fwd.grads[0][:, 0], d["block2/G"], atol=1e-6)


@pytest.mark.parametrize("name", sorted(CHANNEL))
def test_weight_functions_on_dumped_tensors(parity, name):
  d, _, _ = parity
  ours = CHANNEL[name](d["block2/A"], d["block2/G"])
  np.testing.assert_allclose(ours, d[f"pgc/{name}/weights"], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", PGC)
def test_raw_maps_on_dumped_tensors(parity, name):
  """(a) jaxcam's weight functions fed the peer's activations and grads reproduce its raw cam image."""
  d, _, _ = parity
  spec = jaxcam.get_method(name)
  a, g = d["block2/A"], d["block2/G"]
  if spec.output == "map":
    raw = spec.fn(a, g)
  else:
    raw = jaxcam.postprocess.combine(spec.fn(a, g), a)
  theirs = d[f"pgc/{name}/raw"]
  if spec.output == "map":
    theirs = _align_sign(np.asarray(raw), theirs)
  np.testing.assert_allclose(raw, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PGC)
def test_end_to_end_maps_match_pytorch_grad_cam(parity, name):
  """(b) the whole pipeline (relu, min-max at layer size, cv2-style bilinear upsample) matches."""
  d, module, variables = parity
  maps = getattr(jaxcam, name)(jaxcam.linen_tap(module, variables), jnp.asarray(d["x"]), target=d["ids"])
  theirs = d[f"pgc/{name}/maps"]
  if jaxcam.get_method(name).output == "map":
    # The peer leaves the SVD sign to LAPACK; a flipped sign before relu keeps the other lobe. Check that the
    # peer's map is our raw map, with its sign, through the same pipeline, and that ours is our raw map.
    from tests import reference as ref

    raw = np.asarray(
      getattr(jaxcam, name)(
        jaxcam.linen_tap(module, variables),
        jnp.asarray(d["x"]),
        target=d["ids"],
        normalize=False,
        relu=False,
        upsample=False,
      )
    )
    sign = np.where(np.sum(raw * d[f"pgc/{name}/raw"], axis=(1, 2)) < 0, -1.0, 1.0)[:, None, None]
    np.testing.assert_allclose(ref.postprocess(sign * raw, maps.shape[1:]), theirs, atol=1e-4)
    np.testing.assert_allclose(maps, ref.postprocess(raw, maps.shape[1:]), atol=1e-4)
    return
  np.testing.assert_allclose(maps, theirs, atol=1e-4)


def test_multi_layer_mean_fusion_matches_pytorch_grad_cam(parity):
  d, module, variables = parity
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  np.testing.assert_allclose(
    jaxcam.gradcam(tap, jnp.asarray(d["x"]), target=d["ids"]), d["pgc/gradcam/fused_maps"], atol=1e-4
  )


@pytest.mark.parametrize("name", ["gradcam", "xgradcam", "layercam"])
def test_torchcam_maps(parity, name):
  """torchcam: relu, min-max (eps 1e-8) at layer resolution."""
  d, module, variables = parity
  maps = getattr(jaxcam, name)(
    jaxcam.linen_tap(module, variables), jnp.asarray(d["x"]), target=d["ids"], upsample=False
  )
  np.testing.assert_allclose(maps, d[f"tc/{name}/maps"], atol=1e-4)


def test_torchcam_cam(parity):
  """torchcam's CAM applies no ReLU before its min-max (its other methods do): relu=False reproduces it."""
  d, module, variables = parity
  maps = jaxcam.cam(
    jaxcam.linen_tap(module, variables, "block3"), jnp.asarray(d["x"]), target=d["ids"], upsample=False, relu=False
  )
  np.testing.assert_allclose(maps, d["tc/cam/maps"], atol=1e-4)


def test_torchcam_layercam_max_fusion(parity):
  d, module, variables = parity
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  maps = jaxcam.layercam(tap, jnp.asarray(d["x"]), target=d["ids"], fusion="max")
  np.testing.assert_allclose(maps, d["tc/layercam/fused_maps"], atol=1e-4)


def test_torchcam_gradcam_pp_divergence_is_documented(parity):
  """torchcam's alpha is never applied (a boolean-mask copy): its weights are sum relu(g) * g**2.

  We reproduce that formula to show the fixture is understood, and check that correct Grad-CAM++ differs.
  """
  d, module, variables = parity
  a, g = d["block2/A"], d["block2/G"]
  torchcam_w = np.sum(np.maximum(g, 0) * g**2, axis=(1, 2))
  raw = np.maximum(np.einsum("bhwc,bc->bhw", a, torchcam_w), 0)
  lo = raw.min(axis=(1, 2), keepdims=True)
  expected = (raw - lo) / ((raw - lo).max(axis=(1, 2), keepdims=True) + 1e-8)
  np.testing.assert_allclose(expected, d["tc/gradcam_pp/maps"], atol=1e-4)
  ours = jaxcam.gradcam_pp(jaxcam.linen_tap(module, variables), jnp.asarray(d["x"]), target=d["ids"], upsample=False)
  assert np.abs(np.asarray(ours) - d["tc/gradcam_pp/maps"]).max() > 1e-2
