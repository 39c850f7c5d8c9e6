"""`jaxcam.metrics.faithfulness`: confidence change, deletion / insertion and ROAD against torchcam and
pytorch-grad-cam fixtures."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics
from tests import nets
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def fix():
  with np.load(os.path.join(FIXTURES, "metrics.npz")) as f:
    d = {k: f[k] for k in f.files}
  module = nets.ParityCNN()
  return d, functools.partial(module.apply, nets.parity_variables(d)), jnp.asarray(d["x"])


def _region_model(x):
  """Logit 0 = the sum of the top-left 4x4 block's pixels, logit 1 = 0."""
  s = jnp.sum(x[:, :4, :4, :], axis=(1, 2, 3))
  return jnp.stack([s, jnp.zeros_like(s)], axis=1)


@pytest.mark.fast
def test_confidence_change_matches_torchcam_and_pytorch_grad_cam(fix):
  d, f, x = fix
  for maps, ids, key in ((d["maps"], d["ids"], "tc"), (d["maps2"], d["ids2"], "tc2")):
    r = metrics.confidence_change(f, x, maps, target=jaxcam.targets.softmax(ids))
    np.testing.assert_allclose(r.avg_drop / 100, d[f"{key}/avg_drop"], atol=1e-6)  # torchcam: fractions
    np.testing.assert_allclose(r.increase / 100, d[f"{key}/conf_increase"], atol=1e-6)
  assert float(d["tc2/avg_drop"]) > 0.05  # the second case is not trivial
  logits = metrics.confidence_change(f, x, d["maps"], target=d["ids"])  # class ids: logits, as pgc's targets
  np.testing.assert_allclose(logits.change, d["pgc/change"], atol=1e-5)


@pytest.mark.fast
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


@pytest.mark.fast
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


@pytest.mark.fast
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


@pytest.mark.fast
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


@pytest.mark.fast
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
