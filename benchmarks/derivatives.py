"""Exact vs approximate Grad-CAM++: end-to-end seconds per call, compile time reported separately.

    python benchmarks/derivatives.py [--models efficientnet_lite0 resnet50] [--repeats 5] [--json out.json]
                                     [--csv out.csv] [--generic-directions 512]

Rows: approximate Grad-CAM++ (batch 8), exact structured (batch 8), exact generic (batch 1). The generic
strategy needs h*w*C directions (62,720 at EfficientNet-Lite0's head); it is timed on the first
`--generic-directions` of them and the full-call time is extrapolated linearly (marked "extrapolated").
Target (issue): structured exact within 3x of approximate. Score: log_softmax of each image's top class.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from _common import report, time_calls

import jaxcam
from jaxcam import core, derivatives, models


def _time(fn, repeats):
  first, med, lo, hi = time_calls(fn, repeats)
  return {"first_s": first, "compile_s": max(first - med, 0.0), "median_s": med, "min_s": lo, "max_s": hi}


def _model(name):
  if name == "efficientnet_lite0":
    return models.efficientnet_lite0(pretrained=True)
  return models.get_model(name, pretrained=False)


def run(model_names, repeats, generic_directions, size=224):
  photos = list(models.sample_images().values())
  rows = []
  for name in model_names:
    module, variables = _model(name)
    tap = jaxcam.linen_tap(module, variables)
    for batch, label, kwargs in [
      (8, "approx", {}),
      (8, "exact structured", {"derivatives": "exact", "strategy": "structured"}),
    ]:
      x = jnp.asarray(models.preprocess([photos[i % len(photos)] for i in range(batch)], size))
      t = jaxcam.targets.log_softmax(jnp.argmax(module.apply(variables, x), -1))
      r = _time(lambda: jaxcam.gradcam_pp(tap, x, target=t, **kwargs), repeats)
      rows.append(
        {
          "model": name,
          "variant": label,
          "batch": batch,
          **r,
          "per_image_s": r["median_s"] / batch,
          "extrapolated": False,
        }
      )
    # generic, batch 1: time `generic_directions` directions, extrapolate to all h*w*C
    x = jnp.asarray(models.preprocess(photos[:1], size))
    t = jaxcam.targets.log_softmax(jnp.argmax(module.apply(variables, x), -1))
    fwd = core.forward_and_grads(tap, x, t)
    a = fwd.activations[0]
    f = derivatives.score_vector_fn(tap, x, jaxcam.targets.with_ids(fwd.target, fwd.ids))
    n_total = int(np.prod(a.shape[1:]))
    n = min(generic_directions, n_total)
    part = jax.jit(lambda a: derivatives._generic(f, a, jnp.arange(n), derivatives.DEFAULT_CHUNK_SIZE))
    r = _time(lambda: part(a), max(2, repeats // 2))
    approx_b1 = _time(lambda: jaxcam.gradcam_pp(tap, x, target=t), repeats)["median_s"]
    scale = n_total / n
    est = approx_b1 + r["median_s"] * scale
    rows.append(
      {
        "model": name,
        "variant": f"exact generic ({n}/{n_total} directions timed)",
        "batch": 1,
        "first_s": r["first_s"],
        "compile_s": r["compile_s"],
        "median_s": est,
        "min_s": approx_b1 + r["min_s"] * scale,
        "max_s": approx_b1 + r["max_s"] * scale,
        "per_image_s": est,
        "extrapolated": True,
      }
    )
  return rows


def table(rows):
  lines = [
    "| model | variant | batch | s/call (median) | min-max | s/image | compile s | ratio vs approx |",
    "|---|---|---|---|---|---|---|---|",
  ]
  approx = {r["model"]: r["per_image_s"] for r in rows if r["variant"] == "approx"}
  for r in rows:
    ratio = r["per_image_s"] / approx[r["model"]]
    ext = " (extrapolated)" if r["extrapolated"] else ""
    lines.append(
      f"| {r['model']} | {r['variant']} | {r['batch']} | {r['median_s']:.3f}{ext} | "
      f"{r['min_s']:.3f}-{r['max_s']:.3f} | {r['per_image_s']:.4f} | {r['compile_s']:.2f} | {ratio:.2f}x |"
    )
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "resnet50"])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--generic-directions", type=int, default=512)
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  rows = run(args.models, args.repeats, args.generic_directions)
  report(rows, table(rows), args.json, args.csv)


if __name__ == "__main__":
  main()
