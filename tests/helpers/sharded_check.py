"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: sharded == single-device explain_batches.

Prints one JSON line with the comparisons; the test asserts on it.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxcam
from tests import nets


def main():
  assert len(jax.local_devices()) == 8, jax.local_devices()
  module = nets.ConvNet()
  x = np.asarray(jax.random.normal(jax.random.key(0), (21, 12, 12, 3)), np.float32)
  variables = module.init(jax.random.key(1), x[:1])
  tap = jaxcam.linen_tap(module, variables)
  sizes = [5, 3, 7, 6]  # 21 images in uneven input batches; global batch 8 -> 3 global batches, last padded
  targets = np.arange(21) % 5
  out = {}
  for method in ("gradcam", "layercam", "gradcam_pp", "eigencam"):

    def stream(with_targets):
      start = 0
      for n in sizes:
        yield (x[start : start + n], targets[start : start + n]) if with_targets else x[start : start + n]
        start += n

    sharded = list(jaxcam.explain_batches(method, tap, stream(True), batch_size=8))
    single = list(
      jaxcam.explain_batches(method, tap, stream(True), batch_size=8, mesh=jaxcam.local_mesh(jax.local_devices()[:1]))
    )
    # the same per-device work on one device: batches of 1 (8 devices x 1 image each above)
    single_b1 = list(
      jaxcam.explain_batches(method, tap, stream(True), batch_size=1, mesh=jaxcam.local_mesh(jax.local_devices()[:1]))
    )
    direct = np.asarray(getattr(jaxcam, method)(tap, jnp.asarray(x), target=targets))
    got = np.concatenate([o["maps"] for o in sharded])
    out[method] = {
      "lengths": [o["maps"].shape[0] for o in sharded],
      "bitwise_equal_single": bool(all(np.array_equal(a["maps"], b["maps"]) for a, b in zip(sharded, single))),
      "bitwise_equal_single_same_per_device_batch": bool(
        all(
          np.array_equal(a["maps"], b["maps"]) and np.array_equal(a["logits"], b["logits"])
          for a, b in zip(sharded, single_b1)
        )
      ),
      "max_diff_single": float(max(np.abs(a["maps"] - b["maps"]).max() for a, b in zip(sharded, single))),
      "max_diff_direct": float(np.abs(got - direct).max()),
      "targets_ok": bool(np.array_equal(np.concatenate([o["targets"] for o in sharded]), targets)),
    }
  # no targets: each image's top class; and the whole stream compiles once, short last batch included
  before = jaxcam.api.TRACES["gradcam"]  # a trace counter: Python runs once per trace, never per call
  res = list(jaxcam.explain_batches(jaxcam.gradcam, tap, (x[i : i + 4] for i in range(0, 21, 4)), batch_size=8))
  out["no_targets"] = {
    "lengths": [r["maps"].shape[0] for r in res],
    "compiles": jaxcam.api.TRACES["gradcam"] - before,
    "argmax_ok": bool(
      np.array_equal(np.concatenate([r["targets"] for r in res]), np.asarray(jnp.argmax(tap(jnp.asarray(x))[0], -1)))
    ),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  sys.exit(main())
