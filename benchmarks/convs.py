"""XLA's convolution against jaxcam's lowering (`jaxcam.models.layers.conv2d`) on the shipped models' layer shapes.

    python benchmarks/convs.py [--batch 16] [--repeats 10] [--json out.json] [--csv out.csv]

For each shape: the forward time of ``lax.conv_general_dilated`` (what ``flax.linen.Conv`` runs) and of
`conv2d` (dot for 1x1, shifted multiply-adds for depthwise on CPU, XLA's convolution otherwise), and the same
for the input gradient (what a CAM's backward pass needs). Median of `--repeats` calls after a compile call.
Also checks the two agree (max abs difference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from benchmarks._common import report
from jaxcam.models import layers

# (name, H, Cin, Cout, kernel, stride, groups)
SHAPES = [
  ("lite0 blocks/1 depthwise", 112, 96, 96, 3, 2, 96),
  ("lite0 blocks/2 depthwise", 56, 144, 144, 3, 1, 144),
  ("lite0 blocks/4 depthwise", 28, 240, 240, 5, 1, 240),
  ("lite0 blocks/10 depthwise", 14, 672, 672, 5, 1, 672),
  ("lite0 blocks/15 depthwise", 7, 1152, 1152, 3, 1, 1152),
  ("lite0 head 1x1", 7, 320, 1280, 1, 1, 1),
  ("resnet50 layer1 1x1 64->256", 56, 64, 256, 1, 1, 1),
  ("resnet50 layer1 1x1 256->64", 56, 256, 64, 1, 1, 1),
  ("resnet50 layer2 downsample 1x1/2", 56, 256, 512, 1, 2, 1),
  ("resnet50 layer1 3x3 (XLA conv both)", 56, 64, 64, 3, 1, 1),
]


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  runs = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    runs.append(time.perf_counter() - t0)
  return statistics.median(runs)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  key = jax.random.key(0)
  rows = []
  for name, h, cin, cout, k, s, g in SHAPES:
    x = jax.random.normal(key, (args.batch, h, h, cin))
    w = jax.random.normal(key, (k, k, cin // g, cout)) / (k * k * cin // g) ** 0.5
    pads = (layers.same_padding(h, k, s),) * 2
    xla = jax.jit(
      lambda x, w: lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=layers._DIMS, feature_group_count=g)
    )
    ours = jax.jit(lambda x, w: layers.conv2d(x, w, stride=s, padding=pads, groups=g))
    ct = jnp.ones(jax.eval_shape(xla, x, w).shape, x.dtype)
    dx = lambda f: jax.jit(lambda x, w: jax.vjp(lambda x: f(x, w), x)[1](ct)[0])
    row = {
      "layer": name,
      "batch": args.batch,
      "shape": f"{h}x{h}x{cin}->{cout} k{k} s{s} g{g}",
      "xla_fwd_ms": 1e3 * _time(xla, x, w, repeats=args.repeats),
      "jaxcam_fwd_ms": 1e3 * _time(ours, x, w, repeats=args.repeats),
      "xla_dx_ms": 1e3 * _time(dx(xla), x, w, repeats=args.repeats),
      "jaxcam_dx_ms": 1e3 * _time(dx(ours), x, w, repeats=args.repeats),
      "max_abs_diff": float(jnp.max(jnp.abs(xla(x, w) - ours(x, w)))),
    }
    rows.append(row)
    print(row, file=sys.stderr, flush=True)
  lines = [
    "| layer | input | XLA conv fwd ms | jaxcam fwd ms | speedup | XLA dx ms | jaxcam dx ms | speedup | max abs diff |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['layer']} | {r['shape']} | {r['xla_fwd_ms']:.2f} | {r['jaxcam_fwd_ms']:.2f} | "
      f"{r['xla_fwd_ms'] / r['jaxcam_fwd_ms']:.1f}x | {r['xla_dx_ms']:.2f} | {r['jaxcam_dx_ms']:.2f} | "
      f"{r['xla_dx_ms'] / r['jaxcam_dx_ms']:.1f}x | {r['max_abs_diff']:.1e} |"
    )
  report(rows, "\n".join(lines), args.json, args.csv)


if __name__ == "__main__":
  main()
