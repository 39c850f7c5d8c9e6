"""explain_batches: sharded == single device on 8 forced CPU devices, re-batching, padding, one compile, memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import nets

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.fixture(scope="module")
def sharded_report():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  out = subprocess.run(
    [sys.executable, "-m", "tests.helpers.sharded_check"],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small():
  module = nets.ConvNet()
  x = np.asarray(jax.random.normal(jax.random.key(0), (10, 12, 12, 3)), np.float32)
  return jaxcam.linen_tap(module, module.init(jax.random.key(1), x[:1])), x


@pytest.mark.slow  # a subprocess with 8 host devices compiles every method anew (~30 s): .ci/run's slow tier
@pytest.mark.parametrize("method", ["gradcam", "layercam", "gradcam_pp", "eigencam"])
def test_sharded_over_8_devices_equals_single_device(sharded_report, method):
  r = sharded_report[method]
  assert r["lengths"] == [5, 3, 7, 6] and r["targets_ok"]
  # bitwise against one device doing the same per-device work (one image per device per step) ...
  assert r["bitwise_equal_single_same_per_device_batch"]
  # ... and within float32 rounding against one device running the whole global batch of 8 (XLA's CPU kernels
  # differ by batch size: differences of a few ulps), and against a plain batched call.
  assert r["max_diff_single"] <= 1e-6 and r["max_diff_direct"] <= 1e-5


def test_short_last_batch_compiles_once_and_targets_default_to_argmax(sharded_report):
  r = sharded_report["no_targets"]
  assert r["lengths"] == [4, 4, 4, 4, 4, 1] and r["compiles"] == 1 and r["argmax_ok"]


@pytest.mark.fast
def test_input_forms_and_order(small):
  tap, x = small
  t = np.arange(10) % 5
  ref = np.asarray(jaxcam.gradcam(tap, jnp.asarray(x), target=t))
  forms = [
    [(x[:3], t[:3]), (x[3:], t[3:])],
    [{"images": x[:6], "targets": t[:6]}, {"images": jnp.asarray(x[6:]), "targets": t[6:]}],
  ]
  for batches in forms:
    outs = list(jaxcam.explain_batches("gradcam", tap, batches, batch_size=4))
    assert [o["maps"].shape[0] for o in outs] == [
      len(b[0]) if isinstance(b, tuple) else len(b["images"]) for b in batches
    ]
    np.testing.assert_allclose(np.concatenate([o["maps"] for o in outs]), ref, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate([o["targets"] for o in outs]), t)
    assert outs[0]["logits"].shape == (outs[0]["maps"].shape[0], 5)


@pytest.mark.fast
def test_errors(small):
  tap, x = small
  with pytest.raises(ValueError, match="targets for every batch or for none"):
    list(jaxcam.explain_batches("gradcam", tap, [(x[:2], np.array([0, 1])), x[2:4]]))
  with pytest.raises(ValueError, match=r"\(b, H, W, C\)"):
    list(jaxcam.explain_batches("gradcam", tap, [x[0]]))
  with pytest.raises(TypeError, match="method name"):
    list(jaxcam.explain_batches(len, tap, [x]))
  assert list(jaxcam.explain_batches("gradcam", tap, [])) == []


@pytest.mark.fast
def test_memory_stays_flat_over_a_long_stream(small):
  """1200 images of 64x64 are 59 MB of input and 20 MB of maps: holding on to either would show."""
  tap, _ = small
  rng = np.random.default_rng(0)

  def stream(n_batches):
    for _ in range(n_batches):
      yield rng.standard_normal((16, 64, 64, 3)).astype(np.float32)

  for _ in jaxcam.explain_batches("gradcam", tap, stream(13), batch_size=16):  # 208 images: warm up
    pass
  warm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  n = 0
  for out in jaxcam.explain_batches("gradcam", tap, stream(75), batch_size=16):  # 1200 images
    n += out["maps"].shape[0]
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - warm) / 1024
  assert n == 1200 and grown_mb < 30, grown_mb


def test_batch_explanation_takes_gradient_free_and_keyed_methods(convnet_b1):
  tap, _, x, t = convnet_b1
  xs = np.asarray(x)
  out = list(jaxcam.explain_batches("reciprocam", tap, [(xs[:2], np.asarray(t[:2])), (xs[2:], np.asarray(t[2:]))]))
  # batches of 2 here vs 3 in the direct call: XLA's CPU kernels round differently by batch size
  np.testing.assert_allclose(np.concatenate([o["maps"] for o in out]), jaxcam.reciprocam(tap, x, target=t), atol=1e-5)
  spec = jaxcam.smooth("layercam", num_samples=2, std=0.2)
  key = jax.random.key(5)
  (one,) = jaxcam.explain_batches(spec, tap, [(xs, np.asarray(t))], key=key)
  np.testing.assert_allclose(one["maps"], jaxcam.explain(spec, tap, x, target=t, key=key).maps, atol=1e-5)


@pytest.mark.fast
def test_batches_are_explanations_with_explains_fields(small):
  """Every entry point returns an Explanation: explain_batches yields them (numpy arrays, split back to the input
  batches), with the same fields and values as `explain` on the whole set, and the dict form still reads."""
  tap, x = small
  t = np.arange(10) % 5
  whole = jaxcam.explain("gradcam", tap, jnp.asarray(x), t)
  outs = list(jaxcam.explain_batches("gradcam", tap, [(x[:4], t[:4]), (x[4:], t[4:])], batch_size=4))
  assert all(isinstance(o, jaxcam.Explanation) for o in outs)
  assert [o.maps.shape[0] for o in outs] == [4, 6]
  assert {(o.method, o.layer, o.feature_sizes) for o in outs} == {(whole.method, whole.layer, whole.feature_sizes)}
  for field in ("maps", "logits", "scores"):
    np.testing.assert_allclose(np.concatenate([getattr(o, field) for o in outs]), getattr(whole, field), atol=1e-5)
  np.testing.assert_array_equal(np.concatenate([o.target for o in outs]), t)
  np.testing.assert_array_equal(outs[1]["targets"], outs[1].target)  # the dict form of earlier versions
  with pytest.raises(KeyError, match="ex.maps"):
    outs[0]["map"]
