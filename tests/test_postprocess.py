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
