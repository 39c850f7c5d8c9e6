"""Seconds per image of each gradient method against the JAX floors, in one process.

    python benchmarks/methods.py [--models efficientnet_lite0 resnet50] [--batches 1 16] [--repeats 5]
                                 [--methods gradcam gradcam_pp ...] [--json out.json] [--csv out.csv]

For each model x batch: the floors (the JAX forward alone; forward + backward from the tapped layer, i.e. what
every gradient method must at least do) and each method end to end (eager call, compiled internally). After one
first call each (trace + compile + run, timed), the entries are timed in `--repeats` interleaved rounds (floor,
floor, method 1, method 2, ..., then again) so drift on a shared machine hits all alike; median and min-max per
entry, and how many compilations each method added (1 = its first call only). The PyTorch peers are in `peers.py`.
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
from jaxcam import core, models

METHODS = ("gradcam", "gradcam_pp", "xgradcam", "layercam", "hirescam")


def run(model_names, batches, methods, repeats):
  photos = list(models.sample_images().values())
  rows = []
  for name in model_names:
    module, variables = (
      models.efficientnet_lite0(pretrained=True)
      if name == "efficientnet_lite0"
      else models.get_model(name, pretrained=False)
    )
    tap = jaxcam.linen_tap(module, variables)
    forward = jax.jit(module.apply)
    # everything a gradient method needs: logits, A and dS/dA (returned, so XLA cannot drop the forward pass)
    grads_floor = jax.jit(
      lambda tap, x, t: (lambda f: (f.logits, f.activations, f.grads))(core.forward_and_grads(tap, x, t))
    )
    for b in batches:
      x = jnp.asarray(models.preprocess([photos[i % len(photos)] for i in range(b)], name))
      t = jnp.argmax(forward(variables, x), -1)
      entries = [
        ("floor: forward", lambda: forward(variables, x)),
        ("floor: forward + layer backward", lambda: grads_floor(tap, x, t)),
      ]
      entries += [(m, (lambda m=m: getattr(jaxcam, m)(tap, x, target=t))) for m in methods]
      traces = jaxcam.api.TRACES  # a trace counter: a method's entry grows once per trace, never per call
      firsts, compiles, runs = {}, {label: 0 for label, _ in entries}, {label: [] for label, _ in entries}
      for r in range(repeats + 1):  # round 0: the first calls; then interleaved timed rounds
        for label, fn in entries:
          before = sum(traces.values())
          seconds = time_once(fn)
          compiles[label] += sum(traces.values()) - before
          if r:
            runs[label].append(seconds)
          else:
            firsts[label] = seconds
      for label, _ in entries:
        med, lo, hi = statistics.median(runs[label]), min(runs[label]), max(runs[label])
        rows.append(
          {
            "model": name,
            "batch": b,
            "what": label,
            "first_call_s": firsts[label],
            "median_s": med,
            "min_s": lo,
            "max_s": hi,
            "per_image_s": med / b,
            "images_per_s": b / med,
            "compiles": compiles[label] if label in methods else None,
          }
        )  # 1 = the first call only
        r = rows[-1]
        print(
          f"  {name} b={b} {label}: {r['per_image_s']:.4f} s/img, {r['images_per_s']:.1f} img/s, first "
          f"{r['first_call_s']:.2f} s, compiles {r['compiles']}",
          file=sys.stderr,
          flush=True,
        )
  return rows


def table(rows):
  out = [
    "| model | batch | what | s/image (median) | min-max s/call | images/s | first call s | compiles | vs floor |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  floors = {(r["model"], r["batch"]): r["per_image_s"] for r in rows if r["what"] == "floor: forward + layer backward"}
  for r in rows:
    ratio = r["per_image_s"] / floors[(r["model"], r["batch"])]
    out.append(
      f"| {r['model']} | {r['batch']} | {r['what']} | {r['per_image_s']:.4f} | {r['min_s']:.3f}-"
      f"{r['max_s']:.3f} | {r['images_per_s']:.1f} | {r['first_call_s']:.2f} | "
      f"{'-' if r['compiles'] is None else r['compiles']} | {ratio:.2f}x |"
    )
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50"])
  p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
  p.add_argument("--methods", nargs="+", default=list(METHODS))
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  rows = run(args.models, args.batches, args.methods, args.repeats)
  report(rows, table(rows), args.json, args.csv)


if __name__ == "__main__":
  main()
