"""`jaxcam.models.layers`: the convolution against nn.Conv, depthwise lowerings and their derivatives."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam.models import layers

# (kernel, stride, padding, groups, H): 1x1 (-> dot), depthwise (-> shifted sums on CPU), dense kxk, odd sizes.
CASES = [
  (1, 1, "SAME", 1, 9),
  (1, 2, "SAME", 1, 9),
  (1, 2, 0, 1, 8),
  (3, 1, "SAME", 6, 9),
  (3, 2, "SAME", 6, 9),
  (5, 2, "SAME", 6, 10),
  (3, 2, 1, 6, 9),
  (3, 1, 1, 1, 9),
  (7, 2, 3, 1, 11),
  (3, 2, "SAME", 2, 9),
]


def _pair(k, s, padding, groups, h, cout=None, bias=False):
  cout = cout or (6 if groups == 6 else 4)
  pad = padding if padding == "SAME" else ((padding, padding), (padding, padding))
  ref = nn.Conv(cout, (k, k), strides=s, padding=pad, feature_group_count=groups, use_bias=bias)
  ours = layers.Conv(cout, k, s, padding, feature_group_count=groups, use_bias=bias)
  x = jax.random.normal(jax.random.key(0), (2, h, h + 1, 6))
  return ref, ours, x


@pytest.mark.parametrize("k,s,padding,groups,h", CASES)
def test_same_function_and_parameters_as_nn_conv(k, s, padding, groups, h):
  ref, ours, x = _pair(k, s, padding, groups, h, bias=True)
  v_ref = ref.init(jax.random.key(1), x)
  v_ours = ours.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, v_ref) == jax.tree.map(jnp.shape, v_ours)
  np.testing.assert_array_equal(v_ref["params"]["kernel"], v_ours["params"]["kernel"])  # same initializer
  v = {"params": {"kernel": v_ref["params"]["kernel"], "bias": jnp.linspace(-1, 1, v_ref["params"]["bias"].size)}}
  want, got = jax.jit(ref.apply)(v, x), jax.jit(ours.apply)(v, x)
  assert got.shape == want.shape and got.dtype == want.dtype
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

  # Reverse and forward mode, against autodiff through XLA's convolution.
  f_ref = lambda v, x: jnp.sum(jnp.sin(ref.apply(v, x)))
  f_ours = lambda v, x: jnp.sum(jnp.sin(ours.apply(v, x)))
  grads = [jax.jit(jax.grad(f, (0, 1)))(v, x) for f in (f_ours, f_ref)]
  for a, b in zip(*map(jax.tree.leaves, grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  t = jax.random.normal(jax.random.key(2), x.shape)
  jvp = lambda m: jax.jit(lambda x, t: jax.jvp(lambda x: m.apply(v, x), (x,), (t,))[1])(x, t)
  np.testing.assert_allclose(jvp(ours), jvp(ref), rtol=1e-4, atol=1e-4)


def test_depthwise_lowerings_agree_and_cpu_uses_shifted_sums():
  x = jax.random.normal(jax.random.key(0), (2, 10, 9, 5))
  w = jax.random.normal(jax.random.key(1), (5, 5, 1, 5))
  for stride in (1, 2):
    pads = (layers.same_padding(10, 5, stride), layers.same_padding(9, 5, stride))
    xla = layers._xla_conv(x, w, stride, pads, 5)  # the lowering other platforms get
    np.testing.assert_allclose(layers.depthwise_shifted(x, w, stride, pads), xla, rtol=1e-5, atol=1e-5)
  batched = jax.vmap(lambda xi: layers.conv2d(xi[None], w, groups=5)[0])(x)  # platform switch under vmap
  np.testing.assert_allclose(batched, layers.conv2d(x, w, groups=5), rtol=1e-6, atol=1e-6)
  hlo = jax.jit(lambda x, w: layers.conv2d(x, w, groups=5)).lower(x, w).as_text()
  if jax.default_backend() == "cpu":
    assert "feature_group_count" not in hlo and "convolution" not in hlo
  one = jax.jit(lambda x, w: layers.conv2d(x, w)).lower(x, jnp.ones((1, 1, 5, 3))).as_text()
  assert "convolution" not in one and "dot_general" in one


def test_second_and_third_derivatives_through_the_depthwise_sum():
  ref, ours, _ = _pair(3, 2, "SAME", 6, 5)
  x = jax.random.normal(jax.random.key(3), (1, 5, 5, 6))
  v = ref.init(jax.random.key(1), x)
  with jax.enable_x64():
    v64 = jax.tree.map(lambda a: a.astype(jnp.float64), v)
    x64 = x.astype(jnp.float64)
    f = lambda m: lambda x: jnp.sum(jnp.tanh(m.apply(v64, x)) ** 2)
    hess = lambda m: jax.jit(jax.hessian(f(m)))(x64)
    np.testing.assert_allclose(hess(ours), hess(ref), rtol=1e-10, atol=1e-12)


@pytest.mark.fast
def test_bfloat16_input_promotes_like_flax():
  ref, ours, x = _pair(3, 1, "SAME", 6, 6)
  v = ref.init(jax.random.key(1), x)
  xb = x.astype(jnp.bfloat16)
  assert jax.eval_shape(ours.apply, v, xb).dtype == jax.eval_shape(ref.apply, v, xb).dtype


@pytest.mark.fast
def test_errors_name_the_argument():
  with pytest.raises(ValueError, match="feature_group_count"):
    layers.Conv(4, 3, feature_group_count=4).init(jax.random.key(0), jnp.zeros((1, 5, 5, 6)))
  with pytest.raises(ValueError, match="kernel"):
    layers.conv2d(jnp.zeros((1, 5, 5, 2)), jnp.zeros((3, 1, 2, 2)))
