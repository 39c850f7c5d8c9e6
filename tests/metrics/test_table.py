"""`jaxcam.metrics.table`: the metric table `jaxcam evaluate` reads; a metric registered from user code works in
`jaxcam.metrics.evaluate` and the CLI's table like a built-in one."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics


@pytest.fixture
def user_table(monkeypatch):
  """The live table, restored after the test."""
  monkeypatch.setattr(metrics.table, "METRICS", dict(metrics.METRICS))
  return metrics.table.METRICS


@pytest.mark.fast
def test_evaluate_reads_the_table_and_a_user_metric_joins_it(common, user_table):
  tap, x, t = common
  maps = jaxcam.gradcam(tap, x, target=t)

  def peak_mass(ctx):  # a user's metric: the share of each map's mass in its top 10 % of pixels
    m = np.asarray(ctx.maps).reshape(len(ctx.maps), -1)
    top = np.sort(m, axis=1)[:, -m.shape[1] // 10 :]
    return top.sum(1) / m.sum(1)

  metrics.register_metric(metrics.MetricSpec("peak_mass", peak_mass, "higher", title="Peak mass"))
  assert "peak_mass" in metrics.table.METRICS
  got = metrics.evaluate(tap, x, "gradcam", t, metrics=["deletion", "peak_mass"], steps=4, chunk_size=4)
  assert set(got) == {"deletion", "peak_mass"} and got["peak_mass"].shape == (3,)
  flat = np.asarray(maps).reshape(3, -1)
  expected = np.sort(flat, axis=1)[:, -flat.shape[1] // 10 :].sum(1) / flat.sum(1)
  np.testing.assert_allclose(got["peak_mass"], expected, rtol=1e-5)
  direct = metrics.deletion(tap, x, maps, target=t, steps=4, chunk_size=4).auc
  np.testing.assert_allclose(got["deletion"], direct, rtol=1e-5, atol=1e-6)
  # the CLI's table reads the same rows: the column and its direction
  from jaxcam import cli

  summary = {
    "metrics": ["peak_mass"],
    "methods": {"gradcam": {"peak_mass": {"mean": 0.5, "std": 0.1}, "s_per_image": {"mean": 0.01}}},
  }
  assert "| method | peak_mass ↑ | s/img |" in cli.evaluation_table(summary)


@pytest.mark.fast
def test_metric_errors_name_the_argument(common):
  tap, x, t = common
  with pytest.raises(jaxcam.UnknownNameError, match="deletoin.*Closest.*deletion"):
    metrics.evaluate(tap, x, "gradcam", t, metrics=["deletoin"])
  with pytest.raises(ValueError, match=r"\['pointing'\] need `regions="):
    metrics.evaluate(tap, x, "gradcam", t, metrics=["pointing"])
  with pytest.raises(TypeError, match="the string 'deletion'"):
    metrics.evaluate(tap, x, "gradcam", t, metrics="deletion")
  with pytest.raises(ValueError, match="'higher' or 'lower'"):
    metrics.MetricSpec("m", lambda ctx: 0, better="up")
  with pytest.raises(ValueError, match="already registered"):
    metrics.register_metric(metrics.MetricSpec("road", lambda ctx: 0))


@pytest.mark.fast
def test_region_metrics_through_the_table_match_the_functions(common):
  tap, x, t = common
  maps = jnp.asarray(jax.random.uniform(jax.random.key(0), (3, 12, 12)))
  masks = np.zeros((3, 12, 12), bool)
  masks[:, 2:6, 3:9] = True
  present = np.array([True, False, True])
  got = metrics.evaluate(tap, x, "gradcam", t, metrics=["pointing", "auroc"], maps=maps, regions=(masks, present))
  hits = np.asarray(metrics.pointing_game(maps, masks, tolerance=15).hits, float)
  np.testing.assert_allclose(got["pointing"][present], hits[present], atol=0)  # 0/1 values
  assert np.isnan(got["pointing"][1]) and np.isnan(got["auroc"][1])
  expected = np.asarray(metrics.localization(maps, masks, thresholds=[0.5]).auroc)
  np.testing.assert_allclose(got["auroc"][present], expected[present], rtol=1e-6)
