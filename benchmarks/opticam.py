"""Opti-CAM's cost against its step count, in units of Grad-CAM and of one full forward + backward pass.

    python benchmarks/opticam.py [--model efficientnet_lite0] [--batch 2] [--steps 10 50 100] [--repeats 3]
                                 [--json out.json] [--csv out.csv]

Opti-CAM (`jaxcam.methods.opticam`) runs `steps` Adam steps, each one forward pass of the masked image through the
whole model and one backward pass to the mask's weights, so its cost should be about ``steps`` times that floor,
plus the shared forward pass. Entries: Grad-CAM (forward + backward from the layer), the floor (forward + backward
through the whole model to the input, jitted), and Opti-CAM at each step count (eager `jaxcam.explain`, compiled
internally). After a first call each (trace + compile + run, timed), the entries are timed in `--repeats`
interleaved rounds so drift on a shared machine hits them alike; medians reported.
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


def _model(name: str):
  if name == "efficientnet_lite0":
    return models.efficientnet_lite0(pretrained=True)
  return models.get_model(name, pretrained=False)


def run(model_name: str, batch: int, steps: list[int], repeats: int) -> list[dict]:
  module, variables = _model(model_name)
  tap = jaxcam.linen_tap(module, variables)
  photos = list(models.sample_images().values())
  x = jnp.asarray(models.preprocess([photos[i % len(photos)] for i in range(batch)], model_name))
  t = jnp.argmax(jax.jit(module.apply)(variables, x), -1)

  @jax.jit
  def floor(x, t):  # one forward + backward through the whole model: what one Opti-CAM step needs
    return jax.grad(lambda x: module.apply(variables, x)[jnp.arange(x.shape[0]), t].sum())(x)

  entries = [
    ("gradcam", lambda: jaxcam.gradcam(tap, x, target=t)),
    ("floor: forward + input backward", lambda: floor(x, t)),
  ]
  entries += [(f"opticam steps={n}", (lambda n=n: jaxcam.opticam(tap, x, target=t, steps=n))) for n in steps]
  firsts, runs = {}, {label: [] for label, _ in entries}
  for r in range(repeats + 1):  # round 0: the first calls; then interleaved timed rounds
    for label, fn in entries:
      seconds = time_once(fn)
      if r:
        runs[label].append(seconds)
      else:
        firsts[label] = seconds
      print(f"  round {r} {label}: {seconds:.3f} s", file=sys.stderr, flush=True)
  rows = []
  med = {label: statistics.median(v) for label, v in runs.items()}
  for label, _ in entries:
    n = int(label.split("=")[1]) if label.startswith("opticam") else None
    rows.append(
      {
        "model": model_name,
        "batch": batch,
        "what": label,
        "steps": n,
        "first_call_s": firsts[label],
        "median_s": med[label],
        "min_s": min(runs[label]),
        "max_s": max(runs[label]),
        "vs_gradcam": med[label] / med["gradcam"],
        "per_step_vs_floor": None if n is None else med[label] / (n * med["floor: forward + input backward"]),
      }
    )
  return rows


def table(rows: list[dict]) -> str:
  out = [
    "| model | batch | what | median s | min-max s | first call s | x Grad-CAM | per step / floor |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    per_step = "-" if r["per_step_vs_floor"] is None else f"{r['per_step_vs_floor']:.2f}"
    out.append(
      f"| {r['model']} | {r['batch']} | {r['what']} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | "
      f"{r['first_call_s']:.2f} | {r['vs_gradcam']:.1f}x | {per_step} |"
    )
  return "\n".join(out)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="efficientnet_lite0", help="a shipped model (real weights for Lite0)")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--steps", nargs="+", type=int, default=[10, 50, 100])
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  rows = run(args.model, args.batch, args.steps, args.repeats)
  report(rows, table(rows), args.json, args.csv)


if __name__ == "__main__":
  main()
