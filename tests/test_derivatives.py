"""Exact higher-order derivatives: brute-force jax.hessian / jacfwd(hessian) in float64, strategies, Grad-CAM++."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import core, derivatives
from tests import nets
from tests.conftest import FIXTURES
from tests.nets import piecewise_linear_nets

B, H, W, C, CLASSES = 2, 2, 2, 3, 4


def _params(seed=0, dtype=jnp.float64):
  rng = np.random.default_rng(seed)
  p = lambda *s: jnp.asarray(rng.standard_normal(s) * 0.6, dtype)
  return {
    "k": p(3, 3, C, C),
    "w": p(C, CLASSES),
    "b": p(CLASSES),
    "q": p(C, C),
    "kk": p(C, C),
    "v": p(C, C),
    "m1": p(C, 5),
    "m2": p(5, CLASSES),
    "gamma": p(C),
    "beta": p(C),
  }


def _conv(a, k):
  return jax.lax.conv_general_dilated(
    a, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
  )


def _dense(z, p):
  return z @ p["w"] + p["b"][None, :]


def _layernorm(a, p):
  mu = a.mean(-1, keepdims=True)
  var = ((a - mu) ** 2).mean(-1, keepdims=True)
  return (a - mu) / jnp.sqrt(var + 1e-5) * p["gamma"][None, None, None, :] + p["beta"][None, None, None, :]


def _attention(a, p):
  t = a.reshape(a.shape[0], -1, C)
  q, k, v = t @ p["q"], t @ p["kk"], t @ p["v"]
  att = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / np.sqrt(C), axis=-1)
  return jnp.einsum("bij,bjc->bic", att, v).mean(1)


HEADS = {  # name: (head(p, a) -> logits, structured applies)
  "conv_gelu": (lambda p, a: _dense(jax.nn.gelu(_conv(a, p["k"])).mean((1, 2)), p), False),
  "layernorm_gelu": (lambda p, a: _dense(jax.nn.gelu(_layernorm(a, p)).mean((1, 2)), p), False),
  "attention": (lambda p, a: _dense(_attention(a, p), p), False),
  "gap_silu_mlp": (lambda p, a: jax.nn.silu(a.mean((1, 2)) @ p["m1"]) @ p["m2"], True),
  "gap_dense": (lambda p, a: _dense(a.mean((1, 2)), p), True),
}
TARGETS = {"logit": jaxcam.targets.logit, "log_softmax": jaxcam.targets.log_softmax, "softmax": jaxcam.targets.softmax}


def _tap(head, p):
  def body(p, x):
    return jnp.tanh(x)  # the "layer" output A is a smooth function of x

  return jaxcam.function_tap(body, lambda p, x, a: head(p, a), p)


def _brute(head, p, a, kind, ids):
  """diag of jax.hessian and of jax.jacfwd(jax.hessian) per image, on the flattened A_b."""
  d2, d3 = [], []
  for b in range(a.shape[0]):

    def s(flat, b=b):
      ab = a.at[b].set(flat.reshape(a.shape[1:]))
      logits = head(p, ab)[b]
      vals = {"logit": logits, "log_softmax": jax.nn.log_softmax(logits), "softmax": jax.nn.softmax(logits)}[kind]
      return vals[ids[b]]

    flat = a[b].reshape(-1)
    hess = jax.hessian(s)(flat)
    third = jax.jacfwd(jax.hessian(s))(flat)
    n = flat.shape[0]
    d2.append(jnp.diagonal(hess).reshape(a.shape[1:]))
    d3.append(third[jnp.arange(n), jnp.arange(n), jnp.arange(n)].reshape(a.shape[1:]))
  return np.stack(d2), np.stack(d3)


SLOW_HEADS = {"attention", "conv_gelu", "layernorm_gelu"}


def _rel_err(got, ref):
  return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-300))


@pytest.mark.slow  # float64 brute force (jacfwd of the Hessian) and the generic strategy's compiles
def test_exact_derivatives_on_tokens_against_brute_force():
  from jaxcam import derivatives

  d = 4
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    wq, wk, wv = (jnp.asarray(rng.standard_normal((d, d)) * 0.5) for _ in range(3))
    params = {"cls": jnp.asarray(rng.standard_normal((1, 1, d))), "wo": jnp.asarray(rng.standard_normal((d, 3)))}

    def body(p, x):  # 2x2 "patches" of width d, plus a CLS token
      return jnp.concatenate([jnp.broadcast_to(p["cls"], (x.shape[0], 1, d)), x.reshape(x.shape[0], 4, d)], axis=1)

    def head(p, x, t):  # one attention layer, mean pooling over all tokens, a dense layer
      att = jax.nn.softmax((t @ wq) @ jnp.swapaxes(t @ wk, 1, 2) / 2.0, axis=-1)
      return jnp.mean(t + jnp.tanh(att @ (t @ wv)), axis=1) @ p["wo"]

    tap = jaxcam.function_tap(body, head, params, layout=jaxcam.layouts.tokens(prefix=1))
    x = jnp.asarray(rng.standard_normal((2, 2, 2, d)))
    ids = np.array([0, 2])
    diag = derivatives.diagonals(tap, x, ids, strategy="generic", chunk_size=5)
    for b in range(2):

      def score(flat, b=b):
        tokens = body(params, x[b : b + 1]).at[:, 1:].set(flat.reshape(1, 4, d))
        return head(params, None, tokens)[0, ids[b]]

      flat = x[b].reshape(-1)
      second = jnp.diagonal(jax.hessian(score)(flat))
      third = jnp.einsum("iii->i", jax.jacfwd(jax.hessian(score))(flat))
      np.testing.assert_allclose(np.asarray(diag.second[b]).reshape(-1), second, rtol=1e-10, atol=1e-13)
      np.testing.assert_allclose(np.asarray(diag.third[b]).reshape(-1), third, rtol=1e-10, atol=1e-13)
    assert np.all(np.isfinite(np.asarray(jaxcam.gradcam_pp(tap, x, ids, derivatives="exact"))))
    # mean pooling over the tokens (CLS included) + Dense: the structured strategy applies, checked against generic
    pooled = jaxcam.function_tap(body, lambda p, x, t: jnp.tanh(jnp.mean(t, axis=1) @ p["wo"]), params,
                                 layout=jaxcam.layouts.tokens(prefix=1))  # fmt: skip
    auto = derivatives.diagonals(pooled, x, ids)
    generic = derivatives.diagonals(pooled, x, ids, strategy="generic")
    assert auto.strategy == "structured" and float(auto.check) < 1e-10
    np.testing.assert_allclose(auto.third, generic.third, rtol=1e-10, atol=1e-13)


@pytest.mark.fast
def test_pooling_detection_sees_layouts_avg_pool_and_call_wrappers():
  from jaxcam.derivatives import enters_only_through_spatial_sum as only_sums

  a = jnp.ones((2, 4, 4, 3))
  w = jnp.ones((3, 5))
  cls = jnp.ones((2, 1, 3))
  only_through_sums = {
    "channels-first mean (Equinox)": lambda t: jnp.moveaxis(t, -1, 1).mean(axis=(2, 3)) @ w,
    "full-window avg_pool (HF ResNet)": lambda t: nn.avg_pool(t, (4, 4)).reshape(2, 3) @ w,
    "tokens + CLS, mean over tokens": lambda t: jnp.concatenate([cls, t.reshape(2, 16, 3)], axis=1).mean(1) @ w,
    "under remat": jax.checkpoint(lambda t: jnp.tanh(t.mean((1, 2)) @ w)),
    "under jit and custom_jvp": jax.jit(lambda t: jax.nn.relu(t.mean((1, 2))) @ w),
  }
  for name, head in only_through_sums.items():
    assert only_sums(head, a), name
  elsewhere = {
    "a ReLU per position": lambda t: jax.nn.relu(t).mean((1, 2)) @ w,
    "the CLS token only": lambda t: jnp.concatenate([cls, t.reshape(2, 16, 3)], axis=1)[:, 0] @ w,
    "a 2x2 avg_pool": lambda t: nn.avg_pool(t, (2, 2)).mean((1, 2)) @ w,
    "a sum over one spatial axis": lambda t: t.sum(1).max(1) @ w,
  }
  for name, head in elsewhere.items():
    assert not only_sums(head, a), name


@pytest.mark.parametrize(
  "head_name",
  # the float64 brute force of the conv / attention / layernorm heads takes 13-30 s each on 2 cores: .ci/run's
  # slow tier runs them (the GAP heads stay in the default run)
  [pytest.param(h, marks=pytest.mark.slow) if h in SLOW_HEADS else h for h in sorted(HEADS)],
)
@pytest.mark.parametrize("kind", ["logit", "log_softmax"])
def test_diagonals_equal_brute_force_float64(head_name, kind):
  head, structured = HEADS[head_name]
  with jax.enable_x64(True):
    p = _params()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((B, H, W, C)), jnp.float64)
    tap = _tap(head, p)
    ids = jnp.array([1, 3])
    a = tap(x)[1]
    ref2, ref3 = _brute(head, p, a, kind, [1, 3])
    strategies = ["generic"] + (["structured"] if structured else [])
    for strategy in strategies:
      d = derivatives.diagonals(tap, x, TARGETS[kind](ids), strategy=strategy, chunk_size=7)
      assert d.second.dtype == jnp.float64 and d.strategy == strategy
      g_, d2_, d3_ = d  # unpacks like the contract: each shaped like A
      assert d2_.shape == a.shape and g_.shape == a.shape
      for got, ref in ((d2_, ref2), (d3_, ref3)):
        if np.max(np.abs(ref)) == 0:
          assert np.max(np.abs(got)) == 0, (head_name, kind, strategy)
        else:
          assert _rel_err(np.asarray(got), ref) <= 1e-10, (head_name, kind, strategy)
    if not structured:
      with pytest.raises(ValueError, match="strategy='structured' needs"):
        derivatives.diagonals(tap, x, TARGETS[kind](ids), strategy="structured")


@pytest.mark.fast
def test_softmax_target_structured_equals_generic():
  head, _ = HEADS["gap_silu_mlp"]
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((B, H, W, C)), jnp.float64)
    tap = _tap(head, _params(3))
    t = jaxcam.targets.softmax(jnp.array([0, 3]))
    gen = derivatives.diagonals(tap, x, t, strategy="generic")
    st = derivatives.diagonals(tap, x, t, strategy="structured")
    np.testing.assert_allclose(st.second, gen.second, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(st.third, gen.third, rtol=1e-10, atol=1e-14)
    assert float(st.check) < 1e-10


def test_results_independent_of_chunk_size():
  head, _ = HEADS["conv_gelu"]
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(4).standard_normal((B, H, W, C)), jnp.float64)
    tap = _tap(head, _params(5))
    runs = [derivatives.diagonals(tap, x, jnp.array([0, 1]), strategy="generic", chunk_size=c) for c in (1, 5, 12)]
    for r in runs[1:]:
      np.testing.assert_allclose(r.second, runs[0].second, rtol=1e-12, atol=1e-15)
      np.testing.assert_allclose(r.third, runs[0].third, rtol=1e-12, atol=1e-15)


def test_exp_convention_logit_piecewise_linear_is_exactly_the_approximation():
  x, cases = piecewise_linear_nets()
  for module, variables, layer in cases:
    tap = jaxcam.linen_tap(module, variables, layer)
    exact = jaxcam.gradcam_pp(tap, x, target=jnp.array([1, 2]), derivatives="exact", normalize=False)
    approx = jaxcam.gradcam_pp(tap, x, target=jnp.array([1, 2]), normalize=False)
    np.testing.assert_allclose(exact, approx, rtol=1e-6, atol=1e-9)
    d = derivatives.diagonals(tap, x, jnp.array([1, 2]))
    assert float(jnp.abs(d.second).max()) == 0.0 and float(jnp.abs(d.third).max()) == 0.0


@pytest.mark.fast
def test_auto_refuses_silent_minutes_and_cross_check_catches_wrong_declaration():
  x, cases = piecewise_linear_nets()
  module, variables, _ = cases[0]
  tap = jaxcam.linen_tap(module, variables, "body_0")  # 12*12*6 = 864 directions
  with pytest.raises(ValueError, match="864 directions"):
    derivatives.diagonals(tap, x, jnp.array([0, 1]), max_generic_directions=500)

  class Lying(nn.Module):  # declares a GAP head for a layer followed by a conv + tanh
    default_layer = "a"
    head_structure = "gap_dense"

    @nn.compact
    def __call__(self, x):
      a = nets.ConvBlock(4, name="a")(x)
      return nn.Dense(3)(jnp.tanh(nn.Conv(4, (3, 3))(a)).mean((1, 2)))

  lying = Lying()
  tap = jaxcam.linen_tap(lying, lying.init(jax.random.key(0), x))
  d = derivatives.diagonals(tap, x, jnp.array([0, 1]))
  assert d.strategy == "structured" and float(d.check) > 1e-3 and np.isnan(d.second).all()
  with pytest.raises(ValueError, match="failed its cross-check"):
    jaxcam.gradcam_pp(tap, x, derivatives="exact")


@pytest.mark.fast
def test_no_overflow_for_logits_of_1000():
  x, cases = piecewise_linear_nets()
  module, variables, layer = cases[1]
  shifted = jax.tree.map(lambda a: a, variables)
  shifted["params"]["fc"]["bias"] = variables["params"]["fc"]["bias"] + 1000.0
  t = jnp.array([1, 2])
  base = jaxcam.gradcam_pp(jaxcam.linen_tap(module, variables), x, target=t, derivatives="exact")
  big = jaxcam.gradcam_pp(jaxcam.linen_tap(module, shifted), x, target=t, derivatives="exact")
  assert np.isfinite(big).all()
  np.testing.assert_allclose(big, base, atol=1e-5)


def test_literal_convention_never_nan():
  x, cases = piecewise_linear_nets()
  module, variables, layer = cases[1]
  tap = jaxcam.linen_tap(module, variables, layer)
  with pytest.warns(UserWarning, match="alpha is 0/0"):
    maps = jaxcam.gradcam_pp(tap, x, target=jnp.array([1, 2]), derivatives="exact", convention="literal")
  assert np.isfinite(maps).all() and not np.any(maps)
  head, _ = HEADS["gap_silu_mlp"]
  smooth = _tap(head, _params(6, jnp.float32))
  xs = jax.random.normal(jax.random.key(3), (B, H, W, C))
  lit = jaxcam.gradcam_pp(smooth, xs, target=jnp.array([0, 1]), derivatives="exact", convention="literal")
  assert np.isfinite(lit).all() and np.any(lit)


def _exact_gradcam_pp_by_brute_force():
  """Exact Grad-CAM++ maps of the log-softmax (Eq. 10, cross terms dropped) from brute-force float64 derivatives of a
  conv + GELU head; call inside ``jax.enable_x64``. Returns the tap, x, the target and the expected raw maps."""
  head, _ = HEADS["conv_gelu"]
  p = _params(8)
  x = jnp.asarray(np.random.default_rng(9).standard_normal((B, H, W, C)), jnp.float64)
  tap = _tap(head, p)
  ids = [2, 0]
  a = tap(x)[1]
  target = jaxcam.targets.log_softmax(jnp.array(ids))
  g = np.asarray(derivatives.diagonals(tap, x, target, strategy="generic")[0])
  h, t = _brute(head, p, a, "log_softmax", ids)
  d2, d3 = g**2 + h, g**3 + 3 * g * h + t
  alpha = np.where(g != 0, d2 / (2 * d2 + np.asarray(a).sum((1, 2), keepdims=True) * d3 + 1e-6), 0)
  w = (np.maximum(g, 0) * alpha).sum((1, 2))
  return tap, x, target, np.maximum(np.einsum("bhwc,bc->bhw", np.asarray(a), w), 0)


def test_exact_alpha_matches_formula_from_brute_force_derivatives():
  """Exact Grad-CAM++ weights = Eq. 10 (cross terms dropped) built from brute-force float64 derivatives."""
  with jax.enable_x64(True):
    tap, x, target, expected = _exact_gradcam_pp_by_brute_force()
    got = jaxcam.gradcam_pp(
      tap, x, target=target, derivatives="exact", strategy="generic", normalize=False, upsample=False
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_the_exact_row_is_grad_cam_pp_with_exact_derivatives():
  """``gradcam_pp_exact`` is a registered row: its own name (and alias) in explain, explain_many and jaxcam.<name>,
  the same brute-force maps, and exact derivatives without asking (no ``derivatives=`` option)."""
  with jax.enable_x64(True):
    tap, x, target, expected = _exact_gradcam_pp_by_brute_force()
    flags = dict(normalize=False, upsample=False)
    ex = jaxcam.explain("gradcam++_exact", tap, x, target, strategy="generic", **flags)
    assert ex.method == "gradcam_pp_exact"
    np.testing.assert_allclose(ex.maps, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(jaxcam.gradcam_pp_exact(tap, x, target, **flags), expected, rtol=1e-7, atol=1e-10)
    many = jaxcam.explain_many(["gradcam_pp", "gradcam_pp_exact"], tap, x, target, allow_expensive=True, **flags)
    np.testing.assert_allclose(many["gradcam_pp_exact"].maps, expected, rtol=1e-7, atol=1e-10)
    assert np.abs(np.asarray(many["gradcam_pp"].maps) - expected).max() > 1e-3  # the approximation differs here
  assert "derivatives" not in jaxcam.get_method("gradcam_pp_exact").defaults()
  assert jaxcam.get_method("gradcam_pp_exact").expensive()  # explain_many(None) and the demo's table leave it out


def test_hvp_and_shapleycam_against_brute_force():
  head, _ = HEADS["layernorm_gelu"]
  with jax.enable_x64(True):
    p = _params(10)
    x = jnp.asarray(np.random.default_rng(11).standard_normal((B, H, W, C)), jnp.float64)
    tap = _tap(head, p)
    ids = [3, 1]
    a = jnp.tanh(x)  # the tap's body
    hv = derivatives.hvp(tap, x, jnp.array(ids), a, a)[:, 0]
    g = np.zeros(a.shape)  # dS/dA by brute force too (jax.grad of the head written here), not jaxcam's tap
    for b in range(B):

      def s(flat, b=b):
        return head(p, a.at[b].set(flat.reshape(a.shape[1:])))[b, ids[b]]

      hess = jax.hessian(s)(a[b].reshape(-1))
      np.testing.assert_allclose(hv[b].reshape(-1), hess @ a[b].reshape(-1), rtol=1e-10, atol=1e-13)
      g[b] = np.asarray(jax.grad(s)(a[b].reshape(-1))).reshape(a.shape[1:])
    w = (g - 0.5 * np.asarray(hv)).mean((1, 2))
    expected = np.einsum("bhwc,bc->bhw", np.asarray(a), w)  # signed (the relu'd maps are all zero here)
    assert np.abs(expected).max() > 1e-2
    got = jaxcam.shapleycam(tap, x, target=jnp.array(ids), normalize=False, upsample=False, relu=False)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.fast
def test_shapleycam_parity_with_pytorch_grad_cam():
  """A smooth (SiLU) head after the layer: H A is not zero, so the fixture tells Shapley-CAM from Grad-CAM."""
  with np.load(os.path.join(FIXTURES, "shapley_parity.npz")) as f:
    d = {k: f[k] for k in f.files}
  tap = jaxcam.linen_tap(nets.ParityCNN(head_act=nn.silu), nets.parity_variables(d))
  x, ids = jnp.asarray(d["x"]), jnp.asarray(d["ids"])
  np.testing.assert_allclose(tap.forward(x), d["logits"], rtol=1e-4, atol=1e-5)
  fwd = core.forward_and_grads(tap, x, ids)
  hv = derivatives.hvp(tap, x, ids, fwd.activations[0], fwd.activations[0])[:, 0]
  assert np.abs(d["pgc/shapleycam/hvp"]).max() > 1e-3  # the fixture's Hessian term is really there
  np.testing.assert_allclose(hv, d["pgc/shapleycam/hvp"], atol=2e-6)
  w = jaxcam.methods.gradient.shapleycam_weights(fwd.activations[0][:, None], fwd.grads[0], hv[:, None])[:, 0]
  np.testing.assert_allclose(w, d["pgc/shapleycam/weights"], atol=1e-6)
  ours = jaxcam.shapleycam(tap, x, target=ids)
  np.testing.assert_allclose(ours, d["pgc/shapleycam/maps"], atol=1e-4)
  np.testing.assert_allclose(jaxcam.gradcam(tap, x, target=ids), d["pgc/gradcam/maps"], atol=1e-4)
  assert np.abs(np.asarray(ours) - d["pgc/gradcam/maps"]).max() > 1e-2  # and it is not Grad-CAM here
