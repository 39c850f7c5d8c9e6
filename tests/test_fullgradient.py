"""`jaxcam.fullgradient`: FullGrad against pytorch-grad-cam and a numpy computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import nets


def test_fullgrad_matches_pytorch_grad_cam(fam, resnet):
  """The row through a tap (any layer: FullGrad reads the whole model) and the deprecated module form agree with
  the peer's maps."""
  d = fam[0]
  module, variables = resnet
  x = jnp.asarray(d["resnet/x"])
  maps = jaxcam.fullgrad(jaxcam.linen_tap(module, variables, "layer4"), x, target=d["resnet/ids"])
  np.testing.assert_allclose(maps, d["pgc/fullgrad/maps"], atol=1e-5)
  with pytest.warns(DeprecationWarning, match="jaxcam.fullgrad\\(jaxcam.linen_tap"):
    old = jaxcam.fullgrad(module, variables, x, target=d["resnet/ids"])
  np.testing.assert_allclose(old, d["pgc/fullgrad/maps"], atol=1e-5)


@pytest.mark.fast
def test_fullgrad_against_numpy_on_a_conv_bias_net():
  """A conv-with-bias net: |x dS/dx| per channel + |b dS/dy| per channel, min-maxed and summed, by jax.grad of the
  hand-split network."""
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(4), (2, 7, 7, 3))
  variables = module.init(jax.random.key(5), x)
  ids = np.array([0, 2])
  maps = jaxcam.fullgrad(jaxcam.linen_tap(module, variables, "features"), x, target=ids)
  p = variables["params"]
  k, bias = p["features"]["conv"]["kernel"], p["features"]["conv"]["bias"]

  def head(x, delta):
    pad = ((1, 1), (1, 1))
    y = jax.lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
    y = y + bias[None, None, None, :] + delta
    logits = jax.nn.relu(y).mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"][None, :]
    return logits[jnp.arange(2), ids].sum()

  y_shape = (2, 7, 7, bias.shape[0])
  gx, gy = jax.grad(head, argnums=(0, 1))(x, jnp.zeros(y_shape))

  def chan(v):
    v = np.asarray(v, np.float64)
    v = v - v.min(axis=(1, 2), keepdims=True)
    return (v / (1e-7 + v.max(axis=(1, 2), keepdims=True))).sum(-1)

  total = chan(np.abs(gx * x)) + chan(np.abs(np.asarray(bias)[None, None, None, :] * np.asarray(gy)))
  total -= total.min(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(maps, total / (1e-7 + total.max(axis=(1, 2), keepdims=True)), atol=1e-5)
  with pytest.raises(ValueError, match="no bias layer"):
    jaxcam.fullgrad(jaxcam.linen_tap(module, variables, "features"), x, select=lambda m: False)
  with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="no bias layer"):
    jaxcam.fullgrad(module, variables, x, select=lambda m: False)


@pytest.mark.fast
def test_fullgrad_is_a_row_that_every_entry_point_runs(small_linen):
  """explain, explain_many, explain_batches, the metrics' method= and the by-name lookup run the same row; taps
  that cannot intercept their submodules' calls are told so (and explain_many(None) leaves the row out)."""
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(4), (2, 7, 7, 3))
  variables = module.init(jax.random.key(5), x)
  tap = jaxcam.linen_tap(module, variables, "features")
  ids = np.array([0, 2])
  direct = jaxcam.fullgrad(tap, x, target=ids)
  assert jaxcam.get_method("fullgrad").applies(tap)
  ex = jaxcam.explain("fullgrad", tap, x, ids)
  assert ex.method == "fullgrad"
  assert ex.maps.shape == (2, 7, 7)
  np.testing.assert_allclose(ex.maps, direct, atol=1e-6)
  many = jaxcam.explain_many(["fullgrad", "gradcam"], tap, x, ids)
  np.testing.assert_allclose(many["fullgrad"].maps, direct, atol=1e-6)
  batches = list(jaxcam.explain_batches("fullgrad", tap, [(np.asarray(x), ids)]))
  np.testing.assert_allclose(np.concatenate([b["maps"] for b in batches]), direct, atol=1e-6)
  coherent = jaxcam.metrics.coherency(tap, x, direct, "fullgrad", ids)
  assert coherent.shape == (2,) and np.isfinite(np.asarray(coherent)).all()
  fn_tap = jaxcam.function_tap(_pixels, _head, variables)
  assert not jaxcam.get_method("fullgrad").applies(fn_tap)
  assert "fullgrad" not in jaxcam.explain_many(None, fn_tap, x, ids)
  with pytest.raises(ValueError, match="intercepts submodule calls"):
    jaxcam.explain("fullgrad", fn_tap, x, ids)


def _pixels(params, x):
  return x


def _head(params, x, a):
  return nets.GapDense().apply(params, a)
