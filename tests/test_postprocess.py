"""`jaxcam.postprocess`: multi-layer fusion against numpy, normalized maps in [0, 1], constant maps."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcam
from jaxcam import postprocess
from tests import reference as ref

maps_arrays = hnp.arrays(np.float32, (2, 4, 5), elements=st.floats(-1e3, 1e3, width=32))


@pytest.mark.fast
def test_fusion_matches_numpy(small_linen):
  module, variables, x = small_linen
  t = jnp.array([0, 1, 2])
  layers = ("body_1", "body_2")
  # single-layer maps at layer resolution, normalized, no aggregation (fusion="max" of one layer is the identity)
  per = {
    name: [
      np.asarray(
        getattr(jaxcam, name)(jaxcam.linen_tap(module, variables, l), x, target=t, upsample=False, fusion="max")
      )
      for l in layers
    ]
    for name in ("gradcam", "layercam")
  }
  size = x.shape[1:3]
  fused = jaxcam.gradcam(jaxcam.linen_tap(module, variables, list(layers)), x, target=t)
  expected = ref.minmax(np.mean([np.maximum(ref.bilinear(m, size), 0) for m in per["gradcam"]], axis=0))
  np.testing.assert_allclose(fused, expected, atol=1e-5)
  # torchcam: LayerCAM's tanh(2 cam) at layer resolution, then upsample, then max
  fused_max = jaxcam.layercam(jaxcam.linen_tap(module, variables, list(layers)), x, target=t, fusion="max")
  expected_max = np.max([ref.bilinear(np.tanh(2 * m), size) for m in per["layercam"]], axis=0)
  np.testing.assert_allclose(fused_max, expected_max, atol=1e-5)


@pytest.mark.fast
@settings(max_examples=40, deadline=None)
@given(maps_arrays)
def test_normalized_maps_lie_in_unit_interval(m):
  out = np.asarray(postprocess.normalize(jnp.asarray(m)))
  assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.fast
def test_constant_map_normalizes_to_zeros(strict_promotion):
  out = postprocess.normalize(jnp.full((1, 3, 3), 2.5))
  np.testing.assert_array_equal(out, np.zeros((1, 3, 3)))


@pytest.mark.fast
def test_spatial_rank_is_an_argument_not_state(strict_promotion):
  """`spatial_dims` picks the axes of the min-max (a volume's three, an image's two) with nothing to enter first;
  channel weights are broadcast by the rank difference alone."""
  m = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
  as_volumes = np.asarray(postprocess.normalize(jnp.asarray(m), spatial_dims=3))
  lo, hi = m.min(axis=(1, 2, 3), keepdims=True), m.max(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(as_volumes, (m - lo) / (hi - lo + 1e-7), rtol=1e-5, atol=1e-6)
  as_images = np.asarray(postprocess.normalize(jnp.asarray(m)))
  np.testing.assert_allclose(as_images, ref.minmax(m), rtol=1e-5, atol=1e-6)
  fused = np.asarray(postprocess.fuse(jnp.asarray(m)[None], spatial_dims=3))  # one layer: relu, mean, min-max
  r = np.maximum(m, 0)
  lo, hi = r.min(axis=(1, 2, 3), keepdims=True), r.max(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(fused, (r - lo) / (hi - lo + 1e-7), rtol=1e-5, atol=1e-6)
  a = np.random.default_rng(1).standard_normal((2, 3, 4, 5, 6)).astype(np.float32)  # (B, d, h, w, C)
  w = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
  np.testing.assert_allclose(
    postprocess.combine(jnp.asarray(w), jnp.asarray(a)), np.einsum("bdhwc,bc->bdhw", a, w), rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="`spatial_dims`"):
    postprocess.normalize(jnp.asarray(m), spatial_dims=5)


@pytest.mark.fast
def test_a_row_function_reads_the_spatial_rank_from_its_input(strict_promotion):
  """Rows receive A as (B, K, *spatial, C): Grad-CAM's mean runs over two axes for images and three for volumes,
  and an array without the batch and target axes is a clear error."""
  from jaxcam.methods import gradient

  g = np.random.default_rng(3).standard_normal((2, 1, 3, 4, 5, 6)).astype(np.float32)
  np.testing.assert_allclose(gradient.gradcam_weights(None, jnp.asarray(g)), g.mean(axis=(2, 3, 4)), rtol=1e-5)
  np.testing.assert_allclose(
    gradient.gradcam_weights(None, jnp.asarray(g[:, :, 0])), g[:, :, 0].mean(axis=(2, 3)), rtol=1e-5
  )
  with pytest.raises(ValueError, match=r"\(B, K, \*spatial, C\)"):
    gradient.gradcam_weights(None, jnp.ones((4, 4, 3)))


@pytest.mark.fast
def test_post_options_are_one_checked_static_value():
  """The flags travel as one hashable value: equal flags are equal keys (no recompilation), bad ones are named."""
  a = postprocess.PostOptions.checked(True, False, True, "max")
  assert a == postprocess.PostOptions(normalize=True, upsample=False, relu=True, fusion="max")
  assert hash(a) == hash(postprocess.PostOptions(True, False, True, "max"))
  assert a != postprocess.PostOptions()
  with pytest.raises(TypeError, match="`relu`"):
    postprocess.PostOptions.checked(relu=None)
  with pytest.raises(ValueError, match="`fusion`"):
    postprocess.PostOptions.checked(fusion="sum")
