"""`jaxcam.multiscale`: SESS's window grid and maps against pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest

import jaxcam


@pytest.mark.fast
def test_sess_window_grid_matches_pytorch_grad_cams_rule():
  from jaxcam import multiscale

  assert multiscale.window_starts(21, 16, 16) == [0, 5]
  assert multiscale.window_starts(16, 16, 16) == [0]
  assert multiscale.window_starts(71, 16, 16) == [0, 16, 32, 48, 55]
  assert multiscale.default_scales(224)[:3] == [224, 288, 352]
  m = multiscale.resize_matrix(7, 3)  # rows sum to 1; identity when sizes agree
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(multiscale.resize_matrix(5, 5), np.eye(5), atol=1e-7)


@pytest.mark.fast
def test_sess_max_pool_prefiltered_matches_pytorch_grad_cam(fam):
  d, tap, x, ids, _ = fam
  maps = jaxcam.sess(tap, x, ids, num_scales=3, step_size=6, pre_filter_ratio=0.5, pool="max", smooth=False)
  np.testing.assert_allclose(maps, d["pgc/sess_max/maps"], atol=1e-5)
  with pytest.raises(ValueError, match="`pre_filter_ratio`"):
    jaxcam.sess(tap, x, ids, pre_filter_ratio=1.0)
  with pytest.raises(ValueError, match="every scale >= the window"):
    jaxcam.sess(tap, x, ids, scales=(8, 16))


@pytest.mark.slow
def test_sess_default_grid_matches_pytorch_grad_cam(fam):
  """The default 12 scales (138 patches per 16x16 image), mean fusion and the Gaussian blur."""
  d, tap, x, ids, _ = fam
  np.testing.assert_allclose(jaxcam.sess(tap, x, ids), d["pgc/sess/maps"], atol=1e-5)
