"""`jaxcam demo`: EfficientNet-Lite0 (real weights) on the bundled photos, every fixed-cost row and exact Grad-CAM++."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxcam import writers
from jaxcam.cli._common import (
  DEMO_EXTRA,
  _check_out,
  demo_methods,
)


def cmd_demo(args) -> int:
  import jax
  import jax.numpy as jnp

  import jaxcam
  from jaxcam import models, stream, viz

  t0 = time.perf_counter()
  _check_out(args.out)
  os.makedirs(args.out, exist_ok=True)
  module, variables = models.efficientnet_lite0(pretrained=True)
  photos = models.sample_images()
  names = list(photos)
  x = jnp.asarray(models.preprocess([photos[n] for n in names], "efficientnet_lite0"))
  tap = jaxcam.linen_tap(module, variables)
  methods = demo_methods(args.all, tap)
  key = jax.random.key(args.seed)
  shared = [m for m in methods if not jaxcam.get_method(m).expensive()]
  many = jaxcam.explain_many(shared, tap, x, key=key)  # one forward + backward for these
  results = {k: v.maps for k, v in many.items()}
  logits = next(iter(many.values())).logits
  for m in methods:
    if m not in results:
      keyed: dict[str, Any] = {"key": key} if "key" in jaxcam.get_method(m).defaults() else {}
      results[m] = jaxcam.explain(m, tap, x, **keyed).maps
  extra = [m for m in DEMO_EXTRA if m not in methods]
  results.update({m: jaxcam.explain(m, tap, x).maps for m in extra})
  shown = methods + extra  # table order, exact Grad-CAM++ last
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  images: dict[str, dict] = {}
  jobs: list = []
  summary = {"model": "efficientnet_lite0", "layer": tap.layer, "methods": shown, "images": images}
  for i, name in enumerate(names):
    top = stream.top5(probs[i], models.class_name)
    h, w = photos[name].shape[:2]
    peaks = {m: list(viz.peak(np.asarray(results[m][i]), (h, w))) for m in shown}
    images[name] = {"top5": top, "target": top[0], "peak": peaks}
    print(f"{name}: " + ", ".join(f"{t['name']} ({t['p']:.2f})" for t in top))
    print(f"  map peak (row, col) in the {h}x{w} photo: " + ", ".join(f"{m} {tuple(p)}" for m, p in peaks.items()))
    jobs += [(photos[name], np.asarray(results[m][i]), f"{name}_{m}.png") for m in shown]
  with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # PNG encoding releases the GIL
    list(pool.map(lambda job: viz.save_png(os.path.join(args.out, job[2]), viz.overlay(job[0], job[1])), jobs))
  grid_path = os.path.join(args.out, "grid.png")
  viz.grid(
    [photos[n] for n in names],
    {m: list(np.asarray(results[m])) for m in shown},
    [f"{n}: {images[n]['target']['name']}" for n in names],
    path=grid_path,
  )
  writers.write_json(os.path.join(args.out, "summary.json"), summary)
  print(
    f"wrote {len(names) * len(shown)} overlays, {grid_path} and summary.json to {args.out} "
    f"in {time.perf_counter() - t0:.1f} s"
  )
  return 0
