"""`jaxcam.methods.gradient`: each gradient row's weights against numpy, and the maps against
pytorch-grad-cam / torchcam fixtures (identical weights)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxcam
from jaxcam import postprocess
from jaxcam.methods import gradient
from tests import reference as ref
from tests.reference import activations_and_grads, minmax_1e8

CHANNEL = {
  "gradcam": gradient.gradcam_weights,
  "gradcam_pp": gradient.gradcam_pp_weights,
  "xgradcam": gradient.xgradcam_weights,
}
PGC = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam", "gradcam_elementwise", "eigencam", "eigengradcam"]


def _align_sign(ours, theirs):
  """Eigen methods: the peer's SVD sign is arbitrary; flip theirs per image to best match ours."""
  out = theirs.copy()
  for b in range(theirs.shape[0]):
    if np.abs(ours[b] + theirs[b]).sum() < np.abs(ours[b] - theirs[b]).sum():
      out[b] = -theirs[b]
  return out


@pytest.mark.fast
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


@pytest.mark.fast
def test_smooth_gradcam_pp_reproduces_torchcams_actual_output(fam):
  """torchcam's map: the last noisy copy's relu(g) and activations, and sum_ab(m3 A) in alpha (its quirks)."""
  d, *_ = fam
  a, as_, gs = (d[k].astype(np.float64) for k in ("block2/A", "smooth/A", "smooth/G"))
  m2, m3 = (gs**2).mean(0), (gs**3).mean(0)
  alpha = m2 / (2 * m2 + (m3 * a).sum(axis=(1, 2), keepdims=True) + 1e-8)
  w = (alpha * np.maximum(gs[-1], 0)).sum(axis=(1, 2))
  expected = minmax_1e8(np.maximum(np.einsum("bhwc,bc->bhw", as_[-1], w), 0))
  np.testing.assert_allclose(expected, d["tc/smooth_gradcam_pp/maps"], atol=1e-5)


def test_smooth_gradcam_pp_keyed_noise(fam):
  _, tap, x, ids, _ = fam
  key = jax.random.key(1)
  both = jaxcam.smooth_gradcam_pp(tap, x, target=ids, key=key)
  alone = jaxcam.smooth_gradcam_pp(tap, x[1:], target=ids[1:], key=key)
  np.testing.assert_allclose(alone[0], both[1], atol=1e-5)  # the same draws alone or in a batch
  clean = jaxcam.smooth_gradcam_pp(tap, x, target=ids, key=key, std=0.0)
  np.testing.assert_allclose(clean, jaxcam.gradcam_pp(tap, x, target=ids, eps=1e-8), atol=1e-5)


@pytest.mark.fast
@pytest.mark.parametrize(
  "fn,ref_fn",
  [
    (gradient.gradcam_weights, ref.gradcam_w),
    (gradient.gradcam_pp_weights, ref.gradcam_pp_w),
    (gradient.xgradcam_weights, ref.xgradcam_w),
  ],
)
def test_channel_weights_match_numpy(fn, ref_fn, strict_promotion):
  a, g = activations_and_grads()
  np.testing.assert_allclose(fn(a, g), ref_fn(a.astype(np.float64), g.astype(np.float64)), rtol=2e-5, atol=1e-7)


@pytest.mark.fast
@pytest.mark.parametrize(
  "fn,ref_raw",
  [
    (gradient.layercam_weights, ref.layercam_raw),
    (gradient.hirescam_weights, ref.hirescam_raw),
    (gradient.gradcam_elementwise_weights, ref.gradcam_elementwise_raw),
  ],
)
def test_spatial_weights_match_numpy(fn, ref_raw, strict_promotion):
  a, g = activations_and_grads(1)
  np.testing.assert_allclose(postprocess.combine(fn(a, g), a), ref_raw(a, g), rtol=1e-5, atol=1e-6)


@pytest.mark.fast
def test_gradcam_pp_zero_denominator_gives_zero_not_nan(strict_promotion):
  a = np.ones((1, 1, 2, 2, 1), np.float32)  # (B, K, h, w, C), as a row receives it
  g = np.full((1, 1, 2, 2, 1), -0.5, np.float32)  # 2 g^2 + (sum A) g^3 = 0.5 - 0.5 = 0
  w = gradient.gradcam_pp_weights(a, g, eps=0.0)
  assert w.shape == (1, 1, 1)
  assert np.isfinite(w).all()
  assert float(w[0, 0, 0]) == 0.0


@pytest.mark.fast
@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0))
def test_gradcam_invariant_to_positive_gradient_scale_and_channel_permutation(seed, scale):
  a, g = activations_and_grads(seed % 1000, (1, 1, 4, 4, 5))
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


@pytest.mark.fast
def test_same_network(parity):
  d, module, variables = parity
  np.testing.assert_allclose(module.apply(variables, d["x"]), d["logits"], rtol=1e-4, atol=1e-5)
  tap = jaxcam.linen_tap(module, variables)
  fwd = jaxcam.core.forward_and_grads(tap, jnp.asarray(d["x"]), jnp.asarray(d["ids"]))
  np.testing.assert_allclose(fwd.activations[0], d["block2/A"], atol=1e-5)
  np.testing.assert_allclose(fwd.grads[0][:, 0], d["block2/G"], atol=1e-6)


@pytest.mark.fast
@pytest.mark.parametrize("name", sorted(CHANNEL))
def test_weight_functions_on_dumped_tensors(parity, name):
  d, _, _ = parity
  ours = CHANNEL[name](d["block2/A"][:, None], d["block2/G"][:, None])[:, 0]  # rows get (B, K, h, w, C)
  np.testing.assert_allclose(ours, d[f"pgc/{name}/weights"], atol=1e-6, rtol=1e-5)


@pytest.mark.fast
@pytest.mark.parametrize("name", PGC)
def test_raw_maps_on_dumped_tensors(parity, name):
  """(a) jaxcam's weight functions fed the peer's activations and grads reproduce its raw cam image."""
  d, _, _ = parity
  spec = jaxcam.get_method(name)
  a, g = d["block2/A"][:, None], d["block2/G"][:, None]  # rows get (B, K, h, w, C)
  if spec.output == "map":
    raw = spec.fn(a, g)[:, 0]
  else:
    raw = jaxcam.postprocess.combine(spec.fn(a, g), a)[:, 0]
  theirs = d[f"pgc/{name}/raw"]
  if spec.output == "map":
    theirs = _align_sign(np.asarray(raw), theirs)
  np.testing.assert_allclose(raw, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PGC)
def test_end_to_end_maps_match_pytorch_grad_cam(parity, name):
  """(b) the whole pipeline (relu, min-max at layer size, cv2-style bilinear upsample) matches."""
  d, module, variables = parity
  maps = getattr(jaxcam, name)(jaxcam.linen_tap(module, variables), jnp.asarray(d["x"]), target=d["ids"])
  theirs = d[f"pgc/{name}/maps"]
  if jaxcam.get_method(name).output == "map":
    # The peer leaves the SVD sign to LAPACK; a flipped sign before relu keeps the other lobe. Check that the
    # peer's map is our raw map, with its sign, through the same pipeline, and that ours is our raw map.
    from tests import reference as ref

    raw = np.asarray(
      getattr(jaxcam, name)(
        jaxcam.linen_tap(module, variables),
        jnp.asarray(d["x"]),
        target=d["ids"],
        normalize=False,
        relu=False,
        upsample=False,
      )
    )
    sign = np.where(np.sum(raw * d[f"pgc/{name}/raw"], axis=(1, 2)) < 0, -1.0, 1.0)[:, None, None]
    np.testing.assert_allclose(ref.postprocess(sign * raw, maps.shape[1:]), theirs, atol=1e-4)
    np.testing.assert_allclose(maps, ref.postprocess(raw, maps.shape[1:]), atol=1e-4)
    return
  np.testing.assert_allclose(maps, theirs, atol=1e-4)


@pytest.mark.fast
def test_multi_layer_mean_fusion_matches_pytorch_grad_cam(parity):
  d, module, variables = parity
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  np.testing.assert_allclose(
    jaxcam.gradcam(tap, jnp.asarray(d["x"]), target=d["ids"]), d["pgc/gradcam/fused_maps"], atol=1e-4
  )


@pytest.mark.fast
@pytest.mark.parametrize("name", ["gradcam", "xgradcam", "layercam"])
def test_torchcam_maps(parity, name):
  """torchcam: relu, min-max (eps 1e-8) at layer resolution."""
  d, module, variables = parity
  maps = getattr(jaxcam, name)(
    jaxcam.linen_tap(module, variables), jnp.asarray(d["x"]), target=d["ids"], upsample=False
  )
  np.testing.assert_allclose(maps, d[f"tc/{name}/maps"], atol=1e-4)


@pytest.mark.fast
def test_torchcam_layercam_max_fusion(parity):
  d, module, variables = parity
  tap = jaxcam.linen_tap(module, variables, ["block2", "block3"])
  maps = jaxcam.layercam(tap, jnp.asarray(d["x"]), target=d["ids"], fusion="max")
  np.testing.assert_allclose(maps, d["tc/layercam/fused_maps"], atol=1e-4)


@pytest.mark.fast
def test_torchcam_gradcam_pp_divergence_is_documented(parity):
  """torchcam's alpha is never applied (a boolean-mask copy): its weights are sum relu(g) * g**2.

  We reproduce that formula to show the fixture is understood, and check that correct Grad-CAM++ differs.
  """
  d, module, variables = parity
  a, g = d["block2/A"], d["block2/G"]
  torchcam_w = np.sum(np.maximum(g, 0) * g**2, axis=(1, 2))
  raw = np.maximum(np.einsum("bhwc,bc->bhw", a, torchcam_w), 0)
  lo = raw.min(axis=(1, 2), keepdims=True)
  expected = (raw - lo) / ((raw - lo).max(axis=(1, 2), keepdims=True) + 1e-8)
  np.testing.assert_allclose(expected, d["tc/gradcam_pp/maps"], atol=1e-4)
  ours = jaxcam.gradcam_pp(jaxcam.linen_tap(module, variables), jnp.asarray(d["x"]), target=d["ids"], upsample=False)
  assert np.abs(np.asarray(ours) - d["tc/gradcam_pp/maps"]).max() > 1e-2
