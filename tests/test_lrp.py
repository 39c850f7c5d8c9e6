"""`jaxcam.lrp`: relevance propagation as a jaxpr transformation, against numpy references of the rules, relevance
conservation, lxt 2.1 / zennit 1.0 fixtures (scripts/make_lrp_fixtures.py), an Equinox twin and the table rows."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import unflatten_dict

import jaxcam
from jaxcam import lrp
from tests.nets import ParityCNN, TinyViT, parity_variables

EXACT = lrp.Composite(eps=0.0)  # LRP-0 on linear layers: conservation is exact up to the biases


class Mlp(nn.Module):
  """hidden (Dense) -> relu -> out (Dense): the numpy references below write it out."""

  use_bias: bool = True

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(8, use_bias=self.use_bias, name="hidden")(x))
    return nn.Dense(3, use_bias=self.use_bias, name="out")(h)


def _mlp(use_bias=True, scale=0.3):
  x = jax.random.normal(jax.random.key(0), (4, 6))
  m = Mlp(use_bias)
  v = m.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + scale * jax.random.normal(jax.random.key(2), a.shape) if a.ndim == 1 else a, v)
  return m, v, x


def _np_eps(a, w, b, r_out, eps):
  """LRP-ε through ``z = a W + b`` in float64: ``R_a = a * W (R / (z + eps sign z))``; returns (R_a, z)."""
  z = a @ w + b
  den = z + eps * np.where(z >= 0, 1.0, -1.0)
  return a * ((r_out / den) @ w.T), z


def _np_mlp(v, x, ids, eps1, eps2):
  """(input relevance, bias-absorbed relevance) of the Mlp for logits[ids], by the rules in numpy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
  x = np.asarray(x, np.float64)
  z1 = x @ p["hidden"]["kernel"] + p["hidden"]["bias"]
  a1 = np.maximum(z1, 0)
  z2 = a1 @ p["out"]["kernel"] + p["out"]["bias"]
  r2 = np.eye(3)[ids] * z2
  r1, _ = _np_eps(a1, p["out"]["kernel"], p["out"]["bias"], r2, eps2)  # relu: identity rule
  r0, _ = _np_eps(x, p["hidden"]["kernel"], p["hidden"]["bias"], r1, eps1)
  absorbed = (r2 * p["out"]["bias"] / z2).sum(1) + (r1 * p["hidden"]["bias"] / z1).sum(1)
  return r0, absorbed, z2[np.arange(len(ids)), ids]


def test_epsilon_rule_matches_numpy_on_a_two_layer_mlp():
  m, v, x = _mlp()
  ids = np.array([0, 2, 1, 1])
  r = lrp.relevance(lambda x: m.apply(v, x), x, seed=jax.nn.one_hot(ids, 3), composite=lrp.Composite(eps=0.1))[0]
  ref, _, _ = _np_mlp(v, x, ids, 0.1, 0.1)
  np.testing.assert_allclose(r, ref, rtol=1e-4, atol=1e-6)
  plain = lrp.relevance(lambda x: m.apply(v, x), x, seed=jax.nn.one_hot(ids, 3), composite=EXACT)[0]
  assert not np.allclose(plain, ref, rtol=1e-3, atol=1e-4)  # eps=0.1 is not LRP-0: the test can tell them apart


@pytest.mark.fast
def test_conservation_bias_free_is_exact_and_the_bias_residual_is_what_the_biases_absorb():
  m, v, x = _mlp(use_bias=False)
  ids = np.array([0, 2, 1, 1])
  f = lambda x: m.apply(v, x)
  score = np.asarray(f(x))[np.arange(4), ids]
  r = lrp.relevance(f, x, seed=jax.nn.one_hot(ids, 3), composite=EXACT)[0]
  np.testing.assert_allclose(r.sum(1), score, rtol=1e-5, atol=1e-6)
  m, v, x = _mlp(use_bias=True)
  f = lambda x: m.apply(v, x)
  r = lrp.relevance(f, x, seed=jax.nn.one_hot(ids, 3), composite=EXACT)[0]
  _, absorbed, score = _np_mlp(v, x, ids, 0.0, 0.0)
  residual = score - np.asarray(r, np.float64).sum(1)
  assert np.abs(residual).max() > 1e-2  # the biases take a measurable share
  np.testing.assert_allclose(residual, absorbed, rtol=1e-4, atol=1e-5)


def test_conservation_on_a_bias_free_convnet(small_linen):
  module, variables, x = small_linen
  assert all(float(jnp.abs(b).max()) == 0 for b in jax.tree.leaves(variables) if b.ndim == 1)
  out = module.apply(variables, x)
  ids = jnp.argmax(out, -1)
  r = lrp.relevance(lambda x: module.apply(variables, x), x, seed=jax.nn.one_hot(ids, out.shape[-1]), composite=EXACT)
  np.testing.assert_allclose(r[0].sum((1, 2, 3)), out[jnp.arange(len(ids)), ids], rtol=1e-4, atol=1e-6)


def _np_attention(x, wq, wk, wv, wo, ro):
  """AttnLRP by hand on one single-head attention block without biases, in float64 (relevance domain):
  ``o = softmax(q k^T / sqrt(d)) v W_o`` with ``q, k, v = x W_q, x W_k, x W_v``; LRP-0 on linear maps."""
  lin = lambda a, w, r: a * ((r / (a @ w)) @ w.T)  # LRP-0 through a @ w
  q, k, v = x @ wq, x @ wk, x @ wv
  d = q.shape[-1]
  u = q @ k.T / np.sqrt(d)
  p = np.exp(u - u.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  o = p @ v
  r_o = lin(o, wo, ro)
  # P v: uniform rule, R_P[i,j] = sum_e P_ij v_je R_o[i,e] / (2 o_ie), R_v likewise
  share = r_o / (2 * o)
  r_p = p * (share @ v.T)
  r_v = v * (p.T @ share)
  r_u = u * (r_p - p * r_p.sum(-1, keepdims=True))  # AttnLRP's softmax rule
  share = r_u / (2 * u) / np.sqrt(d)  # u's terms are q_ie k_je / sqrt(d)
  r_q = q * (share @ k)
  r_k = k * (share.T @ q)
  return lin(x, wq, r_q) + lin(x, wk, r_k) + lin(x, wv, r_v)


def test_softmax_and_bilinear_rules_match_a_hand_derived_attention_block():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((5, 4))
  wq, wk, wv, wo = (rng.standard_normal((4, 4)) for _ in range(4))

  def block(x):
    q, k, v = x @ wq, x @ wk, x @ wv
    return jax.nn.softmax(q @ k.T / jnp.sqrt(4.0), axis=-1) @ v @ wo

  with jax.enable_x64(True):
    xs = jnp.asarray(x)
    out = np.asarray(block(xs))
    seed = np.zeros_like(out)
    seed[2, 1] = seed[4, 3] = 1.0
    r = lrp.relevance(block, xs, seed=seed, composite=EXACT)[0]
  ref = _np_attention(x, wq, wk, wv, wo, seed * out)
  np.testing.assert_allclose(r, ref, rtol=1e-8, atol=1e-10)


def test_fallback_is_reported_once_and_rules_can_silence_it():
  f = lambda x: jnp.cumprod(x, axis=-1).sum(-1) + jnp.cumprod(x * 2, axis=-1).sum(-1)
  x = jnp.arange(1.0, 5.0)[None]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    r = lrp.relevance(f, x)[0]
  msgs = [str(w.message) for w in caught if "jaxcam.lrp" in str(w.message)]
  assert len(msgs) == 1 and "cumprod" in msgs[0]
  np.testing.assert_allclose(r, x * jax.grad(lambda x: f(x).sum())(x), rtol=1e-6)  # gradient x input
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    lrp.relevance(f, x, composite=lrp.Composite(rules={"cumprod": "gradient"}))


def test_per_primitive_and_per_path_overrides_change_the_result_as_expected():
  m, v, x = _mlp()
  ids = np.array([0, 2, 1, 1])
  f, seed = (lambda x: m.apply(v, x)), jax.nn.one_hot(ids, 3)
  only_second = lrp.Composite(eps=0.0, layers={"out": lrp.Epsilon(0.5)})
  r = lrp.relevance(f, x, seed=seed, composite=only_second)[0]
  np.testing.assert_allclose(r, _np_mlp(v, x, ids, 0.0, 0.5)[0], rtol=1e-4, atol=1e-6)
  by_primitive = lrp.Composite(eps=0.0, rules={"dot_general": lrp.Epsilon(0.5)})
  r = lrp.relevance(f, x, seed=seed, composite=by_primitive)[0]
  np.testing.assert_allclose(r, _np_mlp(v, x, ids, 0.5, 0.5)[0], rtol=1e-4, atol=1e-6)
  # GELU: the identity rule by default, gradient x input when element-wise primitives get the gradient
  g = lambda x: jnp.sum(nn.gelu(x @ jnp.ones((6, 2))), -1)
  ident = lrp.relevance(g, x, composite=EXACT)[0]
  z = x @ jnp.ones((6, 2))
  np.testing.assert_allclose(ident.sum(1), nn.gelu(z).sum(1), rtol=1e-5)  # R_z = R_out: conserved
  grad = lrp.relevance(g, x, composite=lrp.Composite(eps=0.0, rules={"elementwise": "gradient"}))[0]
  np.testing.assert_allclose(grad, x * jax.grad(lambda x: g(x).sum())(x), rtol=1e-5, atol=1e-6)
  assert not np.allclose(grad, ident, atol=1e-3)


@pytest.mark.fast
def test_bad_rules_are_refused_with_clear_errors():
  with pytest.raises(ValueError, match="rules"):
    lrp.Composite(rules={"dot_general": "zplus"})
  with pytest.raises(ValueError, match="eps"):
    lrp.Epsilon(-1.0)
  with pytest.raises(TypeError, match="Composite"):
    lrp.relevance(jnp.sin, jnp.ones(3), composite={"dot_general": "gradient"})
  with pytest.raises(ValueError, match="element-wise"):
    lrp.relevance(lambda x: x @ jnp.ones((3, 2)), jnp.ones(3), composite=lrp.Composite(rules={"linear": "identity"}))


def test_jit_and_vmap_give_the_eager_relevance():
  m, v, x = _mlp()
  seed = jax.nn.one_hot(jnp.array([0, 2, 1, 1]), 3)
  rel = lambda x, s: lrp.relevance(lambda x: m.apply(v, x), x, seed=s)[0]
  eager = rel(x, seed)
  np.testing.assert_allclose(jax.jit(rel)(x, seed), eager, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(jax.vmap(lambda a, s: rel(a[None], s[None])[0])(x, seed), eager, rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # two rows compiled; the common method table runs both rows in the default tier
def test_rows_through_explain_are_lrp0_gradient_x_input_on_a_relu_convnet(convnet_b2):
  """LRP-0 with the identity rule on ReLU is gradient x input (bias-free ReLU nets): an independent check."""
  _, _, tap, x = convnet_b2
  ids = jnp.array([1, 0, 4])
  raw = dict(normalize=False, relu=False, upsample=False, composite=EXACT)
  act = tap(x)[1]
  g_a = jax.grad(lambda d: jnp.take_along_axis(tap(x, d)[0], ids[:, None], -1).sum())(jnp.zeros_like(act))
  g_x = jax.grad(lambda xx: jnp.take_along_axis(tap.forward(xx), ids[:, None], -1).sum())(x)
  cam = jaxcam.explain("lrp_cam", tap, x, ids, **raw)
  np.testing.assert_allclose(cam.maps, (act * g_a).sum(-1), rtol=1e-4, atol=1e-6)
  inp = jaxcam.explain("attnlrp", tap, x, ids, **raw)
  np.testing.assert_allclose(inp.maps, (x * g_x).sum(-1), rtol=1e-4, atol=1e-6)
  two = jaxcam.explain("attnlrp", tap, x, jnp.stack([ids, (ids + 1) % 5], 1), **raw)
  np.testing.assert_allclose(two.maps[:, 0], inp.maps, rtol=1e-5, atol=1e-7)
  assert not np.allclose(two.maps[:, 1], two.maps[:, 0], atol=1e-4)
  norm = jaxcam.attnlrp(tap, x, ids)
  assert norm.shape == x.shape[:3] and float(norm.min()) >= 0 and float(norm.max()) <= 1


def _vit_fixture():
  d = dict(np.load("tests/fixtures/lrp.npz"))
  w = {tuple(k[len("vit/w/") :].split("/")): jnp.asarray(v) for k, v in d.items() if k.startswith("vit/w/")}
  return d, {"params": unflatten_dict(w)}


@pytest.mark.slow
def test_attnlrp_matches_lxt_explicit_on_a_small_vit():
  d, variables = _vit_fixture()
  m, x = TinyViT(), jnp.asarray(d["vit/x"])
  np.testing.assert_allclose(m.apply(variables, x), d["vit/logits"], rtol=1e-5, atol=1e-5)
  r = lrp.relevance(lambda x: m.apply(variables, x), x, seed=jax.nn.one_hot(d["vit/ids"], 5))[0]
  ref = d["vit/relevance"]
  np.testing.assert_allclose(r, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
  np.testing.assert_allclose(r.sum((1, 2, 3)), ref.sum((1, 2, 3)), rtol=1e-4)
  # the conservation residual of a ViT with biases, CLS token and position embedding (they absorb relevance)
  score = d["vit/logits"][np.arange(2), d["vit/ids"]]
  assert np.all(np.abs(score - np.asarray(r.sum((1, 2, 3)))) > 0.1)
  tap = jaxcam.linen_tap(m, variables, "block0", layout=jaxcam.layouts.tokens(prefix=1))
  maps = jaxcam.explain("attnlrp", tap, x, jnp.asarray(d["vit/ids"]), normalize=False, relu=False).maps
  np.testing.assert_allclose(maps, ref.sum(-1), rtol=1e-3, atol=2e-4 * np.abs(ref).max())


@pytest.mark.slow
def test_epsilon_matches_zennit_on_a_small_convnet():
  d = dict(np.load("tests/fixtures/lrp.npz"))
  variables = parity_variables({k[len("cnn/") :]: v for k, v in d.items() if k.startswith("cnn/")})
  m, x = ParityCNN(), jnp.asarray(d["cnn/x"])
  np.testing.assert_allclose(m.apply(variables, x), d["cnn/logits"], rtol=1e-5, atol=1e-6)
  comp = lrp.Composite(eps=float(d["cnn/eps"]))
  r = lrp.relevance(lambda x: m.apply(variables, x), x, seed=jax.nn.one_hot(d["cnn/ids"], 10), composite=comp)[0]
  ref = d["cnn/relevance"]
  np.testing.assert_allclose(r, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
  r0 = lrp.relevance(lambda x: m.apply(variables, x), x, seed=jax.nn.one_hot(d["cnn/ids"], 10), composite=EXACT)[0]
  assert not np.allclose(r0, ref, atol=1e-3 * np.abs(ref).max())  # eps=0.25 matters: the fixture can tell


class LinenTwin(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.LayerNorm(epsilon=1e-6)(nn.Dense(8)(x)))
    return nn.Dense(3)(h)


@pytest.mark.slow
def test_a_linen_model_and_its_equinox_twin_get_the_same_relevance():
  import equinox as eqx

  x = jax.random.normal(jax.random.key(0), (4, 6))
  m = LinenTwin()
  v = m.init(jax.random.key(1), x)
  v = jax.tree.map(lambda a: a + 0.2 * jax.random.normal(jax.random.key(3), a.shape), v)
  p = v["params"]
  keys = jax.random.split(jax.random.key(2), 2)
  l0, l1 = eqx.nn.Linear(6, 8, key=keys[0]), eqx.nn.Linear(8, 3, key=keys[1])
  l0 = eqx.tree_at(lambda l: (l.weight, l.bias), l0, (p["Dense_0"]["kernel"].T, p["Dense_0"]["bias"]))
  l1 = eqx.tree_at(lambda l: (l.weight, l.bias), l1, (p["Dense_1"]["kernel"].T, p["Dense_1"]["bias"]))
  ln = eqx.nn.LayerNorm(8, eps=1e-6)
  ln = eqx.tree_at(lambda l: (l.weight, l.bias), ln, (p["LayerNorm_0"]["scale"], p["LayerNorm_0"]["bias"]))
  twin = lambda x: jax.vmap(lambda xi: l1(jax.nn.gelu(ln(l0(xi)))))(x)
  np.testing.assert_allclose(twin(x), m.apply(v, x), rtol=1e-5, atol=1e-6)
  seed = jax.nn.one_hot(jnp.array([0, 1, 2, 0]), 3)
  comp = lrp.Composite(eps=0.05)
  r_linen = lrp.relevance(lambda x: m.apply(v, x), x, seed=seed, composite=comp)[0]
  r_eqx = lrp.relevance(twin, x, seed=seed, composite=comp)[0]
  np.testing.assert_allclose(r_eqx, r_linen, rtol=1e-4, atol=1e-6)
  r_grad = x * jax.grad(lambda x: (m.apply(v, x) * seed).sum())(x)
  assert not np.allclose(r_linen, r_grad, atol=1e-3)  # the rules differ from gradient x input here
