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
  row = jaxcam.sess("gradcam", num_scales=3, step_size=6, pre_filter_ratio=0.5, pool="max", smooth=False)
  assert row.name == "sess(gradcam)"
  ex = jaxcam.explain(row, tap, x, ids)
  np.testing.assert_allclose(ex.maps, d["pgc/sess_max/maps"], atol=1e-5)
  np.testing.assert_array_equal(ex.target, ids)
  with pytest.warns(DeprecationWarning, match="jaxcam.explain\\(jaxcam.sess\\(method"):
    old = jaxcam.sess(tap, x, ids, num_scales=3, step_size=6, pre_filter_ratio=0.5, pool="max", smooth=False)
  np.testing.assert_allclose(old, d["pgc/sess_max/maps"], atol=1e-5)
  with pytest.raises(ValueError, match="`pre_filter_ratio`"):
    jaxcam.sess("gradcam", pre_filter_ratio=1.0)
  with pytest.raises(ValueError, match="every scale >= the window"):
    jaxcam.explain(jaxcam.sess(scales=(8, 16)), tap, x, ids)


@pytest.mark.slow
def test_sess_default_grid_matches_pytorch_grad_cam(fam):
  """The default 12 scales (138 patches per 16x16 image), mean fusion and the Gaussian blur."""
  d, tap, x, ids, _ = fam
  np.testing.assert_allclose(jaxcam.explain(jaxcam.sess(), tap, x, ids).maps, d["pgc/sess/maps"], atol=1e-5)


@pytest.mark.fast
def test_sess_is_a_row_that_works_through_every_entry_point(fam):
  """``jaxcam.sess(method, ...)`` returns a row: by name (``"sess"`` is SESS around Grad-CAM, its default), and
  through explain_many, explain_batches and the metrics' method=, each giving the maps `explain` gives; it wraps
  another wrapper's row, and the name of what it wraps shows in the result."""
  d, tap, x, ids, _ = fam
  assert jaxcam.get_method("sess") == jaxcam.sess("gradcam")
  assert jaxcam.get_method("SESS(gradcam++)") == jaxcam.sess("gradcam_pp")
  row = jaxcam.sess("gradcam", num_scales=3, step_size=6, pre_filter_ratio=0.5, pool="max", smooth=False)
  assert row.expensive()
  maps = jaxcam.explain(row, tap, x, ids).maps
  many = jaxcam.explain_many([row, "gradcam"], tap, x, ids, allow_expensive=True)
  np.testing.assert_allclose(many[row.name].maps, maps, atol=1e-6)
  batches = list(jaxcam.explain_batches(row, tap, [(np.asarray(x), np.asarray(ids))]))
  np.testing.assert_allclose(batches[0]["maps"], maps, atol=1e-6)
  got = jaxcam.metrics.evaluate(tap, x, row, ids, metrics=["avg_drop"], steps=2, chunk_size=4)
  assert got["avg_drop"].shape == (2,)
  assert np.isfinite(got["avg_drop"]).all()
  nested = jaxcam.sess(jaxcam.eigen_smooth("gradcam"), num_scales=1, smooth=False)
  assert nested.name == "sess(eigen_smooth(gradcam))"
  ex = jaxcam.explain(nested, tap, x, ids)
  assert ex.method == nested.name
  assert ex.maps.shape == maps.shape
