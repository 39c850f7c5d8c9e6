"""The rest of the family against pytorch-grad-cam / torchcam fixtures (scripts/make_fixtures.py, section
``family``) and against hand-written numpy references: FEM, KPCA-CAM, Seg-Eigen-CAM, Random-CAM, eigen_smooth,
aug_smooth, Finer-CAM, RefineCAM, Smooth Grad-CAM++, guided backpropagation, Guided Grad-CAM and FullGrad."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import guided
from jaxcam.methods import classic, factorization
from tests import models
from tests import reference as ref
from tests.conftest import FIXTURES
from tests.seeded import seeded_state_dict


@pytest.fixture(scope="module")
def fam():
  with np.load(os.path.join(FIXTURES, "family.npz")) as f:
    d = {k: f[k] for k in f.files}
  module = models.ParityCNN()
  variables = models.parity_variables(d)
  return d, jaxcam.linen_tap(module, variables, "block2"), jnp.asarray(d["x"]), d["ids"], (module, variables)


@pytest.fixture(scope="module")
def resnet():
  """The fixture's seeded torchvision ResNet-18 as jaxcam's linen ResNet-18 (normalization inside)."""
  with np.load(os.path.join(FIXTURES, "converters.npz")) as c:
    keys_shapes = list(zip([str(k) for k in c["resnet18/keys"]], json.loads(str(c["resnet18/shapes"]))))
  module, variables = jaxcam.models.resnet18(weights=seeded_state_dict(keys_shapes, seed=7))
  return module, variables


def _minmax(raw, eps=1e-8):
  lo = raw.min(axis=(-2, -1), keepdims=True)
  return (raw - lo) / ((raw - lo).max(axis=(-2, -1), keepdims=True) + eps)


# ------------------------------------------------------------------------------------ activation-only rows


@pytest.mark.parametrize("name", ["fem", "kpcacam", "segeigencam"])
def test_rows_match_pytorch_grad_cam(fam, name):
  d, tap, x, ids, _ = fam
  maps = getattr(jaxcam, name)(tap, x, target=ids)
  np.testing.assert_allclose(maps, d[f"pgc/{name}/maps"], atol=2e-5)


def test_fem_against_numpy(fam):
  d, *_ = fam
  a = d["block2/A"].astype(np.float64)
  mean, std = a.mean(axis=(1, 2), keepdims=True), a.std(axis=(1, 2), keepdims=True)
  expected = (a > mean + 1.5 * std).mean(axis=(1, 2))
  np.testing.assert_allclose(classic.fem_weights(jnp.asarray(d["block2/A"]), k=1.5), expected, atol=1e-7)


@pytest.mark.parametrize("kernel", ["rbf", "poly", "linear", "cosine"])
def test_kpca_kernels_against_numpy(fam, kernel):
  """The other scikit-learn kernels, by a float64 numpy KernelPCA written from sklearn's definitions."""
  d, *_ = fam
  a = d["block2/A"][0].astype(np.float64).reshape(-1, d["block2/A"].shape[-1])
  x = a - a.mean(axis=0)
  gamma = 1.0 / x.shape[1]
  dot = x @ x.T
  if kernel == "rbf":
    sq = (x * x).sum(1)
    k = np.exp(-gamma * np.maximum(sq[:, None] + sq[None, :] - 2 * dot, 0))
  elif kernel == "poly":
    k = (gamma * dot + 1.0) ** 3
  elif kernel == "linear":
    k = dot
  else:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = u @ u.T
  n = len(k)
  one = np.full((n, n), 1.0 / n)
  kc = k - one @ k - k @ one + one @ k @ one
  lam, vec = np.linalg.eigh(kc)
  v = vec[:, -1] * np.sign(vec[np.argmax(np.abs(vec[:, -1])), -1])
  expected = (v * np.sqrt(max(lam[-1], 0))).reshape(d["block2/A"].shape[1:3])
  ours = factorization.kpcacam_map(jnp.asarray(d["block2/A"][:1]), kernel=kernel)[0]
  np.testing.assert_allclose(ours, expected, atol=2e-4 * np.abs(expected).max())


def test_randomcam_is_keyed_uniform_and_batch_independent(fam):
  d, tap, x, ids, _ = fam
  a = jnp.asarray(d["block2/A"])[:, None]
  w = classic.randomcam_weights(a, key=jax.random.key(3))
  assert w.shape == (2, 1, a.shape[-1]) and float(jnp.abs(w).max()) <= 1.0
  np.testing.assert_array_equal(w[0], w[1])  # one draw per channel: an image's map ignores its batch companions
  one = jaxcam.randomcam(tap, x[:1], key=jax.random.key(3))
  both = jaxcam.randomcam(tap, x, key=jax.random.key(3))
  np.testing.assert_allclose(one[0], both[0], atol=1e-6)
  other = jaxcam.randomcam(tap, x, key=jax.random.key(4))
  assert float(jnp.abs(other - both).max()) > 1e-2
  with pytest.raises(ValueError, match="key=jax.random.key"):
    jaxcam.randomcam(tap, x)


def test_option_errors(fam):
  _, tap, x, _, _ = fam
  with pytest.raises(ValueError, match="`k`"):
    jaxcam.fem(tap, x, k=0)
  with pytest.raises(ValueError, match="`kernel`"):
    jaxcam.kpcacam(tap, x, kernel="rbff")
  with pytest.raises(ValueError, match="`num_samples`"):
    jaxcam.smooth_gradcam_pp(tap, x, key=jax.random.key(0), num_samples=0)
  with pytest.raises(ValueError, match="key=jax.random.key"):
    jaxcam.smooth_gradcam_pp(tap, x)


# -------------------------------------------------------------------------------- eigen_smooth, aug_smooth


@pytest.mark.parametrize("name", ["gradcam", "layercam"])
def test_eigen_smooth_matches_pytorch_grad_cam_up_to_its_sign(fam, name):
  d, tap, x, ids, _ = fam
  raw = jaxcam.explain(name, tap, x, ids, eigen_smooth=True, normalize=False, upsample=False, relu=False).maps
  theirs = d[f"pgc/{name}/eigen_raw"]
  for b in range(2):  # pgc leaves the sign to LAPACK; ours correlates with the plain (channel-sum) map
    best = min(np.abs(np.asarray(raw[b]) - s * theirs[b]).max() for s in (1, -1))
    assert best < 1e-5
  plain = jaxcam.explain(name, tap, x, ids, normalize=False, upsample=False, relu=False).maps
  assert all(float(jnp.sum(raw[b] * (plain[b] - plain[b].mean()))) >= 0 for b in range(2))


def test_eigen_smooth_is_refused_where_it_makes_no_sense(fam):
  _, tap, x, _, _ = fam
  with pytest.raises(ValueError, match="eigen_smooth=False. for eigencam"):
    jaxcam.eigencam(tap, x, eigen_smooth=True)
  with pytest.raises(TypeError, match="eigen_smooth"):
    jaxcam.gradcam(tap, x, eigen_smooth="yes")


def test_aug_smooth_matches_pytorch_grad_cam(fam):
  d, tap, x, ids, _ = fam
  maps = jaxcam.gradcam(tap, x, target=ids, aug_smooth=True)
  np.testing.assert_allclose(maps, d["pgc/gradcam/aug_maps"], atol=1e-5)


def test_aug_smooth_custom_augmentations_and_errors(fam):
  _, tap, x, ids, _ = fam
  identity = jaxcam.Augmentation(lambda v: v, lambda m: m)
  np.testing.assert_allclose(
    jaxcam.gradcam(tap, x, target=ids, aug_smooth=(identity,)), jaxcam.gradcam(tap, x, target=ids), atol=1e-6
  )
  flip = jaxcam.flip_multiply_tta(factors=(1.0,))  # the image and its mirror: a map averaged with its mirror's
  plain = np.asarray(jaxcam.gradcam(tap, x, target=ids))
  mirrored = np.asarray(jaxcam.gradcam(tap, x[:, :, ::-1], target=ids))[:, :, ::-1]
  np.testing.assert_allclose(jaxcam.gradcam(tap, x, target=ids, aug_smooth=flip), (plain + mirrored) / 2, atol=1e-5)
  with pytest.raises(TypeError, match="aug_smooth"):
    jaxcam.gradcam(tap, x, aug_smooth="flip")
  crop = jaxcam.Augmentation(lambda v: v[:, 1:], lambda m: m)
  with pytest.raises(ValueError, match="keep the images' shape"):
    jaxcam.gradcam(tap, x, aug_smooth=(crop,))


# --------------------------------------------------------------------------------- Finer-CAM and RefineCAM


def test_finercam_matches_pytorch_grad_cam(fam):
  d, tap, x, _, _ = fam
  np.testing.assert_allclose(jaxcam.finercam(tap, x), d["pgc/finercam/maps"], atol=1e-5)


def test_finercam_torchcam_convention(fam):
  d, tap, x, ids, _ = fam
  maps = jaxcam.finercam(tap, x, target=ids, finer_convention="torchcam", upsample=False)
  np.testing.assert_allclose(maps, d["tc/finercam/maps"], atol=1e-5)


def test_finer_score_against_numpy(fam):
  d, tap, x, ids, _ = fam
  z = np.asarray(tap.forward(x), np.float64)
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  for b, c in enumerate(ids):
    dist = np.abs(z[b] - z[b, c])
    dist[c] = -1
    refs = np.argsort(dist, kind="stable")[1:4]
    expected = (p[b, refs] * (z[b, c] - 0.5 * z[b, refs])).sum() / (p[b, refs].sum() + 1e-9)
    got = jaxcam.targets.finer(ids, alpha=0.5)(jnp.asarray(z, jnp.float32))[b]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="class ids or None"):
    jaxcam.finercam(tap, x, target=jaxcam.targets.softmax(ids))
  with pytest.raises(ValueError, match="`references`"):
    jaxcam.targets.finer(references=(0, 1))


def test_refinecam_matches_both_peers(fam):
  d, _, x, ids, (module, variables) = fam
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  np.testing.assert_allclose(jaxcam.refinecam(tap, x, target=ids), d["pgc/refinecam/maps"], atol=1e-5)
  tc = jaxcam.explain(jaxcam.refine("gradcam"), tap, x, ids, refine_convention="torchcam", upsample=False).maps
  np.testing.assert_allclose(tc, d["tc/refinecam/maps"], atol=1e-5)


def test_refine_product_against_numpy(fam):
  """pgc convention: each layer's map is the base method's own single-layer map; the product is min-maxed."""
  _, _, x, ids, (module, variables) = fam
  per_layer = [
    np.asarray(jaxcam.gradcam(jaxcam.linen_tap(module, variables, n), x, target=ids)) for n in ("block2", "block3")
  ]
  expected = _minmax(per_layer[0] * per_layer[1], eps=1e-7)
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  np.testing.assert_allclose(jaxcam.explain(jaxcam.refine("gradcam"), tap, x, ids).maps, expected, atol=1e-5)


# ---------------------------------------------------------------------------------------- Smooth Grad-CAM++


def test_smooth_gradcam_pp_intended_formula(fam):
  """With torchcam's noise: the averaged moments of the per-copy gradients torch computed, the clean A."""
  d, tap, x, ids, _ = fam
  a, gs = d["block2/A"].astype(np.float64), d["smooth/G"].astype(np.float64)
  m1, m2, m3 = gs.mean(0), (gs**2).mean(0), (gs**3).mean(0)
  alpha = m2 / (2 * m2 + a.sum(axis=(1, 2), keepdims=True) * m3 + 1e-8)
  raw = np.einsum("bhwc,bc->bhw", a, (alpha * np.maximum(m1, 0)).sum(axis=(1, 2)))
  noise, std = jnp.asarray(d["smooth/noise"]), float(d["smooth/std"])
  ours = jaxcam.explain(
    "smooth_gradcam_pp", tap, x, ids, noise=noise, std=std, normalize=False, upsample=False, relu=False
  ).maps
  np.testing.assert_allclose(ours, raw, atol=1e-5 * np.abs(raw).max())


def test_smooth_gradcam_pp_reproduces_torchcams_actual_output(fam):
  """torchcam's map: the last noisy copy's relu(g) and activations, and sum_ab(m3 A) in alpha (its quirks)."""
  d, *_ = fam
  a, as_, gs = (d[k].astype(np.float64) for k in ("block2/A", "smooth/A", "smooth/G"))
  m2, m3 = (gs**2).mean(0), (gs**3).mean(0)
  alpha = m2 / (2 * m2 + (m3 * a).sum(axis=(1, 2), keepdims=True) + 1e-8)
  w = (alpha * np.maximum(gs[-1], 0)).sum(axis=(1, 2))
  expected = _minmax(np.maximum(np.einsum("bhwc,bc->bhw", as_[-1], w), 0))
  np.testing.assert_allclose(expected, d["tc/smooth_gradcam_pp/maps"], atol=1e-5)


def test_smooth_gradcam_pp_keyed_noise(fam):
  _, tap, x, ids, _ = fam
  key = jax.random.key(1)
  both = jaxcam.smooth_gradcam_pp(tap, x, target=ids, key=key)
  alone = jaxcam.smooth_gradcam_pp(tap, x[1:], target=ids[1:], key=key)
  np.testing.assert_allclose(alone[0], both[1], atol=1e-5)  # the same draws alone or in a batch
  clean = jaxcam.smooth_gradcam_pp(tap, x, target=ids, key=key, std=0.0)
  np.testing.assert_allclose(clean, jaxcam.gradcam_pp(tap, x, target=ids, eps=1e-8), atol=1e-5)


# ------------------------------------------------------------------------------- guided backpropagation


def test_guided_backprop_matches_pytorch_grad_cam(fam, resnet):
  d = fam[0]
  module, variables = resnet
  x = jnp.asarray(d["resnet/x"])
  grads = guided.guided_backprop(functools.partial(module.apply, variables), x, target=d["resnet/ids"])
  np.testing.assert_allclose(grads, d["pgc/guided/grads"], atol=1e-6)
  tap = jaxcam.linen_tap(module, variables, "layer4")  # a tap works too (its plain forward pass)
  np.testing.assert_allclose(guided.guided_backprop(tap, x, target=d["resnet/ids"]), grads, atol=1e-7)


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


@pytest.mark.parametrize(("rule", "relu6"), [("guided", True), ("guided", False), ("deconvnet", True)])
def test_guided_rules_on_functional_relus_against_numpy(rule, relu6):
  rng = np.random.default_rng(0)
  x, w1, w2 = rng.standard_normal((4, 5)), rng.standard_normal((5, 6)), rng.standard_normal((3, 2))
  c = 1
  fn = functools.partial(_toy, w1=jnp.asarray(w1, jnp.float32), w2=jnp.asarray(w2, jnp.float32))
  xi = jnp.asarray(x, jnp.float32)[:, None, None, :]  # (B, 1, 1, C) images
  got = guided.guided_backprop(lambda v: fn(v[:, 0, 0]), xi, target=c, rule=rule, relu6=relu6)[:, 0, 0]
  np.testing.assert_allclose(got, _toy_guided_numpy(x, w1, w2, c, rule, relu6), atol=1e-5)


from tests.test_beyond import _value_and_grad_at  # noqa: E402  (moved to tests/reference.py next)


def test_guided_gradcam_is_the_product(fam, resnet):
  """Guided Grad-CAM = a numpy Grad-CAM (A and dS/dA at layer3 read without jaxcam) x pytorch-grad-cam's guided
  backprop gradients."""
  d = fam[0]
  module, variables = resnet
  x, ids = jnp.asarray(d["resnet/x"]), d["resnet/ids"]
  tap = jaxcam.linen_tap(module, variables, "layer3")
  out = guided.guided_gradcam(tap, None, x, target=ids)
  a, g = (np.asarray(v, np.float64) for v in _value_and_grad_at(module, variables, x, "layer3", ids))
  gradcam = ref.postprocess(ref.channel_map(ref.gradcam_w(a, g), a), x.shape[1:3])
  guided_grads = d["pgc/guided/grads"]
  assert out.shape == x.shape and gradcam.max() > 0.5
  np.testing.assert_allclose(out, gradcam[..., None] * guided_grads, rtol=1e-4, atol=2e-4 * np.abs(guided_grads).max())
  with pytest.raises(ValueError, match="`rule`"):
    guided.guided_backprop(tap, x, rule="backprop")


# --------------------------------------------------------------------------------------------------- FullGrad


def test_fullgrad_matches_pytorch_grad_cam(fam, resnet):
  d = fam[0]
  module, variables = resnet
  maps = jaxcam.fullgrad(module, variables, jnp.asarray(d["resnet/x"]), target=d["resnet/ids"])
  np.testing.assert_allclose(maps, d["pgc/fullgrad/maps"], atol=1e-5)


def test_fullgrad_against_numpy_on_a_conv_bias_net():
  """A conv-with-bias net: |x dS/dx| per channel + |b dS/dy| per channel, min-maxed and summed, by jax.grad of the
  hand-split network."""
  module = models.GapDense()
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


# ------------------------------------------------------------------------------------------------------- SESS


def test_sess_window_grid_matches_pytorch_grad_cams_rule():
  from jaxcam import multiscale

  assert multiscale.window_starts(21, 16, 16) == [0, 5]
  assert multiscale.window_starts(16, 16, 16) == [0]
  assert multiscale.window_starts(71, 16, 16) == [0, 16, 32, 48, 55]
  assert multiscale.default_scales(224)[:3] == [224, 288, 352]
  m = multiscale.resize_matrix(7, 3)  # rows sum to 1; identity when sizes agree
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  np.testing.assert_allclose(multiscale.resize_matrix(5, 5), np.eye(5), atol=1e-7)


def test_sess_max_pool_prefiltered_matches_pytorch_grad_cam(fam):
  d, tap, x, ids, _ = fam
  maps = jaxcam.sess(tap, x, ids, num_scales=3, step_size=6, pre_filter_ratio=0.5, pool="max", smooth=False)
  np.testing.assert_allclose(maps, d["pgc/sess_max/maps"], atol=1e-5)
  with pytest.raises(ValueError, match="`pre_filter_ratio`"):
    jaxcam.sess(tap, x, ids, pre_filter_ratio=1.0)
  with pytest.raises(ValueError, match="every scale >= the window"):
    jaxcam.sess(tap, x, ids, scales=(8, 16))


@pytest.mark.slow
def test_sess_default_grid_matches_pytorch_grad_cam(fam):
  """The default 12 scales (138 patches per 16x16 image), mean fusion and the Gaussian blur."""
  d, tap, x, ids, _ = fam
  np.testing.assert_allclose(jaxcam.sess(tap, x, ids), d["pgc/sess/maps"], atol=1e-5)


# ----------------------------------------------------------------------------------------------------------- DFF


def test_dff_against_numpy_nmf_on_the_same_initialization(fam):
  d, tap, x, _, (module, variables) = fam
  from jaxcam import concepts as concepts_lib

  out = jaxcam.dff(tap, x, n_components=4, iterations=50, key=jax.random.key(2))
  a = d["block2/A"].astype(np.float64)
  v = np.moveaxis(a, -1, 0).reshape(a.shape[-1], -1)  # (C, B h w), image-major as pytorch-grad-cam's
  offset = v.min(axis=1, keepdims=True)
  v = v - offset
  w0, h0 = concepts_lib.nmf_init(jnp.asarray(v, jnp.float32), 4, jax.random.key(2))
  w, h = np.asarray(w0, np.float64), np.asarray(h0, np.float64)
  for _ in range(50):
    h = h * (w.T @ v) / (w.T @ w @ h + 1e-10)
    w = w * (v @ h.T) / (w @ h @ h.T + 1e-10)
  np.testing.assert_allclose(out.concepts, w + offset, atol=1e-4 * np.abs(w).max())
  maps = np.moveaxis(h.reshape(4, 2, 8, 8), 0, 1)
  maps = (maps - maps.min(axis=(2, 3), keepdims=True)) / (np.ptp(maps, axis=(2, 3), keepdims=True) + 1e-7)
  at_layer = jaxcam.dff(tap, x, n_components=4, iterations=50, key=jax.random.key(2), upsample=False)
  np.testing.assert_allclose(at_layer.maps, maps, atol=1e-3)
  assert out.maps.shape == (2, 4, 16, 16)
  np.testing.assert_allclose(out.error, np.linalg.norm(v - w @ h) / np.linalg.norm(v), rtol=1e-3)
  kernel, bias = variables["params"]["fc"]["kernel"], variables["params"]["fc"]["bias"]  # the declared fc head
  np.testing.assert_allclose(out.scores, (w + offset).T @ np.asarray(kernel) + np.asarray(bias), rtol=1e-3, atol=1e-3)


def test_dff_errors_and_viz(fam):
  _, tap, x, _, _ = fam
  with pytest.raises(ValueError, match="`n_components`"):
    jaxcam.dff(tap, x, n_components=17)
  with pytest.raises(ValueError, match="`n_components`"):
    jaxcam.dff(tap, x, n_components=0)
  out = jaxcam.dff(tap, x, n_components=3, iterations=5)
  img = np.asarray(x[0] - x[0].min()) / float(np.ptp(np.asarray(x[0])))
  rgb = jaxcam.viz.concept_overlay(img, out.maps[0])
  assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
  fig = jaxcam.viz.show_concepts(img, out.maps[0], ["a", "b", "c"])
  assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b", "c"]
  g = jaxcam.viz.deprocess_gradient(np.random.default_rng(0).standard_normal((8, 8, 3)))
  assert g.dtype == np.uint8 and abs(float(g.mean()) - 127.5) < 5


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
