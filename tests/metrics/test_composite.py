"""`jaxcam.metrics.composite`: ARCC and its parts against pytorch-grad-cam."""

from __future__ import annotations

import numpy as np

import jaxcam
from jaxcam import metrics


def test_arcc_and_its_parts_match_pytorch_grad_cam(road_fix):
  d, tap, x = road_fix
  np.testing.assert_allclose(metrics.complexity(d["maps"]), d["pgc/complexity"], atol=1e-6)
  coh = metrics.coherency(tap, x, d["maps"], "gradcam", target=d["ids"])
  np.testing.assert_allclose(coh, d["pgc/coherency"], atol=1e-4)
  a = metrics.arcc(tap, x, d["maps"], "gradcam", target=d["ids"], noise=0.0)
  np.testing.assert_allclose(a.arcc, d["pgc/arcc"], atol=5e-4)
  # ADCC: the same harmonic mean with 1 - Average Drop, against a numpy evaluation of its definition.
  ad = metrics.adcc(tap, x, d["maps"], "gradcam", target=jaxcam.targets.softmax(d["ids"]))
  drop = np.asarray(metrics.confidence_change(tap, x, d["maps"], target=jaxcam.targets.softmax(d["ids"])).drop)
  c, k = np.asarray(d["pgc/coherency"], np.float64), np.asarray(d["pgc/complexity"], np.float64)
  np.testing.assert_allclose(ad.adcc, 3 / (1 / c + 1 / (1 - k) + 1 / (1 - drop)), atol=2e-4)
