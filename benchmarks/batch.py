"""explain_batches throughput over 1, 2, 4, 8 (simulated) devices and memory over a long stream.

    python benchmarks/batch.py [--devices 1 2 4 8] [--images 64] [--size 224] [--json out.json]

Each device count runs in a fresh process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (on a
CPU host: a correctness and overhead check, not a speedup claim; on a GPU host the real devices are used).
EfficientNet-Lite0 with its real weights, Grad-CAM, global batch 16. The memory rows stream 100 and 1000 images
(96x96) and report the peak RSS growth after the first 100: flat means the pipeline holds nothing per image.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)

WORKER = r"""
import json, resource, sys, time
import numpy as np, jax, jaxcam
from jaxcam import models
n_images, size, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
module, variables = models.efficientnet_lite0(pretrained=True)
tap = jaxcam.linen_tap(module, variables)
rng = np.random.default_rng(0)
def stream(n):
    for _ in range(n // 16):
        yield rng.uniform(0, 1, (16, size, size, 3)).astype(np.float32)
if mode == "throughput":
    for _ in jaxcam.explain_batches("gradcam", tap, stream(16), batch_size=16):  # compile
        pass
    t0 = time.perf_counter(); n = 0
    for out in jaxcam.explain_batches("gradcam", tap, stream(n_images), batch_size=16):
        n += out["maps"].shape[0]
    dt = time.perf_counter() - t0
    print(json.dumps({"devices": len(jax.local_devices()), "kind": jax.devices()[0].device_kind,
                      "images": n, "seconds": dt, "images_per_s": n / dt}))
else:
    for _ in jaxcam.explain_batches("gradcam", tap, stream(100), batch_size=16):
        pass
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = 0
    for out in jaxcam.explain_batches("gradcam", tap, stream(n_images), batch_size=16):
        n += out["maps"].shape[0]
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    print(json.dumps({"images": n, "peak_rss_growth_mb": grown}))
"""


def _run(args, env_extra):
  env = dict(os.environ, **env_extra)
  out = subprocess.run(
    [sys.executable, "-c", WORKER, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
  )
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
  p.add_argument("--images", type=int, default=64)
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--memory-images", nargs="+", type=int, default=[100, 1000])
  p.add_argument("--json")
  args = p.parse_args(argv)
  rows = []
  print("| devices | device kind | images | seconds | images/s |\n|---|---|---|---|---|")
  for n in args.devices:
    flags = f"--xla_force_host_platform_device_count={n}"
    r = _run([args.images, args.size, "throughput"], {"XLA_FLAGS": flags})
    rows.append(r)
    print(
      f"| {r['devices']} | {r['kind']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} |", flush=True
    )
  print("\n| streamed images (96x96, after 100 warm-up) | peak RSS growth MB |\n|---|---|")
  for n in args.memory_images:
    r = _run([n, 96, "memory"], {})
    rows.append(r)
    print(f"| {r['images']} | {r['peak_rss_growth_mb']:.1f} |", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
