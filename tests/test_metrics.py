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
  np.testing.assert_allclose(de.mean_auc, de.auc[0], rtol=1e-6)


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
  np.testing.assert_allclose(p.energy, [1.0, 0.0, 0.0], atol=1e-6)
  masks = np.asarray(metrics.boxes_to_masks(boxes, (10, 10)))
  assert masks.sum() == 3 * 9 and masks[0, 4:7, 4:7].all()
  np.testing.assert_array_equal(metrics.pointing_game(maps, masks, tolerance=2).hits, p.hits)
  half = np.zeros((1, 10, 10), np.float32)
  half[0, 5, 5], half[0, 0, 0] = 3.0, 1.0
  np.testing.assert_allclose(metrics.pointing_game(half, boxes[:1]).energy, [0.75], atol=1e-6)
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
  np.testing.assert_allclose(perfect.auroc, 1.0, atol=1e-6)
  np.testing.assert_allclose(perfect.best_iou, 1.0, atol=1e-6)
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


# ------------------------------------------------------------------------------------------------------- ROAD


@pytest.fixture(scope="module")
def road_fix():
  with np.load(os.path.join(FIXTURES, "road.npz")) as f:
    d = {k: f[k] for k in f.files}
  module = models.ParityCNN()
  variables = models.parity_variables(d)
  return d, jaxcam.linen_tap(module, variables, "block2"), jnp.asarray(d["x"])


def test_imputation_matches_pytorch_grad_cam(road_fix):
  d, _, x = road_fix
  for order in ("morf", "lerf"):
    for p in (10, 50, 90):
      imputed, kept = metrics.remove_and_impute(x, d["maps"], p, order=order, noise=0.0)
      np.testing.assert_array_equal(kept, d[f"{order}/{p}/kept"])
      np.testing.assert_allclose(imputed, d[f"{order}/{p}/imputed"], atol=1e-3)


def test_road_matches_pytorch_grad_cam(road_fix):
  d, tap, x = road_fix
  ids = d["ids"]
  morf = metrics.road(tap, x, d["maps"], target=ids, noise=0.0)
  lerf = metrics.road(tap, x, d["maps"], target=ids, order="lerf", noise=0.0)  # the same program as MoRF's
  combined = metrics.road(tap, x, d["maps"], target=ids, order="combined", noise=0.0)
  np.testing.assert_allclose(morf.score, d["pgc/morf"], atol=2e-4)
  np.testing.assert_allclose(lerf.score, d["pgc/lerf"], atol=2e-4)
  np.testing.assert_allclose(combined.score, d["pgc/combined"], atol=2e-4)
  np.testing.assert_allclose(combined.mean_score, np.mean(d["pgc/combined"]), atol=2e-4)
  np.testing.assert_allclose(morf.percentiles, np.arange(10, 100, 10), atol=1e-5)
  np.testing.assert_allclose(morf.change[:, 7], d["pgc/morf80"], atol=2e-4)  # ROADMostRelevantFirst(80)
  assert morf.change.shape == (2, 9) and morf.order == "morf"


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


def _scipy_imputation(x, kept):
  """The 8-neighbour system solved by scipy in float64, written from the ROAD paper's definition."""
  import scipy.sparse
  import scipy.sparse.linalg

  h, w, _ = x.shape
  idx = -np.ones((h, w), int)
  holes = np.argwhere(~kept)
  idx[tuple(holes.T)] = np.arange(len(holes))
  weights = {(dy, dx): (1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
  rows, cols, vals = [], [], []
  b = np.zeros((len(holes), x.shape[2]))
  for n, (i, j) in enumerate(holes):
    total = 0.0
    for (dy, dx), wt in weights.items():
      if (dy, dx) == (0, 0) or not (0 <= i + dy < h and 0 <= j + dx < w):
        continue
      total += wt
      if kept[i + dy, j + dx]:
        b[n] += wt * x[i + dy, j + dx]
      else:
        rows.append(n), cols.append(idx[i + dy, j + dx]), vals.append(-wt)
    rows.append(n), cols.append(n), vals.append(total)
  a = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(len(holes), len(holes)))
  out = np.array(x, np.float64)
  out[tuple(holes.T)] = scipy.sparse.linalg.spsolve(a, b)
  return out


def test_imputation_on_a_large_hole_against_scipy():
  rng = np.random.default_rng(0)
  x = rng.random((64, 72, 3)).astype(np.float32)
  yy, xx = np.mgrid[:64, :72]
  kept = ((yy - 30) ** 2 + (xx - 40) ** 2 > 26**2) | (rng.random((64, 72)) < 0.02)  # a big disc, a few inside
  ours, iters = metrics.noisy_linear_imputation(jnp.asarray(x), kept, noise=0.0, return_iterations=True)
  np.testing.assert_allclose(ours, _scipy_imputation(x, kept), atol=1e-4)
  assert int(iters) < 40  # the multigrid preconditioner: plain CG needs hundreds here
  np.testing.assert_array_equal(np.asarray(ours)[kept], x[kept])  # kept pixels untouched
  # nothing kept: every pixel the image's mean colour (scipy: a singular matrix); nothing removed: x itself
  none = metrics.noisy_linear_imputation(jnp.asarray(x), np.zeros((64, 72), bool), noise=0.0)
  np.testing.assert_allclose(none, np.broadcast_to(x.mean(axis=(0, 1)), x.shape), atol=1e-6)
  np.testing.assert_array_equal(metrics.noisy_linear_imputation(jnp.asarray(x), np.ones((64, 72), bool)), x)


def test_road_noise_is_keyed_and_chunking_changes_nothing(road_fix):
  d, tap, x = road_fix
  run = functools.partial(metrics.road, tap, x, d["maps"], target=d["ids"])
  a, b = run(key=jax.random.key(1)), run(key=jax.random.key(1), chunk_size=5)
  np.testing.assert_allclose(a.change, b.change, atol=1e-5)
  assert not np.allclose(run(key=jax.random.key(2)).change, a.change, atol=1e-6)  # the noise is really drawn
  imputed, kept = metrics.remove_and_impute(x, d["maps"], 50, noise=0.05, key=jax.random.key(3))
  clean, _ = metrics.remove_and_impute(x, d["maps"], 50, noise=0.0)
  resid = np.asarray(imputed - clean)[~np.asarray(kept)]
  np.testing.assert_allclose(resid.std(), 0.05, rtol=0.1)  # Gaussian noise of that std on removed pixels only
  np.testing.assert_array_equal(np.asarray(imputed - clean)[np.asarray(kept)], 0)


@pytest.mark.slow  # two more programs on another model: ~20 s of compiles
def test_road_moves_the_right_way_and_reports_nans():
  # The logit is the top-left block's sum: MoRF with the oracle map (that block ranked highest) must drop more
  # than MoRF with the inverse map, and combined must favour the oracle.
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3)) + 0.5
  oracle = jnp.zeros((2, 16, 16)).at[:, :4, :4].set(1.0) + 0.01 * jax.random.uniform(jax.random.key(1), (2, 16, 16))
  good = metrics.road(_region_model, x, oracle, target=0, noise=0.0)
  bad = metrics.road(_region_model, x, 1 - oracle, target=0, noise=0.0)
  assert float(good.mean_score) < float(bad.mean_score)
  comb = lambda m: float(metrics.road(_region_model, x, m, target=0, order="combined", noise=0.0).mean_score)
  assert comb(oracle) > comb(1 - oracle)
  nan_maps = oracle.at[1, 0, 0].set(jnp.nan)
  r = metrics.road(_region_model, x, nan_maps, target=0, noise=0.0)
  assert int(r.nan_count) == 1 and bool(r.valid[0]) and not bool(r.valid[1])
  assert np.isnan(r.score[1]) and np.isfinite(r.mean_score)
  np.testing.assert_allclose(r.mean_score, good.score[0], atol=1e-5)


def test_road_errors(road_fix):
  d, tap, x = road_fix
  with pytest.raises(ValueError, match="order"):
    metrics.road(tap, x, d["maps"], order="most")
  with pytest.raises(ValueError, match="percentiles"):
    metrics.road(tap, x, d["maps"], percentiles=(10, 120))
  with pytest.raises(ValueError, match="noise"):
    metrics.road(tap, x, d["maps"], noise=-1.0)
  with pytest.raises(ValueError, match="one percentile"):
    metrics.remove_and_impute(x, d["maps"], (10, 20))
