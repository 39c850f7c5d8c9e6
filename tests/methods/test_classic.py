"""`jaxcam.methods.classic`: CAM (GAP + Dense heads), FEM and Random-CAM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.methods import classic
from tests import nets


@pytest.mark.fast
def test_fem_against_numpy(fam):
  d, *_ = fam
  a = d["block2/A"].astype(np.float64)
  mean, std = a.mean(axis=(1, 2), keepdims=True), a.std(axis=(1, 2), keepdims=True)
  expected = (a > mean + 1.5 * std).mean(axis=(1, 2))
  np.testing.assert_allclose(classic.fem_weights(jnp.asarray(d["block2/A"])[:, None], k=1.5)[:, 0], expected, atol=1e-7)


@pytest.mark.fast
def test_randomcam_is_keyed_uniform_and_batch_independent(fam):
  d, tap, x, ids, _ = fam
  a = jnp.asarray(d["block2/A"])[:, None]
  w = classic.randomcam_weights(a, key=jax.random.key(3))
  assert w.shape == (2, 1, a.shape[-1]) and float(jnp.abs(w).max()) <= 1.0
  np.testing.assert_array_equal(w[0], w[1])  # one draw per channel: an image's map ignores its batch companions
  one = jaxcam.randomcam(tap, x[:1], key=jax.random.key(3))
  both = jaxcam.randomcam(tap, x, key=jax.random.key(3))
  np.testing.assert_allclose(one[0], both[0], atol=1e-6)
  other = jaxcam.randomcam(tap, x, key=jax.random.key(4))
  assert float(jnp.abs(other - both).max()) > 1e-2
  with pytest.raises(ValueError, match="key=jax.random.key"):
    jaxcam.randomcam(tap, x)


def test_cam_equals_gradcam_up_to_scale_on_gap_dense():
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(4), (2, 7, 7, 3))
  variables = module.init(jax.random.key(5), x)
  tap = jaxcam.linen_tap(module, variables)
  raw_cam = jaxcam.cam(tap, x, target=jnp.array([1, 2]), normalize=False, relu=False, upsample=False)
  raw_grad = jaxcam.gradcam(tap, x, target=jnp.array([1, 2]), normalize=False, relu=False, upsample=False)
  np.testing.assert_allclose(raw_cam / (7 * 7), raw_grad, rtol=1e-5, atol=1e-7)
  # explicit kernel array and path give the same maps
  kernel = variables["params"]["fc"]["kernel"]
  np.testing.assert_allclose(jaxcam.cam(tap, x, target=1, fc=kernel), jaxcam.cam(tap, x, target=1, fc="fc"), atol=1e-6)


def test_cam_refuses_a_head_that_is_not_gap_dense(small_linen):
  module, variables, x = small_linen
  with pytest.raises(ValueError, match="global average pooling \\+ Dense.*conv_general_dilated"):
    jaxcam.cam(jaxcam.linen_tap(module, variables, "body_1"), x, target=0)
  with pytest.raises(ValueError, match="kernel `fc` of shape"):
    jaxcam.cam(jaxcam.linen_tap(module, variables, "body_2"), x, target=0, fc=jnp.ones((3, 5)))
  with pytest.raises(KeyError, match="Expected `fc`"):
    jaxcam.cam(jaxcam.linen_tap(module, variables, "body_2"), x, target=0, fc="fcc")


@pytest.mark.fast
def test_cam_on_a_dict_output_names_output_selector():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = nets.GapDense().init(jax.random.key(1), x)
  tap = jaxcam.linen_tap(nets.DictOutput(), variables, "features")
  with pytest.raises(ValueError, match=r"returns keys \['logits', 'embedding'\].*output='logits'"):
    jaxcam.cam(tap, x, target=lambda o: o["logits"][:, 0], fc="fc")
  picked = jaxcam.linen_tap(nets.DictOutput(), variables, "features", output="logits")
  plain = jaxcam.linen_tap(nets.GapDense(), variables, "features")
  np.testing.assert_allclose(
    jaxcam.cam(picked, x, target=1, fc="fc"), jaxcam.cam(plain, x, target=1, fc="fc"), atol=1e-6
  )


@pytest.mark.fast
def test_torchcam_cam(parity):
  """torchcam's CAM applies no ReLU before its min-max (its other methods do): relu=False reproduces it."""
  d, module, variables = parity
  maps = jaxcam.cam(
    jaxcam.linen_tap(module, variables, "block3"), jnp.asarray(d["x"]), target=d["ids"], upsample=False, relu=False
  )
  np.testing.assert_allclose(maps, d["tc/cam/maps"], atol=1e-4)
