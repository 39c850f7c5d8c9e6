"""`jaxcam.guided`: guided backpropagation and guided Grad-CAM against pytorch-grad-cam and numpy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import guided
from tests import reference as ref
from tests.reference import value_and_grad_at


def _toy(x, w1, w2):
  """Functional relus of three spellings and a relu6, no modules."""
  h = jnp.einsum("bi,ij->bj", x, w1)
  h = jax.nn.relu(h[:, :3]) + jnp.maximum(h[:, 3:], 0.0) + jax.nn.relu6(4.0 * h[:, :3])
  return jnp.einsum("bj,jk->bk", h, w2)


def _toy_guided_numpy(x, w1, w2, c, rule="guided", relu6=True):
  h = x @ w1
  a, b, r6 = h[:, :3], h[:, 3:], 4.0 * h[:, :3]
  g = np.broadcast_to(w2[:, c], (x.shape[0], 3))  # dS/d(sum of the three branches)

  def back(pre, g, cap=None):
    inside = pre > 0 if cap is None else (pre > 0) & (pre < cap)
    if rule == "deconvnet":
      return np.maximum(g, 0) * (1.0 if cap is None else (pre < cap))
    return np.where(inside & (g > 0), g, 0.0)

  if relu6:
    g6 = back(r6, g, cap=6.0)
  else:
    g6 = np.where((r6 > 0) & (r6 < 6), g, 0.0)
  dh = np.concatenate([back(a, g) + 4.0 * g6, back(b, g)], axis=1)
  return dh @ w1.T


def test_guided_backprop_matches_pytorch_grad_cam(fam, resnet):
  d = fam[0]
  module, variables = resnet
  x = jnp.asarray(d["resnet/x"])
  grads = guided.guided_backprop(functools.partial(module.apply, variables), x, target=d["resnet/ids"])
  np.testing.assert_allclose(grads, d["pgc/guided/grads"], atol=1e-6)
  tap = jaxcam.linen_tap(module, variables, "layer4")  # a tap works too (its plain forward pass)
  np.testing.assert_allclose(guided.guided_backprop(tap, x, target=d["resnet/ids"]), grads, atol=1e-7)


@pytest.mark.fast
@pytest.mark.parametrize(("rule", "relu6"), [("guided", True), ("guided", False), ("deconvnet", True)])
def test_guided_rules_on_functional_relus_against_numpy(rule, relu6):
  rng = np.random.default_rng(0)
  x, w1, w2 = rng.standard_normal((4, 5)), rng.standard_normal((5, 6)), rng.standard_normal((3, 2))
  c = 1
  fn = functools.partial(_toy, w1=jnp.asarray(w1, jnp.float32), w2=jnp.asarray(w2, jnp.float32))
  xi = jnp.asarray(x, jnp.float32)[:, None, None, :]  # (B, 1, 1, C) images
  got = guided.guided_backprop(lambda v: fn(v[:, 0, 0]), xi, target=c, rule=rule, relu6=relu6)[:, 0, 0]
  np.testing.assert_allclose(got, _toy_guided_numpy(x, w1, w2, c, rule, relu6), atol=1e-5)


def test_guided_gradcam_is_the_product(fam, resnet):
  """Guided Grad-CAM = a numpy Grad-CAM (A and dS/dA at layer3 read without jaxcam) x pytorch-grad-cam's guided
  backprop gradients."""
  d = fam[0]
  module, variables = resnet
  x, ids = jnp.asarray(d["resnet/x"]), d["resnet/ids"]
  tap = jaxcam.linen_tap(module, variables, "layer3")
  out = guided.guided_gradcam(tap, None, x, target=ids)
  a, g = (np.asarray(v, np.float64) for v in value_and_grad_at(module, variables, x, "layer3", ids))
  gradcam = ref.postprocess(ref.channel_map(ref.gradcam_w(a, g), a), x.shape[1:3])
  guided_grads = d["pgc/guided/grads"]
  assert out.shape == x.shape and gradcam.max() > 0.5
  np.testing.assert_allclose(out, gradcam[..., None] * guided_grads, rtol=1e-4, atol=2e-4 * np.abs(guided_grads).max())
  with pytest.raises(ValueError, match="`rule`"):
    guided.guided_backprop(tap, x, rule="backprop")


@pytest.mark.fast
def test_guided_reaches_relus_inside_remat_jit_and_custom_vjp():
  @jax.custom_vjp
  def ident(v):
    return v

  ident.defvjp(lambda v: (v, None), lambda _, g: (g,))
  rng = np.random.default_rng(1)
  w1, w2 = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32), jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)

  def plain(v):
    return jnp.einsum("bj,jk->bk", jax.nn.relu(jnp.einsum("bi,ij->bj", v[:, 0, 0], w1)), w2)

  def wrapped(v):
    inner = jax.jit(jax.checkpoint(lambda u: jax.nn.relu(ident(jnp.einsum("bi,ij->bj", u, w1)))))
    return jnp.einsum("bj,jk->bk", inner(v[:, 0, 0]), w2)

  x = jnp.asarray(rng.standard_normal((5, 1, 1, 4)), jnp.float32)
  expected = guided.guided_backprop(plain, x, target=2)
  np.testing.assert_allclose(guided.guided_backprop(wrapped, x, target=2), expected, atol=1e-6)
  ordinary = jax.grad(lambda v: plain(v)[:, 2].sum())(x)
  assert float(jnp.abs(ordinary - expected).max()) > 1e-3  # the rule changed something
