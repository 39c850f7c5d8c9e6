"""`jaxcam.methods.perturbation`: Score-CAM and its family, Ablation-CAM, Recipro-CAM against the peers and
numpy; chunking, memory, errors and progress."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import core, providers
from jaxcam import models as models_lib
from jaxcam.methods import perturbation
from tests import nets
from tests import reference as ref
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def peer():
  with np.load(os.path.join(FIXTURES, "gradient_free.npz")) as f:
    d = {k: f[k] for k in f.files}
  tap = jaxcam.linen_tap(nets.ParityCNN(), nets.parity_variables(d))
  return d, tap, jnp.asarray(d["x"]), jnp.asarray(d["ids"])


@pytest.fixture(scope="module")
def noisy_peer():
  with np.load(os.path.join(FIXTURES, "sscam_iscam.npz")) as f:
    d = {k: f[k] for k in f.files}
  tap = jaxcam.linen_tap(nets.ParityCNN(), nets.parity_variables(d))
  return d, tap, jnp.asarray(d["x"]), jnp.asarray(d["ids"])


def _head(variables, a):
  """ConvNet after body_1, written out by hand (no tap code)."""
  return nets.convnet_head(variables, None, nets._block(variables["params"], jnp.asarray(a), "body_2", 1))


def _corners(n_in, n_out):
  """Aligned-corner linear interpolation, written with np.interp (independent of jaxcam's matrix)."""
  return np.stack(
    [np.interp(np.linspace(0, n_in - 1, n_out), np.arange(n_in), np.eye(n_in)[i]) for i in range(n_in)], 1
  )


def _torchcam_mask(a_k, size):
  """torchcam's Score-CAM mask in numpy: min-max at layer resolution, half-pixel bilinear upsampling."""
  m = a_k - a_k.min()
  return ref.bilinear(m / (m.max() + 1e-8), size)


def _softmax_map(scores, a):
  w = np.exp(scores - scores.max())
  return np.einsum("hwc,c->hw", a, w / w.sum())


@pytest.mark.fast
def test_scorecam_matches_pytorch_grad_cam(peer):
  d, tap, x, ids = peer
  np.testing.assert_allclose(jaxcam.scorecam(tap, x, target=ids), d["pgc/scorecam/maps"], atol=1e-4)
  # weights: ours give constant channels weight 0 (pgc scores a blank input for them); on the other channels the
  # softmax is the same up to its normalization
  fwd = core.forward_only(tap, x, ids)
  (s,) = providers.PROVIDERS["masked_scores"].fn(tap, x, fwd)
  ours = np.asarray(perturbation.scorecam_weights(None, s))[:, 0]
  theirs = d["pgc/scorecam/weights"]
  scored = np.isfinite(np.asarray(s)[:, 0])
  assert scored.sum() >= 0.5 * scored.size  # most channels are scored; the comparison is not vacuous
  for b in range(2):
    expected = theirs[b] * scored[b] / (theirs[b] * scored[b]).sum()
    np.testing.assert_allclose(ours[b], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.fast
def test_scorecam_torchcam_convention(peer):
  d, tap, x, ids = peer
  maps = jaxcam.scorecam(tap, x, target=ids, convention="torchcam", upsample=False)
  np.testing.assert_allclose(maps, d["tc/scorecam/maps"], atol=1e-4)
  pgc = jaxcam.scorecam(tap, x, target=ids, upsample=False)
  assert np.abs(np.asarray(maps) - np.asarray(pgc)).max() > 1e-3  # the conventions really differ


@pytest.mark.fast
def test_ablationcam_matches_pytorch_grad_cam(peer):
  d, tap, x, ids = peer
  ex = jaxcam.explain("ablationcam", tap, x, target=ids)
  np.testing.assert_allclose(ex.maps, d["pgc/ablationcam/maps"], atol=1e-4)
  fwd = core.forward_only(tap, x, ids)
  (ablated,) = providers.PROVIDERS["ablated_scores"].fn(tap, x, fwd)
  w = perturbation.ablationcam_weights(None, ablated, fwd.scores)[:, 0]
  np.testing.assert_allclose(w, d["pgc/ablationcam/weights"], rtol=1e-4, atol=1e-5)


@pytest.mark.fast
def test_sscam_matches_torchcam_given_its_noise(noisy_peer):
  d, tap, x, ids = noisy_peer
  n, std = int(d["sscam/num_samples"]), float(d["sscam/std"])
  noise = jnp.asarray(d["sscam/noise"])
  maps = jaxcam.sscam(tap, x, target=ids, noise=noise, num_samples=n, std=std, upsample=False, chunk_size=5)
  np.testing.assert_allclose(maps, d["tc/sscam/maps"], atol=1e-5)
  # the noise matters: without it (std 0) SS-CAM is torchcam's Score-CAM, a different map here
  plain = jaxcam.sscam(tap, x, target=ids, noise=noise, num_samples=n, std=0.0, upsample=False)
  np.testing.assert_allclose(
    plain, jaxcam.scorecam(tap, x, target=ids, convention="torchcam", upsample=False), atol=1e-6
  )
  assert np.abs(np.asarray(plain) - d["tc/sscam/maps"]).max() > 1e-2


@pytest.mark.parametrize("num_samples,key", [(10, "tc/iscam/maps"), (3, "tc/iscam3/maps")])
def test_iscam_matches_torchcam(noisy_peer, num_samples, key):
  d, tap, x, ids = noisy_peer
  opts = {} if num_samples == 10 else {"num_samples": num_samples}  # 10 is torchcam's default and ours
  np.testing.assert_allclose(jaxcam.iscam(tap, x, target=ids, upsample=False, **opts), d[key], atol=1e-5)


def test_faster_scorecam_against_numpy(convnet_b1):
  tap, variables, x, t = convnet_b1
  module = nets.ConvNet()
  a = np.asarray(core.forward_only(tap, x, t).activations[0], np.float64)  # (3, 6, 6, 8)
  rows, cols = _corners(6, 12), _corners(6, 12)
  top_n = 3
  expected = np.zeros(a.shape[:3])
  for b in range(3):
    chans = np.argsort(-a[b].std(axis=(0, 1)), kind="stable")[:top_n]
    scores = []
    for k in chans:
      u = rows @ a[b, :, :, k] @ cols.T
      mask = (u - u.min()) / (u.max() - u.min() + 1e-8)
      logits = module.apply(variables, (np.asarray(x[b]) * mask[..., None])[None].astype(np.float32))
      scores.append(float(logits[0, int(t[b])]))
    w = np.exp(np.array(scores) - max(scores))
    w /= w.sum()
    expected[b] = np.einsum("hwc,c->hw", a[b][..., chans], w)
  maps = jaxcam.scorecam(tap, x, target=t, top_n=top_n)
  np.testing.assert_allclose(maps, ref.postprocess(expected, (12, 12)), atol=2e-4)
  # every channel kept = plain Score-CAM
  np.testing.assert_allclose(jaxcam.scorecam(tap, x, target=t, top_n=8), jaxcam.scorecam(tap, x, target=t), atol=1e-6)


@pytest.mark.fast
def test_gscorecam_against_numpy(convnet_b2):
  """gScoreCAM at body_2, whose head is GAP + Dense: the mean gradient of channel c for class t is W[c, t] / (h w)
  in closed form, so the k channels are the k largest W[:, t]; each is scored on its masked copy by the model and
  weighted by the softmax of those scores (the others 0). Every channel kept: Score-CAM."""
  module, variables, tap, x = convnet_b2
  t = np.array([1, 0, 4])
  a = np.asarray(nets.convnet_body(variables, x), np.float64)  # (3, 6, 6, 8), by hand
  kernel = np.asarray(variables["params"]["fc"]["kernel"], np.float64)
  rows = cols = _corners(6, 12)
  k = 3
  expected = np.zeros(a.shape[:3])
  for b in range(3):
    chans = np.argsort(-kernel[:, t[b]], kind="stable")[:k]
    scores = []
    for c in chans:
      u = rows @ a[b, :, :, c] @ cols.T
      mask = (u - u.min()) / (u.max() - u.min() + 1e-8)
      logits = module.apply(variables, (np.asarray(x[b]) * mask[..., None])[None].astype(np.float32))
      scores.append(float(logits[0, int(t[b])]))
    w = np.exp(np.array(scores) - max(scores))
    expected[b] = np.einsum("hwc,c->hw", a[b][..., chans], w / w.sum())
  maps = jaxcam.gscorecam(tap, x, target=t, k=k)
  np.testing.assert_allclose(maps, ref.postprocess(expected, (12, 12)), atol=2e-4)
  # k at least the channel count (the default, 300, here): every channel, which is Score-CAM
  np.testing.assert_allclose(jaxcam.gscorecam(tap, x, target=t), jaxcam.scorecam(tap, x, target=t), atol=1e-6)
  with pytest.raises(ValueError, match="`k`"):
    jaxcam.gscorecam(tap, x, target=t, k=0)


@pytest.mark.fast
def test_reciprocam_against_numpy(convnet_b1):
  tap, variables, x, t = convnet_b1
  a = np.asarray(core.forward_only(tap, x, t).activations[0], np.float64)
  kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16.0
  h, w = a.shape[1:3]
  raw = np.zeros(a.shape[:3])
  for b in range(3):
    for i in range(h):
      for j in range(w):
        feat = np.zeros(a.shape[1:])
        for di in (-1, 0, 1):
          for dj in (-1, 0, 1):
            if 0 <= i + di < h and 0 <= j + dj < w:
              feat[i + di, j + dj] = a[b, i, j] * kernel[di + 1, dj + 1]
        logits = np.asarray(_head(variables, feat[None].astype(np.float32)), np.float64)[0]
        p = np.exp(logits - logits.max())
        raw[b, i, j] = p[int(t[b])] / p.sum()
  maps = jaxcam.reciprocam(tap, x, target=t)
  np.testing.assert_allclose(maps, ref.postprocess(raw, (12, 12)), atol=2e-4)
  np.testing.assert_allclose(
    jaxcam.reciprocam(tap, x, target=t, normalize=False, relu=False, upsample=False), raw, rtol=1e-4, atol=1e-6
  )


@pytest.mark.fast
def test_ablationcam_against_numpy_through_the_head(convnet_b1):
  tap, variables, x, t = convnet_b1
  a = np.asarray(core.forward_only(tap, x, t).activations[0])
  assert a.min() == 0  # post-ReLU: ablated channels are set to 0
  s = np.asarray(_head(variables, a))[np.arange(3), np.asarray(t)]
  w = np.zeros((3, a.shape[-1]))
  for k in range(a.shape[-1]):
    dropped = a.copy()
    dropped[..., k] = 0
    w[:, k] = (s - np.asarray(_head(variables, dropped))[np.arange(3), np.asarray(t)]) / s
  raw = jaxcam.ablationcam(tap, x, target=t, normalize=False, relu=False, upsample=False)
  np.testing.assert_allclose(raw, ref.channel_map(w, a.astype(np.float64)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 15 s of noisy copies op by op
def test_sscam_draws_the_documented_noise_from_its_key(convnet_b1):
  """numpy SS-CAM with noise drawn per (sample, channel) as documented: fold_in(fold_in(key, s), k)."""
  tap, variables, x, t = convnet_b1
  apply, key, n, std = jax.jit(nets.ConvNet().apply), jax.random.key(3), 2, 0.5
  a = np.asarray(core.forward_only(tap, x, t).activations[0], np.float64)  # (3, 6, 6, 8)
  z = {
    (s, k): np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, s), k), (12, 12)))
    for s in range(n)
    for k in range(8)
  }
  raw = np.zeros(a.shape[:3])
  for b in range(3):
    scores = np.zeros(8)
    for k in range(8):
      mask = _torchcam_mask(a[b, ..., k], (12, 12))
      for s in range(n):
        xin = (np.asarray(x[b]) * (mask + std * z[s, k])[..., None])[None].astype(np.float32)
        scores[k] += float(apply(variables, xin)[0, int(t[b])]) / n
    raw[b] = _softmax_map(scores, a[b])
  maps = jaxcam.sscam(tap, x, target=t, key=key, num_samples=n, std=std, normalize=False, relu=False, upsample=False)
  np.testing.assert_allclose(maps, raw, rtol=1e-4, atol=1e-5)
  # an image gets the same noise alone as in the batch: its map does not depend on the batch
  alone = jaxcam.sscam(tap, x[1:2], target=t[1:2], key=key, num_samples=n, std=std)
  np.testing.assert_allclose(alone, jaxcam.sscam(tap, x, target=t, key=key, num_samples=n, std=std)[1:2], atol=1e-5)
  other = jaxcam.sscam(tap, x, target=t, key=jax.random.key(4), num_samples=n, std=std)
  assert (
    np.abs(np.asarray(other) - np.asarray(jaxcam.sscam(tap, x, target=t, key=key, num_samples=n, std=std))).max() > 1e-3
  )


@pytest.mark.fast
def test_iscam_against_numpy(convnet_b1):
  """numpy IS-CAM written from torchcam's loop: coeff += (s + 1) / N, score coeff * x * M_k, mean, softmax."""
  tap, variables, x, t = convnet_b1
  apply, n = jax.jit(nets.ConvNet().apply), 4
  a = np.asarray(core.forward_only(tap, x, t).activations[0], np.float64)
  raw = np.zeros(a.shape[:3])
  for b in range(3):
    scores = np.zeros(8)
    for k in range(8):
      mask, coeff = _torchcam_mask(a[b, ..., k], (12, 12)), 0.0
      for s in range(n):
        coeff += (s + 1) / n
        xin = (coeff * np.asarray(x[b]) * mask[..., None])[None].astype(np.float32)
        scores[k] += float(apply(variables, xin)[0, int(t[b])]) / n
    raw[b] = _softmax_map(scores, a[b])
  maps = jaxcam.iscam(tap, x, target=t, num_samples=n, normalize=False, relu=False, upsample=False)
  np.testing.assert_allclose(maps, raw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["scorecam", "iscam"])
def test_baseline_masks_to_the_mean_a_model_normalizes_with(small_linen, name):
  """A model that normalizes inside, masked towards its mean (``baseline``), gives the maps of the same network
  fed the normalized image and masked towards 0 (what the PyTorch peers do with a normalized tensor); the default
  masks the `x` you pass towards 0."""
  _, variables, x = small_linen
  mean, std = jnp.array([[[[0.4, 0.5, 0.6]]]]), jnp.array([[[[0.2, 0.25, 0.3]]]])
  img = jax.nn.sigmoid(x)  # images in [0, 1]
  inside = jaxcam.function_tap(lambda p, v: nets.convnet_body(p, (v - mean) / std), nets.convnet_head, variables)
  outside = jaxcam.function_tap(nets.convnet_body, nets.convnet_head, variables)
  opts = {"num_samples": 2} if name == "iscam" else {}
  got = jaxcam.explain(name, inside, img, target=1, baseline=mean.ravel(), **opts).maps
  np.testing.assert_allclose(got, jaxcam.explain(name, outside, (img - mean) / std, target=1, **opts).maps, atol=1e-5)
  plain = jaxcam.explain(name, inside, img, target=1, **opts).maps  # masked towards black: another map
  assert np.abs(np.asarray(plain) - np.asarray(got)).max() > 1e-3
  with pytest.raises(ValueError, match=r"`baseline` to be a number, 'mean' or one value per input channel \(3,\)"):
    jaxcam.explain(name, inside, img, target=1, baseline=jnp.zeros(4), **opts)
  with pytest.raises(ValueError, match="baseline='mean' needs a model that declares `input_mean`"):
    jaxcam.explain(name, inside, img, target=1, baseline="mean", **opts)


@pytest.mark.fast
def test_shipped_models_declare_their_mean():
  assert models_lib.EfficientNetLite.input_mean == (0.5, 0.5, 0.5)
  assert models_lib.ResNet.input_mean == models_lib.VGG.input_mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize(
  "name,opts,copies",
  [
    ("scorecam", {}, 3 * 8),
    ("ablationcam", {}, 3 * 8),
    ("reciprocam", {}, 3 * 36),
    ("sscam", {"num_samples": 2, "key": jax.random.key(0)}, 2 * 3 * 8),
  ],
)
def test_independent_of_chunk_size(convnet_b1, name, opts, copies):
  tap, _, x, t = convnet_b1
  maps = [jaxcam.explain(name, tap, x, target=t, chunk_size=c, **opts).maps for c in (1, 7, copies)]
  for m in maps[1:]:
    np.testing.assert_allclose(m, maps[0], atol=1e-5)


def test_peak_memory_grows_with_chunk_size_not_with_batch(convnet_b1):
  """XLA's own accounting of the compiled program's temporaries (deterministic, no timing)."""
  tap, _, x, _ = convnet_b1

  def temp_bytes(batch, chunk):
    xb = jnp.tile(x, (batch, 1, 1, 1))[:batch]
    f = jax.jit(lambda tap, x: jaxcam.scorecam(tap, x, chunk_size=chunk))
    return f.lower(tap, xb).compile().memory_analysis().temp_size_in_bytes

  small, more_images, bigger_chunk = temp_bytes(2, 4), temp_bytes(8, 4), temp_bytes(2, 16)
  assert more_images < 1.5 * small + 64 * 1024, (small, more_images)  # 4x the images, about the same memory
  assert bigger_chunk > 1.5 * small, (small, bigger_chunk)  # 4x the chunk: more memory


@pytest.mark.fast
def test_errors_name_the_argument(convnet_b1, small_linen):
  tap, _, x, t = convnet_b1
  with pytest.raises(ValueError, match=r"`top_n` to be None .* \[1, 8\].*got 9"):
    jaxcam.scorecam(tap, x, top_n=9)
  with pytest.raises(ValueError, match="`top_n`.*got 0"):
    jaxcam.scorecam(tap, x, top_n=0)
  with pytest.raises(ValueError, match="`chunk_size` to be a positive int.*got 0"):
    jaxcam.ablationcam(tap, x, chunk_size=0)
  with pytest.raises(ValueError, match="`convention` to be one of \\('pgc', 'torchcam'\\)"):
    jaxcam.scorecam(tap, x, convention="keras")
  for bad in (0, -1, 2.5, True):
    with pytest.raises((ValueError, TypeError), match=f"`num_samples` to be a positive int, got {bad!r}"):
      jaxcam.iscam(tap, x, num_samples=bad)
  with pytest.raises(ValueError, match="`std` to be a finite number >= 0, got -1.0"):
    jaxcam.sscam(tap, x, key=jax.random.key(0), std=-1.0)
  with pytest.raises(ValueError, match="SS-CAM draws noise: pass `key=jax.random.key"):
    jaxcam.sscam(tap, x)
  with pytest.raises(TypeError, match="`key` to be a jax.random key, got int32"):
    jaxcam.sscam(tap, x, key=jnp.arange(2))
  with pytest.raises(
    ValueError, match=r"`noise` of shape \(num_samples, B, H, W, C\) = \(2, 3, 12, 12, 8\).*got \(2, 3, 12, 12\)"
  ):
    jaxcam.sscam(tap, x, num_samples=2, noise=jnp.zeros((2, 3, 12, 12)))
  module, variables, _ = small_linen
  multi = jaxcam.linen_tap(module, variables, ["body_1", "body_2"])
  with pytest.raises(ValueError, match="'ablated_scores' reads one layer"):
    jaxcam.ablationcam(multi, x)
  assert jaxcam.scorecam(multi, x).shape == (3, 12, 12)  # the Score-CAM family takes several layers
  assert jaxcam.iscam(multi, x, num_samples=1).shape == (3, 12, 12)


def test_zero_score_and_constant_channels_never_nan():
  params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}
  body = lambda p, x: jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)  # channel 3 is constant
  head = lambda p, x, a: a.mean(axis=(1, 2)) @ p["w"]
  tap = jaxcam.function_tap(body, head, params)
  x = jax.random.uniform(jax.random.key(0), (2, 5, 5, 3))
  fwd = core.forward_only(tap, x, 0)
  (s,) = providers.PROVIDERS["masked_scores"].fn(tap, x, fwd)
  w = np.asarray(perturbation.scorecam_weights(None, s))
  assert np.all(w[..., 3] == 0) and np.allclose(w.sum(-1), 1.0)
  (s,) = providers.PROVIDERS["noisy_masked_scores"].fn(tap, x, fwd, num_samples=2, key=jax.random.key(0))
  w = np.asarray(perturbation.sscam_weights(None, s))  # torchcam would score the noise alone: ours give 0
  assert np.all(w[..., 3] == 0) and np.allclose(w.sum(-1), 1.0)
  # Ablation-CAM with a target score of 0: weights 0, not a division by zero
  zero = jaxcam.explain("ablationcam", tap, x, target=lambda out: 0.0 * out[:, 0], normalize=False)
  assert np.isfinite(zero.maps).all() and not np.any(zero.maps)
  # every channel constant: all weights 0, maps zeros
  flat = jaxcam.function_tap(lambda p, x: jnp.ones(x.shape[:-1] + (4,)), head, params)
  assert not np.any(np.asarray(jaxcam.scorecam(flat, x))) and np.isfinite(jaxcam.scorecam(flat, x)).all()


def test_expensive_methods_are_declared_and_explain_many_asks_first(convnet_b1, small_linen):
  tap, _, x, t = convnet_b1
  for name in ("scorecam", "sscam", "iscam", "ablationcam", "reciprocam"):
    assert jaxcam.get_method(name).expensive()
  module, variables, _ = small_linen  # body_2: a GAP + Dense head, so every cheap method (CAM too) applies
  cheap = jaxcam.explain_many(None, jaxcam.linen_tap(module, variables, "body_2"), x)
  assert "gradcam" in cheap and not {"scorecam", "ablationcam", "reciprocam"} & set(cheap)
  with pytest.raises(ValueError, match="scorecam .*per channel.*allow_expensive"):
    jaxcam.explain_many(["gradcam", "scorecam"], tap, x)
  both = jaxcam.explain_many(["gradcam", "scorecam", "ablationcam"], tap, x, target=t, allow_expensive=True)
  np.testing.assert_allclose(both["scorecam"].maps, jaxcam.scorecam(tap, x, target=t), atol=1e-6)


def test_progress_bars_for_eager_expensive_calls_only(convnet_b1, capsys, monkeypatch):
  tap, _, x, t = convnet_b1
  jaxcam.scorecam(tap, x, target=t, chunk_size=5)  # compiled, then quick: done before a bar would show
  assert capsys.readouterr().err == ""  # no bar left at 0% for a map that takes less than CHUNK_BAR_DELAY
  monkeypatch.setattr(jaxcam._progress, "CHUNK_BAR_DELAY", 0.0)  # from here on, every bar shows at once
  jaxcam.api.TRACES.clear()
  jaxcam.scorecam(tap, x, target=t, chunk_size=5)  # 3 images x 8 channels = 24 copies in 5 chunks
  err = capsys.readouterr().err
  assert "scorecam" in err and "/24" in err, err
  jaxcam.scorecam(tap, x, target=t, chunk_size=5)
  assert "/24" in capsys.readouterr().err  # a bar every call
  assert jaxcam.api.TRACES["scorecam"] == 0  # and no new trace (the program was compiled before the bars showed)
  jaxcam.scorecam(tap, x, target=t, chunk_size=5, progress=False)
  jaxcam.gradcam(tap, x, target=t)  # cheap: no bar
  jaxcam.scorecam(tap, x, target=t, chunk_size=24)  # one chunk: nothing to report
  assert capsys.readouterr().err == ""
  # under the user's jit: no host callback in the program unless asked for
  assert "debug_callback" not in str(jax.make_jaxpr(lambda x: jaxcam.scorecam(tap, x, chunk_size=5))(x))
  assert "debug_callback" in str(jax.make_jaxpr(lambda x: jaxcam.scorecam(tap, x, chunk_size=5, progress=True))(x))
  with pytest.raises(TypeError, match="`progress` to be None \\(automatic\\), True or False, got 'yes'"):
    jaxcam.scorecam(tap, x, progress="yes")
