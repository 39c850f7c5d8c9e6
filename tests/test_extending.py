"""Extending jaxcam from user code, without editing the package: a new gradient row, a new perturbation row with its
provider, a new wrapper and a new metric, each through explain, explain_many, explain_batches, explain_model and
jaxcam.metrics. The maps are checked against a hand split of the network (tests/nets.py), not against jaxcam."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import metrics
from tests import nets
from tests import reference as ref
from tests.test_providers import DROP, drop_provider  # noqa: F401  (the provider fixture)

RAW = dict(normalize=False, upsample=False, relu=False)


def _abs_gradcam_weights(activations, grads, /):
  """A user's gradient row: channel weights = mean |dS/dA| over positions."""
  del activations
  return jnp.mean(jnp.abs(grads), axis=(-3, -2))


ABS = jaxcam.MethodSpec("abs_gradcam", _abs_gradcam_weights, "channel", needs=("grads",), title="|Grad|-CAM")


@dataclasses.dataclass(frozen=True)
class _Negated:
  fn: object

  def __call__(self, activations, /, *needs, **options):
    return -self.fn(activations, *needs, **options)


def negated(method):
  """A user's wrapper: the row with its weights negated (the map of the evidence against the class)."""
  inner = jaxcam.get_method(method)
  return dataclasses.replace(inner, name=f"negated({inner.name})", fn=_Negated(inner.fn), aliases=())


def _by_hand(variables, x, classes):
  """A (B, h, w, C) at body_2 by hand, and dS/dA for the GAP + Dense head: W[:, c] / (h w) at every position."""
  a = np.asarray(nets.convnet_body(variables, x), np.float64)
  kernel = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
  h, w = a.shape[1:3]
  g = np.broadcast_to((kernel[:, classes].T / (h * w))[:, None, None, :], a.shape)
  return a, g


@pytest.mark.fast
def test_rows_wrappers_and_metrics_from_user_code_work_everywhere(small_linen, drop_provider):  # noqa: F811
  module, variables, x = small_linen
  tap = jaxcam.linen_tap(module, variables, "body_2")
  t = np.array([1, 0, 4])
  a, g = _by_hand(variables, x, t)
  expected = {
    "abs_gradcam": np.einsum("bhwc,bc->bhw", a, np.abs(g).mean(axis=(1, 2))),
    "negated(abs_gradcam)": -np.einsum("bhwc,bc->bhw", a, np.abs(g).mean(axis=(1, 2))),
  }
  rows = {"abs_gradcam": ABS, "negated(abs_gradcam)": negated(ABS)}
  for name, row in rows.items():
    np.testing.assert_allclose(jaxcam.explain(row, tap, x, t, **RAW).maps, expected[name], rtol=1e-4, atol=1e-6)
  # explain_many: the new rows and the perturbation row with its own provider, one call
  many = jaxcam.explain_many([*rows.values(), DROP], tap, x, t, allow_expensive=True, **RAW)
  for name in rows:
    np.testing.assert_allclose(many[name].maps, expected[name], rtol=1e-4, atol=1e-6)
  drop = jaxcam.explain(DROP, tap, x, t, **RAW).maps
  np.testing.assert_allclose(many["drop_cam"].maps, drop, rtol=1e-5, atol=1e-6)
  # explain_batches and explain_model take the rows as they are
  for row in (ABS, negated(ABS), DROP):
    out = list(jaxcam.explain_batches(row, tap, [(np.asarray(x), t)], **RAW))
    np.testing.assert_allclose(out[0]["maps"], jaxcam.explain(row, tap, x, t, **RAW).maps, rtol=1e-5, atol=1e-6)
  images = np.round(255 * (np.asarray(x) - np.asarray(x).min()) / np.ptp(np.asarray(x))).astype(np.uint8)
  ex = jaxcam.explain_model((module, variables), images, method=ABS, layer="body_2", target=t, normalize=False)
  direct = jaxcam.explain(ABS, tap, jnp.asarray(images, jnp.float32) / 255.0, t, normalize=False)
  np.testing.assert_allclose(ex.maps, direct.maps, rtol=1e-5, atol=1e-6)
  assert ex.method == "abs_gradcam"
  # a metric of the user's, beside a built-in one, for the user's rows
  spec = metrics.MetricSpec("negative_share", lambda ctx: np.mean(np.asarray(ctx.maps) < 0, axis=(1, 2)), "lower")
  table = dict(metrics.METRICS)
  try:
    metrics.register_metric(spec)
    flags = dict(normalize=False, relu=False)  # maps at the input's size, as the faithfulness metrics take them
    names = ["negative_share", "deletion"]
    got = metrics.evaluate(tap, x, negated(ABS), t, metrics=names, steps=4, chunk_size=4, method_options=flags)
    share = np.mean(ref.bilinear(expected["negated(abs_gradcam)"], x.shape[1:3]) < 0, axis=(1, 2))
    np.testing.assert_allclose(got["negative_share"], share, atol=1e-6)
    assert got["deletion"].shape == (3,) and np.isfinite(got["deletion"]).all()
  finally:
    metrics.METRICS.clear()
    metrics.METRICS.update(table)
  # the user's wrapper by name, as the CLI's --method spells it
  from jaxcam.methods import table as method_table

  method_table.register_wrapper("negated", negated)
  try:
    row = jaxcam.get_method("negated(gradcam)")
    assert row == negated("gradcam")
    np.testing.assert_allclose(
      jaxcam.explain("negated(gradcam)", tap, x, t, **RAW).maps,
      -jaxcam.explain("gradcam", tap, x, t, **RAW).maps,
      rtol=1e-5,
      atol=1e-6,
    )
  finally:
    method_table._USER_WRAPPERS.pop("negated", None)
