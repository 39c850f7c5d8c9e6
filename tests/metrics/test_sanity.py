"""`jaxcam.metrics.sanity`: cascading parameter randomization against scipy and scikit-image."""

from __future__ import annotations

import jax
import numpy as np

import jaxcam
from jaxcam import metrics
from tests import nets


def test_cascading_randomization_against_scipy_and_skimage():
  from scipy.stats import spearmanr
  from skimage.metrics import structural_similarity

  module = nets.ConvNet()
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
  variables = module.init(jax.random.key(1), x)
  r = metrics.randomization_check(module, variables, x, "gradcam", layer="body_1")
  assert r.stages == ("fc", "body_2/conv", "body_1/conv", "body_0/conv")  # top down, one more per stage
  assert r.maps.shape == (5, 2, 12, 12) and r.spearman.shape == (4, 2)
  for s in range(4):
    for b in range(2):
      a, m = np.asarray(r.maps[0, b], np.float64), np.asarray(r.maps[s + 1, b], np.float64)
      np.testing.assert_allclose(r.spearman[s, b], spearmanr(a.ravel(), m.ravel()).statistic, atol=1e-5)
      expected = structural_similarity(
        a, m, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
      )
      np.testing.assert_allclose(r.ssim[s, b], expected, atol=1e-4)
  assert float(r.spearman[-1].mean()) < 0.9  # a destroyed network: Grad-CAM's maps change
  same = metrics.randomization_check(module, variables, x, "gradcam", layer="body_1", stages=1, key=jax.random.key(1))
  np.testing.assert_allclose(same.spearman, 1.0, atol=1e-5)  # the same key as init: nothing changes
  fig = jaxcam.viz.randomization_plot(r, np.asarray(x - x.min()) / float(x.max() - x.min()))
  assert len(fig.axes) == 1 + 5 + 1
