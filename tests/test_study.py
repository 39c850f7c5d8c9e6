"""`jaxcam.study`: the exact-vs-approximate derivative report."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import jaxcam
from jaxcam import derivatives
from tests.nets import piecewise_linear_nets


def test_compare_derivatives_report():
  from jaxcam import study

  x, cases = piecewise_linear_nets()
  module, variables, layer = cases[1]
  tap = jaxcam.linen_tap(module, variables, layer)
  # exp convention + logit on a piecewise-linear head: the approximation is exact
  r = study.compare_derivatives(tap, x, jaxcam.targets.logit(jnp.array([1, 2])))
  assert r.strategy == "structured" and r.second_rel_err.shape == (2,)
  for f in ("second_rel_err", "third_rel_err", "alpha_rel_err", "weights_rel_err", "map_rel_l2"):
    np.testing.assert_allclose(getattr(r, f), 0.0, atol=1e-6)
  assert not np.any(r.argmax_moved) and np.all(np.asarray(r.map_spearman) > 0.999)
  # log_softmax: h != 0 (softmax curvature): errors are positive and equal an independent numpy computation
  t = jaxcam.targets.log_softmax(jnp.array([1, 2]))
  r = study.compare_derivatives(tap, x, t)
  d = derivatives.diagonals(tap, x, t)
  g, h = np.asarray(d.grads, np.float64), np.asarray(d.second, np.float64)
  expected = np.linalg.norm((g**2 - (g**2 + h)).reshape(2, -1), axis=1) / np.linalg.norm(
    (g**2 + h).reshape(2, -1), axis=1
  )
  np.testing.assert_allclose(r.second_rel_err, expected, rtol=1e-4)
  assert np.all(np.asarray(r.second_rel_err) > 0)
  np.testing.assert_allclose(r.maps_exact, jaxcam.gradcam_pp(tap, x, target=t, derivatives="exact"), atol=1e-5)
  np.testing.assert_allclose(r.maps_approx, jaxcam.gradcam_pp(tap, x, target=t), atol=1e-5)
  m_ex, m_ap = np.asarray(r.maps_exact, np.float64), np.asarray(r.maps_approx, np.float64)
  num = np.linalg.norm((m_ap - m_ex).reshape(2, -1), axis=1)
  den = np.linalg.norm(m_ex.reshape(2, -1), axis=1)
  expected_map = np.divide(num, den, out=np.zeros_like(num), where=den > 0)  # 0/0 (all-zero maps) counts as 0
  np.testing.assert_allclose(r.map_rel_l2, expected_map, rtol=1e-4, atol=1e-7)
  s = r.summary()
  assert set(s) >= {"median_map_rel_l2", "worst_map_rel_l2", "argmax_moved_fraction"}
