"""gScoreCAM against Score-CAM at the same channel count k (issue 28 item 5).

    python benchmarks/gscorecam.py [--batch 2] [--k 64 300] [--repeats 3] [--json out.json] [--csv out.csv]

Both run k masked copies of each image through the whole model (EfficientNet-Lite0, real weights, layer `head`,
1280 channels); they differ in how the k channels are chosen: gScoreCAM by the largest mean gradient (one extra
backward pass from the layer), Score-CAM's ``top_n=k`` (Faster-Score-CAM) by the largest spatial standard
deviation. So gScoreCAM / Score-CAM at the same k is the price of the gradient ranking. Full Score-CAM (all 1280
channels) is the reference row. Timings: a first call each (trace + compile + run), then `--repeats` interleaved
rounds; medians reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from _common import report, time_once

import jaxcam
from jaxcam import models


def run(batch: int, ks: list[int], repeats: int) -> list[dict]:
  module, variables = models.efficientnet_lite0(pretrained=True)
  tap = jaxcam.linen_tap(module, variables, "head")
  photos = list(models.sample_images().values())
  x = jnp.asarray(models.preprocess([photos[i % len(photos)] for i in range(batch)], "efficientnet_lite0"))
  t = jnp.argmax(jax.jit(module.apply)(variables, x), -1)
  entries = [("scorecam (all 1280)", None, lambda: jaxcam.scorecam(tap, x, target=t, progress=False))]
  for k in ks:
    entries.append((f"scorecam top_n={k}", k, lambda k=k: jaxcam.scorecam(tap, x, target=t, top_n=k, progress=False)))
    entries.append((f"gscorecam k={k}", k, lambda k=k: jaxcam.gscorecam(tap, x, target=t, k=k, progress=False)))
  firsts, runs = {}, {label: [] for label, _, _ in entries}
  for r in range(repeats + 1):
    for label, _, fn in entries:
      seconds = time_once(fn)
      if r:
        runs[label].append(seconds)
      else:
        firsts[label] = seconds
      print(f"  round {r} {label}: {seconds:.3f} s", file=sys.stderr, flush=True)
  med = {label: statistics.median(v) for label, v in runs.items()}
  rows = []
  for label, k, _ in entries:
    pair = f"scorecam top_n={k}" if label.startswith("gscorecam") else None
    rows.append(
      {
        "what": label,
        "k": k,
        "batch": batch,
        "first_call_s": firsts[label],
        "median_s": med[label],
        "s_per_image": med[label] / batch,
        "vs_scorecam_same_k": med[label] / med[pair] if pair else None,
      }
    )
  return rows


def table(rows: list[dict]) -> str:
  out = ["| what | median s | s/img | first call s | / Score-CAM at the same k |", "|---|---|---|---|---|"]
  for r in rows:
    ratio = "-" if r["vs_scorecam_same_k"] is None else f"{r['vs_scorecam_same_k']:.2f}"
    out.append(f"| {r['what']} | {r['median_s']:.2f} | {r['s_per_image']:.2f} | {r['first_call_s']:.1f} | {ratio} |")
  return "\n".join(out)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--k", nargs="+", type=int, default=[64, 300])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  rows = run(args.batch, args.k, args.repeats)
  report(rows, table(rows), args.json, args.csv)


if __name__ == "__main__":
  main()
