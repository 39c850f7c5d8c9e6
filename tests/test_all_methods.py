"""The cross-cutting table: every registered method x every property (shape, range, jit = eager, vmap, dtypes,
nnx and function taps, volumes, an independent reference per row, differentiability, degenerate inputs)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import nets
from tests import reference as ref
from tests.conftest import light_options

REF_RAW = {
  "gradcam": lambda a, g: ref.channel_map(ref.gradcam_w(a, g), a),
  "gradcam_pp": lambda a, g: ref.channel_map(ref.gradcam_pp_w(a, g), a),
  "xgradcam": lambda a, g: ref.channel_map(ref.xgradcam_w(a, g), a),
  "layercam": ref.layercam_raw,
  "hirescam": ref.hirescam_raw,
  "gradcam_elementwise": ref.gradcam_elementwise_raw,
  "eigencam": lambda a, g: ref.eigen_raw(a),
  "eigengradcam": lambda a, g: ref.eigen_raw(a * g),
}


def _hand_split(small_linen, classes):
  """A and dS/dA by jax.grad of the network split by hand (no tap machinery)."""
  module, variables, x = small_linen
  p = variables["params"]

  def block(y, name, stride):
    k, b = p[name]["conv"]["kernel"], p[name]["conv"]["bias"]
    y = jax.lax.conv_general_dilated(
      y, k, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    return jax.nn.relu(y + b[None, None, None, :])

  a = block(block(x, "body_0", 1), "body_1", 2)

  def head(a):
    y = block(a, "body_2", 1).mean(axis=(1, 2))
    return y @ p["fc"]["kernel"] + p["fc"]["bias"][None, :]

  g = jax.grad(lambda a: head(a)[jnp.arange(a.shape[0]), classes].sum())(a)
  return np.asarray(a, np.float64), np.asarray(g, np.float64)


@pytest.fixture(scope="module")
def common_tokens():
  """A torchvision-style ViT tapped on a block's tokens, for the rows that read transformer blocks (LeGrad)."""
  module = nets.TvViT(patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=5, num_patches=36)
  x = jax.random.uniform(jax.random.key(3), (3, 24, 24, 3))
  variables = module.init(jax.random.key(4), x)
  return jaxcam.linen_tap(module, variables, "layers_0", layout=jaxcam.layouts.tokens()), x, jnp.array([1, 0, 4])


def _smooth_tap(dtype):
  rng = np.random.default_rng(0)
  params = {
    "k1": jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 0.5, dtype),
    "k2": jnp.asarray(rng.standard_normal((3, 3, 4, 4)) * 0.5, dtype),
    "w": jnp.asarray(rng.standard_normal((4, 3)), dtype),
  }

  def conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def body(p, x):
    return jax.nn.softplus(conv(x, p["k1"]))

  def head(p, x, a):
    return jnp.tanh(conv(a, p["k2"])).mean(axis=(1, 2)) @ p["w"]

  return body, head, params


@pytest.mark.slow  # every cheap row compiled for volumes (~20 s cold)
def test_volume_methods_run_and_recipro_cam_uses_the_3d_kernel(net3d):
  module, variables, x = net3d
  tap = jaxcam.linen_tap(module, variables, "block", input_layout="NDHWC")
  out = jaxcam.explain_many(None, tap, x, key=jax.random.key(0))
  assert len(out) >= 10 and all(ex.maps.shape == (2, 6, 10, 8) for ex in out.values()), {
    k: v.maps.shape for k, v in out.items()
  }
  assert all(bool(jnp.all(jnp.isfinite(ex.maps))) for ex in out.values())
  cam = jaxcam.cam(tap, x, normalize=False, upsample=False)
  np.testing.assert_allclose(cam, jaxcam.gradcam(tap, x, normalize=False, upsample=False) * 60, rtol=1e-4, atol=1e-5)
  # Recipro-CAM's neighbourhood in 3-D: the outer product of [1, 2, 1] / 4 along each axis, clipped at the border
  a = jax.random.normal(jax.random.key(2), (3, 5, 4, 2))
  from jaxcam.methods import perturbation

  feats = np.asarray(perturbation.reciprocam_features(a, jnp.asarray(np.ravel_multi_index((0, 2, 3), (3, 5, 4)))))
  k = np.zeros((3, 5, 4))
  for dd, dh, dw in np.ndindex(3, 3, 3):
    i, j, m = dd - 1, 2 + dh - 1, 3 + dw - 1
    if 0 <= i < 3 and 0 <= j < 5 and 0 <= m < 4:
      k[i, j, m] = [1, 2, 1][dd] * [1, 2, 1][dh] * [1, 2, 1][dw] / 64
  np.testing.assert_allclose(feats, k[..., None] * np.asarray(a)[0, 2, 3], rtol=1e-6)


@pytest.mark.parametrize("kind", ["nnx", "function"])
@pytest.mark.parametrize("name", jaxcam.method_names())
def test_every_method_on_nnx_and_function_taps(net, kind, name):
  """The same network as a linen, nnx and function tap gives the same maps; jit equals op-by-op execution."""
  taps, variables, x, t = net
  opts = {"fc": variables["params"]["fc"]["kernel"]} if name == "cam" and kind == "function" else {}
  opts.update(light_options(name))
  # LeGrad reads linen transformer blocks, FullGrad linen taps; CAM reads any tap once given its kernel (fc=)
  if not jaxcam.get_method(name).applies(taps[kind]) and "fc" not in opts:
    with pytest.raises(ValueError, match="flax.linen attention|intercepts submodule calls"):
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


@pytest.mark.fast
def test_every_registered_method_has_an_independent_reference():
  """A new method fails here until a numpy formula, a peer fixture or a brute-force check covers it."""
  import importlib

  from tests.methods import test_gradient

  def check(where: str) -> None:
    module, test = where.split("::")
    assert hasattr(importlib.import_module(f"tests.{module}"), test), where

  numpy_pipeline = set(REF_RAW) | {"reciprocam", "iscam", "sscam"}  # against numpy formulas / loops
  peer_fixtures = set(test_gradient.PGC) | {"cam", "scorecam", "ablationcam", "sscam", "iscam"}  # pgc / torchcam
  brute_force = {"shapleycam", "gradcam_pp_exact"}  # jax.hessian / jacfwd in float64; pgc's double backward
  check("test_derivatives::test_hvp_and_shapleycam_against_brute_force")
  check("test_derivatives::test_exact_alpha_matches_formula_from_brute_force_derivatives")
  check("test_derivatives::test_the_exact_row_is_grad_cam_pp_with_exact_derivatives")
  check("methods.test_classic::test_torchcam_cam")
  for name in (
    "test_reciprocam_against_numpy",
    "test_scorecam_matches_pytorch_grad_cam",
    "test_ablationcam_matches_pytorch_grad_cam",
    "test_sscam_matches_torchcam_given_its_noise",
    "test_iscam_matches_torchcam",
    "test_sscam_draws_the_documented_noise_from_its_key",
    "test_iscam_against_numpy",
  ):
    check(f"methods.test_perturbation::{name}")
  family = {  # peer fixtures and numpy references, each in its module's test file
    "fem": "methods.test_factorization::test_rows_match_pytorch_grad_cam",
    "kpcacam": "methods.test_factorization::test_kpca_kernels_against_numpy",
    "segeigencam": "methods.test_factorization::test_rows_match_pytorch_grad_cam",
    "finercam": "test_wrappers::test_finercam_torchcam_convention",
    "refinecam": "test_wrappers::test_refinecam_matches_both_peers",
    "smooth_gradcam_pp": "methods.test_gradient::test_smooth_gradcam_pp_intended_formula",
    "legrad": "methods.test_attention::test_legrad_matches_torchcam",  # torchcam's LeGrad on a torchvision ViT
    "fullgrad": "test_fullgradient::test_fullgrad_against_numpy_on_a_conv_bias_net",  # and pgc's FullGrad (slow)
    "gscorecam": "methods.test_perturbation::test_gscorecam_against_numpy",
    "opticam": "methods.test_opticam::test_steps_equal_a_hand_written_optax_loop",
    "attnlrp": "test_lrp::test_attnlrp_matches_lxt_explicit_on_a_small_vit",
    "lrp_cam": "test_lrp::test_rows_through_explain_are_lrp0_gradient_x_input_on_a_relu_convnet",
    "attention_rollout": "methods.test_rollout::test_attention_rollout_against_numpy",
    "gradient_rollout": "methods.test_rollout::test_gradient_rollout_against_the_hand_vit",  # hand-written ViT
  }
  for where in family.values():
    check(where)
  # a baseline: keyed uniform weights, checked for range, determinism and batch independence (no formula to match)
  exceptions = {"randomcam": "methods.test_classic::test_randomcam_is_keyed_uniform_and_batch_independent"}
  check(exceptions["randomcam"])
  covered = numpy_pipeline | peer_fixtures | brute_force | set(family) | set(exceptions)
  missing = sorted(set(jaxcam.method_names()) - covered)
  assert not missing, f"methods without an independent reference: {missing}"


@pytest.mark.parametrize("name", sorted(REF_RAW))
def test_end_to_end_matches_numpy_pipeline(small_linen, name):
  module, variables, x = small_linen
  classes = np.array([0, 3, 4])
  a, g = _hand_split(small_linen, classes)
  raw = REF_RAW[name](a, g)
  expected = ref.postprocess(raw, x.shape[1:3])
  maps = jaxcam.explain(name, jaxcam.linen_tap(module, variables), x, target=classes).maps
  if name.startswith("eigen"):  # numpy's SVD sign is arbitrary: each map is the pipeline of +raw or of -raw
    expected = ref.up_to_sign(raw, np.asarray(maps), lambda m: ref.postprocess(m, x.shape[1:3]))
  np.testing.assert_allclose(maps, expected, atol=2e-4)


SLOW_CONTRACT = ("legrad", "attention_rollout", "gradient_rollout")  # the ViT's rows: 12-45 s each op by op


@pytest.mark.parametrize(  # the ViT rows compile for long (op by op included): the slow tier runs them
  "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CONTRACT else n for n in jaxcam.method_names()]
)
def test_common_contract(common, common_tokens, name):
  tap, x, t = common if jaxcam.get_method(name).applies(common[0]) else common_tokens
  fn = functools.partial(getattr(jaxcam, name), **light_options(name))
  maps = fn(tap, x, target=t)
  assert maps.shape == x.shape[:3] and maps.dtype == jnp.float32
  assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
  at_layer = fn(tap, x, target=t, upsample=False)  # min-max happens at layer resolution
  np.testing.assert_allclose(at_layer.max(axis=(1, 2)), 1.0, atol=1e-4)
  # jit (ours, and the user's with options bound by partial) == op-by-op execution
  # op by op: every cheap method, and Score-CAM for the chunked-map family (one representative: op by op, the
  # others' copies take 10-20 s each here, threefry's noise most of all)
  spec = jaxcam.get_method(name)
  if not spec.expensive() or name == "scorecam":
    with jax.disable_jit():
      eager = fn(tap, x, target=t)
    np.testing.assert_allclose(maps, eager, atol=1e-5)
  jitted = jax.jit(functools.partial(fn, normalize=True))(tap, x, target=t)
  np.testing.assert_allclose(jitted, maps, atol=1e-6)
  # vmap over single images == the batched call
  single = jax.vmap(lambda xi, ti: fn(tap, xi[None], target=ti[None])[0])(x, t)
  np.testing.assert_allclose(single, maps, atol=1e-5)
  # raw maps at layer resolution
  raw = fn(tap, x, target=t, normalize=False, upsample=False)
  # both taps' layers are 6x6 grids; an "input_map" row (FullGrad) reads the whole model at the input's size
  assert raw.shape == (x.shape[0],) + (x.shape[1:3] if spec.output == "input_map" else (6, 6))
  # bfloat16 input: float32 maps within a tolerance of the float32 result
  maps_bf16 = fn(tap, x.astype(jnp.bfloat16), target=t)
  assert maps_bf16.dtype == jnp.float32
  assert float(jnp.abs(maps_bf16 - maps).mean()) < 0.05


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "layercam", "xgradcam"])
def test_maps_differentiable_wrt_inputs_and_params(name):
  with jax.enable_x64(True):
    body, head, params = _smooth_tap(jnp.float64)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 2), jnp.float64)
    probe = jax.random.normal(jax.random.key(1), (2, 5, 5), jnp.float64)
    fn = getattr(jaxcam, name)

    def loss(x, p):
      return jnp.sum(fn(jaxcam.function_tap(body, head, p), x, target=jnp.array([0, 2])) * probe)

    gx, gp = jax.grad(loss, argnums=(0, 1))(x, params)
    eps = 1e-6
    for direction_seed in range(2):
      dx = jax.random.normal(jax.random.key(10 + direction_seed), x.shape, jnp.float64)
      fd = (loss(x + eps * dx, params) - loss(x - eps * dx, params)) / (2 * eps)
      np.testing.assert_allclose(jnp.vdot(gx, dx), fd, rtol=1e-5, atol=1e-8)
    dw = jax.random.normal(jax.random.key(3), params["w"].shape, jnp.float64)
    fd = (loss(x, {**params, "w": params["w"] + eps * dw}) - loss(x, {**params, "w": params["w"] - eps * dw})) / (
      2 * eps
    )
    np.testing.assert_allclose(jnp.vdot(gp["w"], dw), fd, rtol=1e-5, atol=1e-8)


def test_constant_input_gives_finite_maps(common):
  """A blank image (every activation constant over space): defined maps, never NaN, for every row."""
  tap, x, t = common
  blank = jnp.full_like(x[:1], 0.5)
  many = jaxcam.explain_many(None, tap, blank, target=t[:1])  # the cheap rows, one compiled program
  rest = [n for n in jaxcam.method_names() if n not in many]
  assert rest, "the keyed and expensive rows are checked one by one below"
  maps = {n: ex.maps for n, ex in many.items()}
  for name in rest:
    if jaxcam.get_method(name).applies(tap):  # LeGrad reads transformer blocks: test_common_contract has it
      maps[name] = getattr(jaxcam, name)(tap, blank, target=t[:1], **light_options(name))
  for name, m in maps.items():
    m = np.asarray(m)
    assert np.isfinite(m).all() and m.min() >= 0 and m.max() <= 1, name
