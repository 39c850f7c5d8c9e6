"""The method contract: user rows and providers, traced options, the smooth wrapper, explain_many's grouping, taps
of every kind on one network, pytree outputs, layouts, the chunked map, and a reference for every method."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import providers
from tests import models
from tests import reference as ref
from tests.conftest import light_options

# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def net(small_linen):
  """ConvNet tapped at body_2 (GAP + Dense after it) as a linen, an nnx and a function tap, same weights."""
  module, variables, x = small_linen
  taps = {
    "linen": jaxcam.linen_tap(module, variables, "body_2"),
    "nnx": jaxcam.nnx_tap(models.convnet_nnx(variables), "body_2"),
    "function": jaxcam.function_tap(models.convnet_body, models.convnet_head, variables),
  }
  return taps, variables, x, jnp.array([1, 0, 4])


# --------------------------------------------------------------------------------------------- chunked map


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
def test_chunked_map_and_sum_equal_python_loops(chunk_size):
  xs = {"a": jnp.arange(7.0)[:, None] * jnp.ones((7, 3)), "b": jnp.arange(7)}
  fn = lambda e: jnp.sin(e["a"]) * (e["b"] + 1).astype(jnp.float32)
  expected = np.stack([np.sin(np.arange(3) * 0 + i) * (i + 1) for i in range(7)])
  with jax.numpy_dtype_promotion("strict"):
    np.testing.assert_allclose(jaxcam.chunked_map(fn, xs, chunk_size=chunk_size), expected, rtol=1e-6)
    np.testing.assert_allclose(jaxcam.chunked_sum(fn, xs, chunk_size=chunk_size), expected.sum(0), rtol=1e-5)
    # under jit and grad as well
    g = jax.grad(lambda s: jaxcam.chunked_sum(lambda v: jnp.sum((s * v) ** 2), jnp.arange(5.0), chunk_size=2))(2.0)
  np.testing.assert_allclose(g, 2 * 2.0 * np.sum(np.arange(5.0) ** 2), rtol=1e-6)


def test_chunked_map_errors():
  with pytest.raises(ValueError, match="`chunk_size` to be a positive int.*got 0"):
    jaxcam.chunked_map(jnp.sin, jnp.ones(3), chunk_size=0)
  with pytest.raises(ValueError, match="`chunk_size`.*got 2.5"):
    jaxcam.chunked_sum(jnp.sin, jnp.ones(3), chunk_size=2.5)


# ------------------------------------------------------------------------------ a user's own row + provider


def _drop_scores(tap, x, fwd, *, chunk_size=2):
  """A user's need: S - S_k with channel k of A set to 0, through `tap.head` only, `chunk_size` channels at once."""
  a = fwd.activations[0]
  c = a.shape[-1]
  target = jaxcam.targets.with_ids(fwd.target, fwd.ids)

  def score_without(k):
    keep = 1.0 - jax.nn.one_hot(k, c, dtype=a.dtype)
    return target.evaluate(tap.head(x, a * keep[None, None, None, :]))[1]  # (B, K)

  dropped = jaxcam.chunked_map(score_without, jnp.arange(c), chunk_size=chunk_size)  # (C, B, K)
  return (fwd.scores[..., None] - jnp.moveaxis(dropped, 0, -1),)  # (B, K, C)


def _drop_weights(activations, drops, /):
  del activations
  return drops


DROP = jaxcam.MethodSpec("drop_cam", _drop_weights, "channel", needs=("drop_scores",), title="Drop-CAM")


@pytest.fixture
def drop_provider(monkeypatch):
  monkeypatch.setitem(
    providers.PROVIDERS,
    "drop_scores",
    jaxcam.Provider(
      "drop_scores", _drop_scores, options=(("chunk_size", 2),), expensive=True, cost="one head pass per channel"
    ),
  )


def test_user_method_and_provider_without_editing_the_package(net, drop_provider):
  taps, variables, x, t = net
  tap = taps["linen"]
  maps = jaxcam.explain(DROP, tap, x, target=t, normalize=False, relu=False, upsample=False).maps
  # independent reference: numpy loops over channels through the model's own apply (no tap code)
  a = np.asarray(models.convnet_body(variables, x))
  p = variables["params"]
  head = lambda a: np.asarray(a).mean(axis=(1, 2)) @ np.asarray(p["fc"]["kernel"]) + np.asarray(p["fc"]["bias"])
  rows = np.arange(3)
  full = head(a)[rows, np.asarray(t)]
  w = np.zeros((3, a.shape[-1]))
  for k in range(a.shape[-1]):
    dropped = a.copy()
    dropped[..., k] = 0
    w[:, k] = full - head(dropped)[rows, np.asarray(t)]
  np.testing.assert_allclose(maps, ref.channel_map(w, a), rtol=1e-4, atol=1e-5)
  # its provider's option is an option of the method; chunk size changes nothing
  other = jaxcam.explain(DROP, tap, x, target=t, normalize=False, relu=False, upsample=False, chunk_size=5).maps
  np.testing.assert_allclose(other, maps, rtol=1e-5, atol=1e-6)
  # an expensive need: explain_many refuses it unless asked
  with pytest.raises(ValueError, match="drop_cam.*one head pass per channel.*allow_expensive=True"):
    jaxcam.explain_many([DROP, "gradcam"], tap, x, target=t)
  both = jaxcam.explain_many([DROP, "gradcam"], tap, x, target=t, allow_expensive=True)
  np.testing.assert_allclose(both["drop_cam"].maps, jaxcam.explain(DROP, tap, x, target=t).maps, atol=1e-6)
  # and batch explanation takes the row too
  out = list(jaxcam.explain_batches(DROP, tap, [np.asarray(x)], chunk_size=3))
  np.testing.assert_allclose(out[0]["maps"][:, None], jaxcam.explain(DROP, tap, x).maps[:, None], atol=1e-6)


def test_unknown_need_and_bad_rows(net, drop_provider):
  taps, _, x, _ = net
  with pytest.raises(KeyError, match="need of nope.*'grad'.*register_provider"):
    jaxcam.explain(jaxcam.MethodSpec("nope", _drop_weights, "channel", needs=("grad",)), taps["linen"], x)
  with pytest.raises(ValueError, match="`output` to be one of"):
    jaxcam.MethodSpec("bad", _drop_weights, "weights")
  wrong = jaxcam.MethodSpec("wrong", lambda a, g: g[..., :2], "spatial")
  with pytest.raises(ValueError, match="Method .wrong. .output .spatial.. gave maps of shape \\(3, 1, 6, 6, 2\\)"):
    jaxcam.explain(wrong, taps["linen"], x)
  with pytest.raises(TypeError, match="unexpected option.*'eps'.*its options are \\['chunk_size'"):
    jaxcam.explain(DROP, taps["linen"], x, eps=1.0)


# ------------------------------------------------------------------------------------------ traced options


def test_array_options_are_traced_and_never_recompile(net):
  taps, variables, x, t = net
  tap = taps["linen"]
  kernel = variables["params"]["fc"]["kernel"]
  by_path = jaxcam.cam(tap, x, target=t, fc="fc")
  np.testing.assert_allclose(jaxcam.cam(tap, x, target=t, fc=kernel), by_path, atol=1e-6)
  calls = []

  @jax.jit
  def user(tap, x, kernel):  # the kernel is a tracer here: no special case needed
    calls.append(1)
    return jaxcam.cam(tap, x, target=t, fc=kernel)

  np.testing.assert_allclose(user(tap, x, kernel), by_path, atol=1e-6)
  before = jaxcam.api.TRACES["cam"]
  other = user(tap, x, kernel[:, ::-1])  # a new kernel: same shapes, no retrace
  assert len(calls) == 1 and jaxcam.api.TRACES["cam"] == before
  np.testing.assert_allclose(other, jaxcam.cam(tap, x, target=4 - t, fc="fc"), atol=1e-6)
  # eager: a new array option value reuses the compiled program too
  jaxcam.cam(tap, x, target=t, fc=kernel * 2.0)
  assert jaxcam.api.TRACES["cam"] == before
  with pytest.raises(TypeError, match="option `fc` to be an array .* or a hashable"):
    jaxcam.cam(tap, x, target=t, fc=["fc"])


# ------------------------------------------------------------------------------------------------ smoothing


@jax.jit
def _split_at_body_1(variables, x, ids):
  """ConvNet's A at body_1 and dS/dA, by jax.grad of the rest of the network written here (no jaxcam code)."""
  p = variables["params"]

  def block(y, name, stride):
    k, b = p[name]["conv"]["kernel"], p[name]["conv"]["bias"]
    dims = ("NHWC", "HWIO", "NHWC")
    y = jax.lax.conv_general_dilated(y, k, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dims)
    return jax.nn.relu(y + b[None, None, None, :])

  a = block(block(x, "body_0", 1), "body_1", 2)
  rest = lambda a: block(a, "body_2", 1).mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"][None, :]
  return a, jax.grad(lambda a: rest(a)[jnp.arange(a.shape[0]), ids].sum())(a)


def _smooth_reference(variables, x, ids, key, num_samples, std):
  """Grad-CAM++ of the clean A with dS/dA averaged over the documented noise draws; A and dS/dA from the hand split,
  numpy formulas."""
  a = np.asarray(_split_at_body_1(variables, x, ids)[0], np.float64)
  g = 0.0
  for i in range(num_samples):
    k_noise, _ = jax.random.split(jax.random.fold_in(key, i))
    noisy = x + std * jax.random.normal(k_noise, x.shape, x.dtype)
    g = g + np.asarray(_split_at_body_1(variables, noisy, ids)[1], np.float64)
  g = g / num_samples
  return ref.postprocess(ref.channel_map(ref.gradcam_pp_w(a, g), a), x.shape[1:3]), g


@pytest.fixture(scope="module")
def deep(small_linen):
  """body_1, followed by conv + ReLU + GAP + Dense: dS/dA depends on the input (at body_2 it would not)."""
  module, variables, x = small_linen
  return jaxcam.linen_tap(module, variables, "body_1"), x, jnp.array([1, 0, 4])


def test_smooth_averages_inputs_over_keyed_noise(deep, small_linen):
  tap, x, t = deep
  variables = small_linen[1]
  key = jax.random.key(3)
  spec = jaxcam.smooth("gradcam_pp", num_samples=5, std=0.3, chunk_size=2)
  ex = jaxcam.explain(spec, tap, x, target=t, key=key)
  assert ex.method == "smooth_gradcam_pp"
  expected, g = _smooth_reference(variables, x, t, key, 5, 0.3)
  g_clean = np.asarray(_split_at_body_1(variables, x, t)[1])
  assert np.abs(g - g_clean).max() > 1e-3 * np.abs(g_clean).max()  # the noise moves the gradients here
  np.testing.assert_allclose(ex.maps, expected, atol=2e-4)
  # the map differs from the plain method, and std = 0 gives the plain method back
  assert np.abs(np.asarray(ex.maps) - np.asarray(jaxcam.gradcam_pp(tap, x, target=t))).max() > 1e-2
  zero = jaxcam.smooth("gradcam_pp", num_samples=3, std=0.0)
  np.testing.assert_allclose(
    jaxcam.explain(zero, tap, x, target=t, key=key).maps, jaxcam.gradcam_pp(tap, x, target=t), atol=1e-5
  )
  # chunk size changes nothing; default target: the clean image's top class for every noisy copy
  for chunk in (1,):
    again = jaxcam.explain(
      dataclasses.replace(spec, inputs=dataclasses.replace(spec.inputs, chunk_size=chunk)), tap, x, target=t, key=key
    )
    np.testing.assert_allclose(again.maps, ex.maps, atol=1e-5)
  top = jnp.argmax(tap.forward(x), -1)
  np.testing.assert_allclose(
    jaxcam.explain(spec, tap, x, key=key).maps, jaxcam.explain(spec, tap, x, target=top, key=key).maps, atol=1e-6
  )


def test_smooth_key_is_traced_under_jit(deep):
  tap, x, t = deep
  spec = jaxcam.smooth("gradcam", num_samples=3, std=0.5)
  f = jax.jit(lambda tap, x, key: jaxcam.explain(spec, tap, x, target=t, key=key).maps)
  m0 = f(tap, x, jax.random.key(0))
  before = jaxcam.api.TRACES[spec.name]
  m1 = f(tap, x, jax.random.key(1))
  assert jaxcam.api.TRACES[spec.name] == before  # a new key never retraces
  assert np.abs(np.asarray(m0) - np.asarray(m1)).max() > 1e-3
  np.testing.assert_allclose(m0, jaxcam.explain(spec, tap, x, target=t, key=jax.random.key(0)).maps, atol=1e-6)


def test_smooth_errors(net):
  taps, _, x, _ = net
  spec = jaxcam.smooth("layercam", num_samples=2)
  with pytest.raises(ValueError, match="smooth_layercam draws noise: pass `key="):
    jaxcam.explain(spec, taps["linen"], x)
  with pytest.raises(ValueError, match="`num_samples` to be a positive int, got 0"):
    jaxcam.smooth("gradcam", num_samples=0)
  with pytest.raises(ValueError, match="`std` to be a non-negative float"):
    jaxcam.smooth("gradcam", std=-1.0)
  with pytest.raises(ValueError, match="smooth_layercam.*2 x .*allow_expensive"):
    jaxcam.explain_many([spec], taps["linen"], x)


# ------------------------------------------------------------------------------- explain_many's grouping


def test_explain_many_shares_one_pass_and_equals_explain(net):
  taps, _, x, t = net
  tap = taps["linen"]
  many = jaxcam.explain_many(None, tap, x, target=t)
  keyed = {s.name for s in jaxcam.METHODS.values() if "key" in s.defaults()}  # a key must be passed: explain only
  assert "randomcam" in keyed and "finercam" in many and "refinecam" in many
  assert set(many) == {s.name for s in jaxcam.METHODS.values() if not s.expensive() and s.applies(tap)} - keyed
  assert "legrad" not in many and "cam" in many  # LeGrad reads transformer blocks; this net declares fc_layer
  with pytest.raises(ValueError, match="randomcam needs options"):
    jaxcam.explain_many(["gradcam", "randomcam"], tap, x, target=t)
  key = jax.random.key(7)  # a key lets the keyed cheap rows share the pass too
  keyed_many = jaxcam.explain_many(["gradcam", "randomcam"], tap, x, target=t, key=key)
  np.testing.assert_allclose(
    keyed_many["randomcam"].maps, jaxcam.explain("randomcam", tap, x, target=t, key=key).maps, atol=1e-6
  )
  for name, ex in many.items():
    np.testing.assert_allclose(ex.maps, jaxcam.explain(name, tap, x, target=t).maps, atol=1e-6, err_msg=name)
  exact = jaxcam.get_method("gradcam_pp").expensive({"derivatives": "exact"})
  assert exact and not jaxcam.get_method("gradcam_pp").expensive()


# ----------------------------------------------------------------------------- every tap kind, one network


@pytest.mark.parametrize("kind", ["nnx", "function"])
@pytest.mark.parametrize("name", jaxcam.method_names())
def test_every_method_on_nnx_and_function_taps(net, kind, name):
  """The same network as a linen, nnx and function tap gives the same maps; jit equals op-by-op execution."""
  taps, variables, x, t = net
  opts = {"fc": variables["params"]["fc"]["kernel"]} if name == "cam" and kind == "function" else {}
  opts.update(light_options(name))
  if not jaxcam.get_method(name).applies(taps["linen"]):  # LeGrad: linen transformer blocks only
    with pytest.raises(ValueError, match="flax.linen attention"):
      jaxcam.explain(name, taps[kind], x, target=t, **opts)
    return
  expected = jaxcam.explain(name, taps["linen"], x, target=t, **light_options(name)).maps
  maps = jaxcam.explain(name, taps[kind], x, target=t, **opts).maps
  np.testing.assert_allclose(maps, expected, atol=1e-5)
  if jaxcam.get_method(name).expensive():
    return  # op by op, many-copy methods take seconds; test_common_contract compares them on the linen tap
  with jax.disable_jit():
    eager = jaxcam.explain(name, taps[kind], x, target=t, **opts).maps
  np.testing.assert_allclose(maps, eager, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- taps


def test_any_pytree_output_and_the_logits_check_moves_to_class_ids():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  plain = models.GapDense()
  variables = plain.init(jax.random.key(1), x)
  tap = jaxcam.linen_tap(models.DictOutput(), variables, "features")
  out, a = tap(x)
  assert set(out) == {"logits", "embedding"} and a.shape == (2, 6, 6, 5)
  with pytest.raises(ValueError, match="logits of shape \\(B, classes\\) for a class-id target.*callable target"):
    jaxcam.gradcam(tap, x, target=1)
  maps = jaxcam.gradcam(tap, x, target=lambda o: o["logits"][:, 1])
  np.testing.assert_allclose(
    maps, jaxcam.gradcam(jaxcam.linen_tap(plain, variables, "features"), x, target=1), atol=1e-6
  )
  emb = jaxcam.explain("layercam", tap, x, target=lambda o: o["embedding"][:, 2])
  assert emb.maps.shape == (2, 6, 6) and set(emb.logits) == {"logits", "embedding"}


def test_forward_runs_the_plain_model(small_linen):
  module, variables, x = small_linen
  bogus = jaxcam.linen_tap(module, variables, "no/such/layer")  # forward never looks for the layer
  np.testing.assert_allclose(bogus.forward(x), module.apply(variables, x), atol=1e-6)
  nnx_tap = jaxcam.nnx_tap(models.convnet_nnx(variables), "body_1")
  np.testing.assert_allclose(nnx_tap.forward(x), module.apply(variables, x), atol=1e-6)
  jaxpr = str(jax.make_jaxpr(bogus.forward)(x))
  assert jaxpr.count("conv_general_dilated") == 3  # one pass, nothing recorded twice


@dataclasses.dataclass(frozen=True)
class _Tokens:
  """A layout: the layer's value is (B, h*w, C) tokens."""

  h: int
  w: int

  def to_grid(self, value):
    return value.reshape(value.shape[0], self.h, self.w, value.shape[-1])

  def from_grid(self, grid, value):
    return grid.reshape(value.shape)


def test_layout_hook_reshapes_tokens_to_a_grid(net):
  taps, variables, x, t = net
  body = lambda p, x: (lambda a: a.reshape(a.shape[0], -1, a.shape[-1]))(models.convnet_body(p, x))
  head = lambda p, x, tok: tok.mean(axis=1) @ p["params"]["fc"]["kernel"] + p["params"]["fc"]["bias"][None, :]
  tap = jaxcam.function_tap(body, head, variables, layout=_Tokens(6, 6))
  assert tap(x)[1].shape == (3, 6, 6, 8)
  for name in ("gradcam", "layercam", "shapleycam"):
    np.testing.assert_allclose(
      jaxcam.explain(name, tap, x, target=t).maps, jaxcam.explain(name, taps["linen"], x, target=t).maps, atol=1e-5
    )


def test_taps_targets_and_diagonals_are_registered_dataclasses(net):
  taps, _, x, t = net
  for tap in taps.values():
    leaves, treedef = jax.tree_util.tree_flatten(tap)
    assert dataclasses.is_dataclass(tap) and leaves
    assert jax.tree_util.tree_unflatten(treedef, leaves).layer == tap.layer
  target = jaxcam.targets.softmax(t)
  assert jax.tree_util.tree_leaves(target)[0] is t and dataclasses.is_dataclass(target)
  d = jaxcam.derivatives.diagonals(taps["linen"], x, t)
  g, d2, d3 = d
  assert dataclasses.is_dataclass(d) and d.strategy in ("structured", "generic") and g.shape == d2.shape == d3.shape
  assert jax.tree_util.tree_structure(d).num_leaves == 4


# ---------------------------------------------------------------------------------- references, all of them


def test_every_registered_method_has_an_independent_reference():
  """A new method fails here until a numpy formula, a peer fixture or a brute-force check covers it."""
  from tests import test_beyond, test_derivatives, test_family, test_methods, test_parity, test_perturbation

  numpy_pipeline = set(test_methods.REF_RAW) | {"reciprocam", "iscam", "sscam"}  # against numpy formulas / loops
  peer_fixtures = set(test_parity.PGC) | {"cam", "scorecam", "ablationcam", "sscam", "iscam"}  # pgc / torchcam
  brute_force = {"shapleycam"}  # jax.hessian products + pytorch-grad-cam's double backward
  assert hasattr(test_derivatives, "test_hvp_and_shapleycam_against_brute_force")
  assert hasattr(test_parity, "test_torchcam_cam")
  for name in (
    "test_reciprocam_against_numpy",
    "test_scorecam_matches_pytorch_grad_cam",
    "test_ablationcam_matches_pytorch_grad_cam",
    "test_sscam_matches_torchcam_given_its_noise",
    "test_iscam_matches_torchcam",
    "test_sscam_draws_the_documented_noise_from_its_key",
    "test_iscam_against_numpy",
  ):
    assert hasattr(test_perturbation, name), name
  family = {  # tests/test_family.py: peer fixtures and numpy references
    "fem": "test_rows_match_pytorch_grad_cam",
    "kpcacam": "test_kpca_kernels_against_numpy",
    "segeigencam": "test_rows_match_pytorch_grad_cam",
    "finercam": "test_finercam_torchcam_convention",
    "refinecam": "test_refinecam_matches_both_peers",
    "smooth_gradcam_pp": "test_smooth_gradcam_pp_intended_formula",
  }
  for test in family.values():
    assert hasattr(test_family, test), test
  # a baseline: keyed uniform weights, checked for range, determinism and batch independence (no formula to match)
  exceptions: dict[str, str] = {"randomcam": "test_family.test_randomcam_is_keyed_uniform_and_batch_independent"}
  assert hasattr(test_family, exceptions["randomcam"].split(".")[1])
  assert hasattr(test_beyond, "test_legrad_matches_torchcam")  # torchcam's LeGrad on a torchvision ViT
  covered = numpy_pipeline | peer_fixtures | brute_force | set(family) | set(exceptions) | {"legrad"}
  missing = sorted(set(jaxcam.method_names()) - covered)
  assert not missing, f"methods without an independent reference: {missing}"
