"""`jaxcam.wrappers` and the smoothing flags: smooth, aug_smooth, eigen_smooth, Finer-CAM and refine, against
numpy and pytorch-grad-cam / torchcam fixtures."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import reference as ref
from tests.reference import minmax_1e8


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
  assert ex.method == "smooth(gradcam_pp)"  # not the registered smooth_gradcam_pp (another algorithm)
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


@pytest.mark.fast
def test_smooth_errors(net):
  taps, _, x, _ = net
  spec = jaxcam.smooth("layercam", num_samples=2)
  with pytest.raises(ValueError, match=r"smooth\(layercam\) draws noise: pass `key="):
    jaxcam.explain(spec, taps["linen"], x)
  with pytest.raises(ValueError, match="`num_samples` to be a positive int, got 0"):
    jaxcam.smooth("gradcam", num_samples=0)
  with pytest.raises(ValueError, match="`std` to be a non-negative float"):
    jaxcam.smooth("gradcam", std=-1.0)
  with pytest.raises(ValueError, match=r"smooth\(layercam\).*2 x .*allow_expensive"):
    jaxcam.explain_many([spec], taps["linen"], x)


@pytest.mark.fast
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


@pytest.mark.fast
def test_eigen_smooth_is_a_row_that_works_through_every_entry_point(fam):
  """``jaxcam.eigen_smooth(method)`` returns a row: the flag is that row, and explain_many (which has no flag) and
  explain_batches take it like any other; the peer's maps as above, up to its sign."""
  d, tap, x, ids, _ = fam
  row = jaxcam.eigen_smooth("gradcam")
  assert row.name == "eigen_smooth(gradcam)" and row.output == "map"
  flags = dict(normalize=False, upsample=False, relu=False)
  raw = jaxcam.explain(row, tap, x, ids, **flags)
  assert raw.method == "eigen_smooth(gradcam)"
  theirs = d["pgc/gradcam/eigen_raw"]
  for b in range(2):
    assert min(np.abs(np.asarray(raw.maps[b]) - s * theirs[b]).max() for s in (1, -1)) < 1e-5
  flag = jaxcam.explain("gradcam", tap, x, ids, eigen_smooth=True, **flags)
  assert flag.method == row.name
  np.testing.assert_allclose(flag.maps, raw.maps, rtol=1e-6, atol=1e-6)
  many = jaxcam.explain_many([row, "layercam"], tap, x, ids, **flags)
  np.testing.assert_allclose(many[row.name].maps, raw.maps, rtol=1e-5, atol=1e-6)
  batches = list(jaxcam.explain_batches(row, tap, [(np.asarray(x), np.asarray(ids))], **flags))
  np.testing.assert_allclose(batches[0]["maps"], raw.maps, rtol=1e-5, atol=1e-6)


@pytest.mark.fast
def test_eigen_smooth_is_refused_where_it_makes_no_sense(fam):
  _, tap, x, _, _ = fam
  with pytest.raises(ValueError, match="eigen_smooth=False. for eigencam"):
    jaxcam.eigencam(tap, x, eigen_smooth=True)
  with pytest.raises(TypeError, match="eigen_smooth"):
    jaxcam.gradcam(tap, x, eigen_smooth="yes")


@pytest.mark.fast
def test_aug_smooth_matches_pytorch_grad_cam(fam):
  d, tap, x, ids, _ = fam
  maps = jaxcam.gradcam(tap, x, target=ids, aug_smooth=True)
  np.testing.assert_allclose(maps, d["pgc/gradcam/aug_maps"], atol=1e-5)


@pytest.mark.fast
def test_aug_smooth_is_a_row_that_composes_and_works_through_every_entry_point(fam):
  """``jaxcam.aug_smooth(method)`` returns a row: pytorch-grad-cam's maps through explain, explain_many (which had no
  flag) and explain_batches; it wraps other wrappers (noise inside, augmentation outside)."""
  d, tap, x, ids, _ = fam
  row = jaxcam.aug_smooth("gradcam")
  assert (
    row.name == "aug_smooth(gradcam)" and jaxcam.explain("gradcam", tap, x, ids, aug_smooth=True).method == row.name
  )
  np.testing.assert_allclose(jaxcam.explain(row, tap, x, ids).maps, d["pgc/gradcam/aug_maps"], atol=1e-5)
  many = jaxcam.explain_many([row, "gradcam"], tap, x, ids)
  np.testing.assert_allclose(many[row.name].maps, d["pgc/gradcam/aug_maps"], atol=1e-5)
  assert np.abs(np.asarray(many["gradcam"].maps) - d["pgc/gradcam/aug_maps"]).max() > 1e-2  # augmentation matters
  out = list(jaxcam.explain_batches(row, tap, [(np.asarray(x), np.asarray(ids))]))
  np.testing.assert_allclose(out[0]["maps"], d["pgc/gradcam/aug_maps"], atol=1e-5)
  # composition: smooth with std 0 is the plain method, so the augmented smoothed row gives the same maps
  both = jaxcam.aug_smooth(jaxcam.smooth("gradcam", num_samples=2, std=0.0))
  assert both.name == "aug_smooth(smooth(gradcam))"
  maps = jaxcam.explain(both, tap, x, ids, key=jax.random.key(0)).maps
  np.testing.assert_allclose(maps, d["pgc/gradcam/aug_maps"], atol=1e-5)
  with pytest.raises(ValueError, match="augmented already"):
    jaxcam.aug_smooth(row)


@pytest.mark.fast
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


@pytest.mark.fast
def test_finercam_matches_pytorch_grad_cam(fam):
  d, tap, x, _, _ = fam
  np.testing.assert_allclose(jaxcam.finercam(tap, x), d["pgc/finercam/maps"], atol=1e-5)


@pytest.mark.fast
def test_finercam_torchcam_convention(fam):
  d, tap, x, ids, _ = fam
  maps = jaxcam.finercam(tap, x, target=ids, finer_convention="torchcam", upsample=False)
  np.testing.assert_allclose(maps, d["tc/finercam/maps"], atol=1e-5)


@pytest.mark.fast
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


@pytest.mark.fast
def test_refinecam_matches_both_peers(fam):
  d, _, x, ids, (module, variables) = fam
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  np.testing.assert_allclose(jaxcam.refinecam(tap, x, target=ids), d["pgc/refinecam/maps"], atol=1e-5)
  tc = jaxcam.explain(jaxcam.refine("gradcam"), tap, x, ids, refine_convention="torchcam", upsample=False).maps
  np.testing.assert_allclose(tc, d["tc/refinecam/maps"], atol=1e-5)


@pytest.mark.fast
def test_refine_product_against_numpy(fam):
  """pgc convention: each layer's map is the base method's own single-layer map; the product is min-maxed."""
  _, _, x, ids, (module, variables) = fam
  per_layer = [
    np.asarray(jaxcam.gradcam(jaxcam.linen_tap(module, variables, n), x, target=ids)) for n in ("block2", "block3")
  ]
  expected = minmax_1e8(per_layer[0] * per_layer[1], eps=1e-7)
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  np.testing.assert_allclose(jaxcam.explain(jaxcam.refine("gradcam"), tap, x, ids).maps, expected, atol=1e-5)


@pytest.mark.fast
def test_the_flags_build_the_same_row_each_call_and_never_retrace(fam):
  """eigen_smooth= and aug_smooth= rebuild their wrapped row on every call; the rows hash by value, so the second
  call with the same shapes compiles nothing."""
  _, tap, x, ids, _ = fam
  for flags, name in (
    ({"eigen_smooth": True}, "eigen_smooth(xgradcam)"),
    ({"aug_smooth": True}, "aug_smooth(xgradcam)"),
  ):
    jaxcam.xgradcam(tap, x, target=ids, **flags)
    before = jaxcam.api.TRACES[name]
    jaxcam.xgradcam(tap, x, target=ids, **flags)
    assert jaxcam.api.TRACES[name] == before >= 1, name
  assert jaxcam.eigen_smooth("xgradcam") == jaxcam.eigen_smooth("xgradcam")
  assert hash(jaxcam.aug_smooth("xgradcam")) == hash(jaxcam.aug_smooth("xgradcam"))
