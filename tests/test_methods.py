"""Every method: formulas against numpy, the common table-driven checks, CAM, differentiability."""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcam
from jaxcam import postprocess
from jaxcam.methods import factorization, gradient
from tests import models
from tests import reference as ref
from tests.conftest import light_options

# ------------------------------------------------------------------------------------ weight formulas


def _ag(seed=0, shape=(2, 3, 5, 4, 6)):
  rng = np.random.default_rng(seed)
  a = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)  # post-ReLU activations, some zeros
  g = rng.standard_normal(shape).astype(np.float32)
  g[..., 0, 0, :] = 0.0  # exact zeros exercise alpha's "0 where g == 0" rule
  return a, g


@pytest.mark.parametrize(
  "fn,ref_fn",
  [
    (gradient.gradcam_weights, ref.gradcam_w),
    (gradient.gradcam_pp_weights, ref.gradcam_pp_w),
    (gradient.xgradcam_weights, ref.xgradcam_w),
  ],
)
def test_channel_weights_match_numpy(fn, ref_fn, strict_promotion):
  a, g = _ag()
  np.testing.assert_allclose(fn(a, g), ref_fn(a.astype(np.float64), g.astype(np.float64)), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize(
  "fn,ref_raw",
  [
    (gradient.layercam_weights, ref.layercam_raw),
    (gradient.hirescam_weights, ref.hirescam_raw),
    (gradient.gradcam_elementwise_weights, ref.gradcam_elementwise_raw),
  ],
)
def test_spatial_weights_match_numpy(fn, ref_raw, strict_promotion):
  a, g = _ag(1)
  np.testing.assert_allclose(postprocess.combine(fn(a, g), a), ref_raw(a, g), rtol=1e-5, atol=1e-6)


def test_eigen_projection_matches_numpy_svd(strict_promotion):
  """The projection is numpy's SVD one up to the sign of the singular vector, per image; the sign is the documented
  rule: the projection correlates non-negatively with the centred channel-sum energy of the features."""
  a, g = _ag(2, (2, 6, 5, 7))
  for got, f in ((factorization.eigencam_map(a), a), (factorization.eigengradcam_map(a, g), a * g)):
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, ref.up_to_sign(ref.eigen_raw(f), got), rtol=1e-4, atol=1e-5)
    energy = f.astype(np.float64).sum(-1)
    energy = energy - energy.mean(axis=(-2, -1), keepdims=True)
    assert np.all(np.sum(got * energy, axis=(-2, -1)) >= 0)


def test_gradcam_pp_zero_denominator_gives_zero_not_nan(strict_promotion):
  a = np.ones((1, 2, 2, 1), np.float32)
  g = np.full((1, 2, 2, 1), -0.5, np.float32)  # 2 g^2 + (sum A) g^3 = 0.5 - 0.5 = 0
  w = gradient.gradcam_pp_weights(a, g, eps=0.0)
  assert np.isfinite(w).all() and float(w[0, 0]) == 0.0


# ------------------------------------------------------------------------ end to end vs numpy pipeline


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


# ---------------------------------------------------------------------------------- CAM (classic)


def test_cam_equals_gradcam_up_to_scale_on_gap_dense():
  module = models.GapDense()
  x = jax.random.normal(jax.random.key(4), (2, 7, 7, 3))
  variables = module.init(jax.random.key(5), x)
  tap = jaxcam.linen_tap(module, variables)
  raw_cam = jaxcam.cam(tap, x, target=jnp.array([1, 2]), normalize=False, relu=False, upsample=False)
  raw_grad = jaxcam.gradcam(tap, x, target=jnp.array([1, 2]), normalize=False, relu=False, upsample=False)
  np.testing.assert_allclose(raw_cam / (7 * 7), raw_grad, rtol=1e-5, atol=1e-7)
  # explicit kernel array and path give the same maps
  kernel = variables["params"]["fc"]["kernel"]
  np.testing.assert_allclose(jaxcam.cam(tap, x, target=1, fc=kernel), jaxcam.cam(tap, x, target=1, fc="fc"), atol=1e-6)


def test_cam_refuses_a_head_that_is_not_gap_dense(small_linen):
  module, variables, x = small_linen
  with pytest.raises(ValueError, match="global average pooling \\+ Dense.*conv_general_dilated"):
    jaxcam.cam(jaxcam.linen_tap(module, variables, "body_1"), x, target=0)
  with pytest.raises(ValueError, match="kernel `fc` of shape"):
    jaxcam.cam(jaxcam.linen_tap(module, variables, "body_2"), x, target=0, fc=jnp.ones((3, 5)))
  with pytest.raises(KeyError, match="Expected `fc`"):
    jaxcam.cam(jaxcam.linen_tap(module, variables, "body_2"), x, target=0, fc="fcc")


# ----------------------------------------------------------------------- the common table-driven test


@pytest.fixture(scope="module")
def common(small_linen):
  module, variables, x = small_linen
  return jaxcam.linen_tap(module, variables, "body_2"), x, jnp.array([1, 0, 4])


@pytest.fixture(scope="module")
def common_tokens():
  """A torchvision-style ViT tapped on a block's tokens, for the rows that read transformer blocks (LeGrad)."""
  module = models.TvViT(patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=8, num_classes=5, num_patches=36)
  x = jax.random.uniform(jax.random.key(3), (3, 24, 24, 3))
  variables = module.init(jax.random.key(4), x)
  return jaxcam.linen_tap(module, variables, "layers_0", layout=jaxcam.layouts.tokens()), x, jnp.array([1, 0, 4])


@pytest.mark.parametrize(  # LeGrad's ViT compiles for ~45 s cold (op by op included): the slow tier runs it
  "name", [pytest.param(n, marks=pytest.mark.slow) if n == "legrad" else n for n in jaxcam.method_names()]
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
  assert raw.shape == (x.shape[0], 6, 6)  # both taps' layers are 6x6 grids
  # bfloat16 input: float32 maps within a tolerance of the float32 result
  maps_bf16 = fn(tap, x.astype(jnp.bfloat16), target=t)
  assert maps_bf16.dtype == jnp.float32
  assert float(jnp.abs(maps_bf16 - maps).mean()) < 0.05


def test_no_retrace_on_second_call_and_new_weights(common, small_linen):
  """Counted with a trace counter (Python runs once per trace, never per call), not a private cache size."""
  module, variables, x = small_linen
  tap, _, t = common
  jaxcam.gradcam(tap, x, target=t)
  before = jaxcam.api.TRACES["gradcam"]
  new_vars = jax.tree.map(lambda a: a * 1.5, variables)
  maps = jaxcam.gradcam(jaxcam.linen_tap(module, new_vars, "body_2"), x, target=jnp.array([2, 2, 2]))
  jaxcam.gradcam(tap, x, target=t)
  assert jaxcam.api.TRACES["gradcam"] == before
  assert not np.allclose(maps, jaxcam.gradcam(tap, x, target=t))
  jaxcam.gradcam(tap, x[:2], target=t[:2])  # a new shape is a new trace: the counter does see retraces
  assert jaxcam.api.TRACES["gradcam"] == before + 1

  traces = []

  @jax.jit
  def user_fn(tap, x, target):
    traces.append(1)
    return jaxcam.gradcam_pp(tap, x, target=target, normalize=False)

  user_fn(tap, x, t)
  user_fn(jaxcam.linen_tap(module, new_vars, "body_2"), x, jnp.array([0, 1, 2]))
  assert len(traces) == 1


# ------------------------------------------------------------------------------------------ targets


def test_target_forms(common):
  tap, x, _ = common
  logits = tap(x)[0]
  top = np.asarray(jnp.argmax(logits, -1))
  np.testing.assert_allclose(jaxcam.gradcam(tap, x), jaxcam.gradcam(tap, x, target=jnp.asarray(top)), atol=1e-6)
  np.testing.assert_allclose(jaxcam.gradcam(tap, x, target=2), jaxcam.gradcam(tap, x, target=[2, 2, 2]), atol=1e-6)
  ex = jaxcam.explain("gradcam", tap, x, target=jaxcam.targets.softmax(jnp.array([1, 2, 3])))
  np.testing.assert_allclose(ex.scores, jax.nn.softmax(logits)[jnp.arange(3), jnp.array([1, 2, 3])], rtol=1e-6)
  np.testing.assert_array_equal(ex.target, [1, 2, 3])
  custom = jaxcam.explain("gradcam", tap, x, target=lambda lg: lg[:, 1] - lg[:, 0])
  assert custom.target is None
  np.testing.assert_allclose(custom.scores, logits[:, 1] - logits[:, 0], rtol=1e-6)


def test_k_targets_per_image_from_one_forward(common):
  tap, x, _ = common
  ids = jnp.array([[0, 1], [2, 3], [4, 0]])
  maps = jaxcam.layercam(tap, x, target=ids)
  assert maps.shape == (3, 2) + x.shape[1:3]
  for k in range(2):
    np.testing.assert_allclose(maps[:, k], jaxcam.layercam(tap, x, target=ids[:, k]), atol=1e-6)
  both = jaxcam.gradcam(tap, x, target=lambda lg: jnp.stack([lg[:, 0], -lg[:, 0]], -1), relu=False, normalize=False)
  np.testing.assert_allclose(both[:, 0], -both[:, 1], rtol=1e-5, atol=1e-7)


def test_each_image_score_only_affects_its_own_map(common):
  tap, x, _ = common
  a = jaxcam.gradcam(tap, x, target=jnp.array([1, 1, 1]))
  b = jaxcam.gradcam(tap, x, target=jnp.array([1, 3, 1]))
  # the same compiled program twice (only the target values differ): exact
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[2], b[2])
  assert not np.allclose(a[1], b[1])


def test_out_of_range_ids(common):
  tap, x, _ = common
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*\[7\]"):
    jaxcam.gradcam(tap, x, target=jnp.array([1, 7, 2]))
  with pytest.raises(ValueError, match=r"\[-1\]"):
    jaxcam.gradcam(tap, x, target=-1)
  with pytest.raises(TypeError, match="ints"):
    jaxcam.gradcam(tap, x, target=jnp.array([1.0, 2.0, 3.0]))
  with pytest.raises(ValueError, match="one row per image"):
    jaxcam.gradcam(tap, x, target=jnp.array([1, 2]))
  # under jit the ids are unknown when tracing: the affected image's map is NaN, the others are intact
  maps = jax.jit(lambda t, x, c: jaxcam.gradcam(t, x, target=c))(tap, x, jnp.array([1, 7, 2]))
  assert np.isnan(maps[1]).all() and np.isfinite(maps[0]).all() and np.isfinite(maps[2]).all()


def test_unknown_method_and_option(common):
  tap, x, _ = common
  with pytest.raises(KeyError, match="Closest: 'gradcam_pp'"):
    jaxcam.explain("gradcam_ppp", tap, x)
  assert jaxcam.get_method("GradCAM++").name == "gradcam_pp"
  with pytest.raises(TypeError, match="unexpected option.*'eps'"):
    jaxcam.gradcam(tap, x, eps=1e-3)


# ----------------------------------------------------------------------------------- multi-layer fusion


def test_fusion_matches_numpy(small_linen):
  module, variables, x = small_linen
  t = jnp.array([0, 1, 2])
  layers = ("body_1", "body_2")
  # single-layer maps at layer resolution, normalized, no aggregation (fusion="max" of one layer is the identity)
  per = {
    name: [
      np.asarray(
        getattr(jaxcam, name)(jaxcam.linen_tap(module, variables, l), x, target=t, upsample=False, fusion="max")
      )
      for l in layers
    ]
    for name in ("gradcam", "layercam")
  }
  size = x.shape[1:3]
  fused = jaxcam.gradcam(jaxcam.linen_tap(module, variables, list(layers)), x, target=t)
  expected = ref.minmax(np.mean([np.maximum(ref.bilinear(m, size), 0) for m in per["gradcam"]], axis=0))
  np.testing.assert_allclose(fused, expected, atol=1e-5)
  # torchcam: LayerCAM's tanh(2 cam) at layer resolution, then upsample, then max
  fused_max = jaxcam.layercam(jaxcam.linen_tap(module, variables, list(layers)), x, target=t, fusion="max")
  expected_max = np.max([ref.bilinear(np.tanh(2 * m), size) for m in per["layercam"]], axis=0)
  np.testing.assert_allclose(fused_max, expected_max, atol=1e-5)


# ------------------------------------------------------------------------------- differentiability


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


# ------------------------------------------------------------------------------------------ properties


maps_arrays = hnp.arrays(np.float32, (2, 4, 5), elements=st.floats(-1e3, 1e3, width=32))


@settings(max_examples=40, deadline=None)
@given(maps_arrays)
def test_normalized_maps_lie_in_unit_interval(m):
  out = np.asarray(postprocess.normalize(jnp.asarray(m)))
  assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0))
def test_gradcam_invariant_to_positive_gradient_scale_and_channel_permutation(seed, scale):
  a, g = _ag(seed % 1000, (1, 4, 4, 5))
  raw = np.asarray(postprocess.combine(gradient.gradcam_weights(a, g), a), np.float64)
  raw_scaled = np.asarray(postprocess.combine(gradient.gradcam_weights(a, g * np.float32(scale)), a))
  np.testing.assert_allclose(raw_scaled, scale * raw, rtol=1e-5, atol=1e-6 * scale * np.abs(raw).max())
  perm = np.random.default_rng(seed).permutation(5)
  permuted = postprocess.combine(gradient.gradcam_weights(a[..., perm], g[..., perm]), a[..., perm])
  np.testing.assert_allclose(permuted, raw, rtol=1e-5, atol=1e-6 * np.abs(raw).max())
  # after ReLU + min-max the scale is gone, up to the normalization's eps (1e-7) relative to the map's range
  rng_ = max(np.maximum(raw, 0).max(), 1e-12)
  base = ref.minmax(np.maximum(raw, 0))
  scaled = postprocess.normalize(jax.nn.relu(jnp.asarray(raw_scaled)))
  np.testing.assert_allclose(scaled, base, atol=1e-5 + 2e-7 / rng_ + 2e-7 / (scale * rng_))


def test_constant_map_normalizes_to_zeros(strict_promotion):
  out = postprocess.normalize(jnp.full((1, 3, 3), 2.5))
  np.testing.assert_array_equal(out, np.zeros((1, 3, 3)))


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


def test_cam_on_a_dict_output_names_output_selector():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = models.GapDense().init(jax.random.key(1), x)
  tap = jaxcam.linen_tap(models.DictOutput(), variables, "features")
  with pytest.raises(ValueError, match=r"returns keys \['logits', 'embedding'\].*output='logits'"):
    jaxcam.cam(tap, x, target=lambda o: o["logits"][:, 0], fc="fc")
  picked = jaxcam.linen_tap(models.DictOutput(), variables, "features", output="logits")
  plain = jaxcam.linen_tap(models.GapDense(), variables, "features")
  np.testing.assert_allclose(
    jaxcam.cam(picked, x, target=1, fc="fc"), jaxcam.cam(plain, x, target=1, fc="fc"), atol=1e-6
  )
