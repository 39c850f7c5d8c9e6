"""Metrics against torchcam's ClassificationMetric / DeletionInsertionMetric and pytorch-grad-cam's confidence change
(fixture section ``metrics``), hand-computed localization cases, a numpy AUROC, and the right direction on a model
whose logit is a region's sum."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics
from tests import models
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def fix():
  with np.load(os.path.join(FIXTURES, "metrics.npz")) as f:
    d = {k: f[k] for k in f.files}
  module = models.ParityCNN()
  return d, functools.partial(module.apply, models.parity_variables(d)), jnp.asarray(d["x"])


# ------------------------------------------------------------------------------------------------------ parity


def test_confidence_change_matches_torchcam_and_pytorch_grad_cam(fix):
  d, f, x = fix
  for maps, ids, key in ((d["maps"], d["ids"], "tc"), (d["maps2"], d["ids2"], "tc2")):
    r = metrics.confidence_change(f, x, maps, target=jaxcam.targets.softmax(ids))
    np.testing.assert_allclose(r.avg_drop / 100, d[f"{key}/avg_drop"], atol=1e-6)  # torchcam: fractions
    np.testing.assert_allclose(r.increase / 100, d[f"{key}/conf_increase"], atol=1e-6)
  assert float(d["tc2/avg_drop"]) > 0.05  # the second case is not trivial
  logits = metrics.confidence_change(f, x, d["maps"], target=d["ids"])  # class ids: logits, as pgc's targets
  np.testing.assert_allclose(logits.change, d["pgc/change"], atol=1e-5)


def test_deletion_and_insertion_match_torchcam(fix):
  d, f, x = fix
  t = jaxcam.targets.softmax(d["ids"])
  de = metrics.deletion(f, x, d["maps"], target=t, steps=5, chunk_size=4)
  ins = metrics.insertion(f, x, d["maps"], target=t, steps=5)
  np.testing.assert_allclose(de.fractions, d["tc/fractions"], atol=1e-7)
  np.testing.assert_allclose(de.curve, d["tc/deletion"], atol=1e-6)
  np.testing.assert_allclose(ins.curve, d["tc/insertion"], atol=1e-6)
  np.testing.assert_allclose(de.mean_auc, d["tc/deletion_auc"], atol=1e-6)
  np.testing.assert_allclose(ins.mean_auc, d["tc/insertion_auc"], atol=1e-6)
  one = metrics.deletion(f, x, d["maps"], target=t, steps=5, chunk_size=1)  # chunking changes nothing
  np.testing.assert_allclose(one.curve, de.curve, atol=1e-7)
  jitted = jax.jit(lambda v, m: metrics.deletion(f, v, m, target=t, steps=5).auc)(x, jnp.asarray(d["maps"]))
  np.testing.assert_allclose(jitted, de.auc, atol=1e-7)  # inside the user's jit too


# ------------------------------------------------------------------------------------ the right direction


def _region_model(x):
  """Logit 0 = the sum of the top-left 4x4 block's pixels, logit 1 = 0."""
  s = jnp.sum(x[:, :4, :4, :], axis=(1, 2, 3))
  return jnp.stack([s, jnp.zeros_like(s)], axis=1)


def test_oracle_map_beats_its_inverse():
  x = jnp.ones((1, 8, 8, 3))
  oracle = jnp.zeros((1, 8, 8)).at[:, :4, :4].set(1.0)
  oracle = oracle + 0.01 * jnp.arange(64.0).reshape(1, 8, 8) / 64  # no ties
  inverse = 1.0 - oracle
  for fn, better in ((metrics.deletion, np.less), (metrics.insertion, np.greater)):
    good = fn(_region_model, x, oracle, target=0, steps=8).auc
    bad = fn(_region_model, x, inverse, target=0, steps=8).auc
    assert better(float(good[0]), float(bad[0])), fn.__name__
  kept = metrics.confidence_change(_region_model, x, jnp.clip(oracle, 0, 1), target=0)
  lost = metrics.confidence_change(_region_model, x, jnp.clip(inverse, 0, 1), target=0)
  assert float(kept.avg_drop) < 1.0 and float(lost.avg_drop) > 90.0


def test_nan_maps_are_counted_and_left_out(fix):
  d, f, x = fix
  maps = np.array(d["maps2"])
  maps[1, 3, 3] = np.nan
  r = metrics.confidence_change(f, x, maps, target=jaxcam.targets.softmax(d["ids2"]))
  assert int(r.nan_count) == 1 and list(np.asarray(r.valid)) == [True, False] and np.isnan(r.change[1])
  np.testing.assert_allclose(r.avg_drop, 100 * r.drop[0], rtol=1e-6)
  de = metrics.deletion(f, x, maps, target=d["ids2"], steps=4)
  assert int(de.nan_count) == 1 and np.isnan(de.auc[1]) and np.isfinite(de.mean_auc)
  np.testing.assert_allclose(de.mean_auc, de.auc[0])


def test_baselines_and_errors(fix):
  d, f, x = fix
  blur = metrics.insertion(f, x, d["maps"], target=d["ids"], steps=4, baseline="blur")
  mean = metrics.insertion(
    f, x, d["maps"], target=d["ids"], steps=4, baseline=lambda v: v.mean(axis=(1, 2), keepdims=True)
  )
  zeros = metrics.insertion(f, x, d["maps"], target=d["ids"], steps=4)
  assert float(jnp.abs(blur.curve[:, 0] - zeros.curve[:, 0]).max()) > 1e-4  # the first point is the baseline
  assert float(jnp.abs(mean.curve[:, 0] - zeros.curve[:, 0]).max()) > 1e-4
  np.testing.assert_allclose(blur.curve[:, -1], zeros.curve[:, -1], atol=1e-5)  # the last point is the image
  with pytest.raises(ValueError, match="`maps` of shape"):
    metrics.deletion(f, x, d["maps"][:, :8], target=d["ids"])
  with pytest.raises(ValueError, match="`steps`"):
    metrics.deletion(f, x, d["maps"], steps=0)
  with pytest.raises(ValueError, match="`baseline` broadcastable"):
    metrics.deletion(f, x, d["maps"], baseline=jnp.zeros((3, 3)))
  with pytest.raises(ValueError, match="`baseline`"):
    metrics.deletion(f, x, d["maps"], baseline="noise")


# -------------------------------------------------------------------------------------------- localization


def test_pointing_game_hand_cases():
  maps = np.zeros((3, 10, 10), np.float32)
  maps[0, 5, 5] = 1.0  # inside the box
  maps[1, 5, 9] = 1.0  # 3 pixels right of the box's last column (6)
  maps[2, 2, 2] = maps[2, 7, 7] = 1.0  # a tie: the first in row-major order, (2, 2), counts
  boxes = np.array([[4, 4, 7, 7]] * 3)  # x0, y0, x1, y1: rows and cols 4..6
  p = metrics.pointing_game(maps, boxes, tolerance=2)
  assert list(np.asarray(p.hits)) == [True, False, False]
  assert np.asarray(p.peaks).tolist() == [[5, 5], [5, 9], [2, 2]]
  assert list(np.asarray(metrics.pointing_game(maps, boxes, tolerance=3).hits)) == [True, True, True]  # (2,2)->(4,4)
  np.testing.assert_allclose(p.energy, [1.0, 0.0, 0.0])
  masks = np.asarray(metrics.boxes_to_masks(boxes, (10, 10)))
  assert masks.sum() == 3 * 9 and masks[0, 4:7, 4:7].all()
  np.testing.assert_array_equal(metrics.pointing_game(maps, masks, tolerance=2).hits, p.hits)
  half = np.zeros((1, 10, 10), np.float32)
  half[0, 5, 5], half[0, 0, 0] = 3.0, 1.0
  np.testing.assert_allclose(metrics.pointing_game(half, boxes[:1]).energy, [0.75])
  with pytest.raises(ValueError, match="`tolerance`"):
    metrics.pointing_game(maps, boxes, tolerance=-1)


def _auroc_pairs(s, y):
  pos, neg = s[y], s[~y]
  return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


def test_auroc_and_iou_against_numpy():
  rng = np.random.default_rng(0)
  maps = np.round(rng.uniform(size=(3, 6, 7)), 1).astype(np.float32)  # many ties
  masks = rng.uniform(size=(3, 6, 7)) < 0.3
  masks[2] = False  # no positive: AUROC undefined
  loc = metrics.localization(maps, masks, thresholds=[0.25, 0.5])
  for b in range(2):
    np.testing.assert_allclose(loc.auroc[b], _auroc_pairs(maps[b].ravel(), masks[b].ravel()), rtol=1e-6)
    for j, t in enumerate((0.25, 0.5)):
      pred = maps[b] >= t
      np.testing.assert_allclose(loc.iou[b, j], (pred & masks[b]).sum() / (pred | masks[b]).sum(), rtol=1e-6)
  assert np.isnan(loc.auroc[2]) and list(np.asarray(loc.valid)) == [True, True, False]
  perfect = metrics.localization(masks[:2].astype(np.float32), masks[:2])
  np.testing.assert_allclose(perfect.auroc, 1.0)
  np.testing.assert_allclose(perfect.best_iou, 1.0)
  with pytest.raises(ValueError, match="boolean masks"):
    metrics.localization(maps, masks.astype(np.float32))


# ---------------------------------------------------------------------------------------------- sanity checks


def test_cascading_randomization_against_scipy_and_skimage():
  from scipy.stats import spearmanr
  from skimage.metrics import structural_similarity

  module = models.ConvNet()
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
