"""`jaxcam.fullgradient`: FullGrad against pytorch-grad-cam and a numpy computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import nets


def test_fullgrad_matches_pytorch_grad_cam(fam, resnet):
  d = fam[0]
  module, variables = resnet
  maps = jaxcam.fullgrad(module, variables, jnp.asarray(d["resnet/x"]), target=d["resnet/ids"])
  np.testing.assert_allclose(maps, d["pgc/fullgrad/maps"], atol=1e-5)


@pytest.mark.fast
def test_fullgrad_against_numpy_on_a_conv_bias_net():
  """A conv-with-bias net: |x dS/dx| per channel + |b dS/dy| per channel, min-maxed and summed, by jax.grad of the
  hand-split network."""
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(4), (2, 7, 7, 3))
  variables = module.init(jax.random.key(5), x)
  ids = np.array([0, 2])
  maps = jaxcam.fullgrad(module, variables, x, target=ids)
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
    jaxcam.fullgrad(module, variables, x, select=lambda m: False)
