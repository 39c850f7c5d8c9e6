"""The study's ImageNet grid: CAM methods at the deepest layer of VGG-16 (or another torchvision model) on
ILSVRC2012 validation images, with the Grad-CAM++ paper's Average Drop and Increase in Confidence.

    python benchmarks/imagenet_grid.py --images path/to/ILSVRC2012/val --weights vgg16.pth   # the study's grid
    python benchmarks/imagenet_grid.py                                # offline: EfficientNet-Lite0, bundled photos

`--images` is a folder in torchvision's ImageFolder layout (``val/<wnid>/*.JPEG``: class index = the sorted wnid's
position, torchvision's order) or a flat folder with `--labels FILE` (lines ``<file name> <class index>``, 0-based
in torchvision's order); without labels the target is each image's top class. `--weights` is a torchvision
checkpoint you downloaded (jaxcam never downloads; converted by `jaxcam.models`). Scores use softmax
probabilities of the target class, as the Grad-CAM++ paper's Table 1 (VGG-16: Grad-CAM 46.56 / 13.42, Grad-CAM++
36.84 / 17.05 Average Drop % / Increase in Confidence %). Writes results.json, results.csv and grid.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxcam
from jaxcam import _progress, models, viz

METHODS = ("gradcam", "gradcam_pp", "gradcam_pp_exact", "layercam", "cam")  # the study's, plus exact Grad-CAM++
PAPER = {"gradcam": (46.56, 13.42), "gradcam_pp": (36.84, 17.05)}  # Chattopadhay et al., Table 1, VGG-16
EXTENSIONS = (".jpeg", ".jpg", ".png")


def list_images(folder: str, labels: str | None) -> tuple[list[str], list[int] | None]:
  """(files, class indices or None) from an ImageFolder tree or a flat folder (+ a labels file)."""
  subdirs = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
  if subdirs:
    files, ids = [], []
    for i, d in enumerate(subdirs):
      for f in sorted(os.listdir(os.path.join(folder, d))):
        if f.lower().endswith(EXTENSIONS):
          files.append(os.path.join(folder, d, f))
          ids.append(i)
    return files, ids
  files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS))
  if labels is None:
    return files, None
  table = {}
  with open(labels) as fh:
    for line in fh:
      parts = line.split()
      if len(parts) >= 2:
        table[os.path.basename(parts[0])] = int(parts[1])
  missing = [f for f in files if os.path.basename(f) not in table]
  if missing:
    raise SystemExit(f"imagenet_grid.py: no label for {len(missing)} image(s) in {labels!r}, e.g. {missing[0]!r}")
  return files, [table[os.path.basename(f)] for f in files]


def run(module, variables, x: np.ndarray, ids: np.ndarray | None, methods, batch: int, progress=True) -> dict:
  """Per method: maps, Average Drop and Increase in Confidence (softmax of the target class)."""
  tap = jaxcam.linen_tap(module, variables)
  if ids is None:
    ids = np.concatenate([np.asarray(jnp.argmax(tap.forward(jnp.asarray(x[i : i + batch])), -1))
                          for i in range(0, len(x), batch)])  # fmt: skip
  out = {}
  bar = _progress.bar(len(methods), "methods", unit="method") if progress else None
  for name in methods:
    method, opts = ("gradcam_pp", {"derivatives": "exact"}) if name == "gradcam_pp_exact" else (name, {})
    try:
      maps, drops, ups = [], [], []
      for i in range(0, len(x), batch):
        xb, tb = jnp.asarray(x[i : i + batch]), jnp.asarray(ids[i : i + batch])
        m = jaxcam.explain(method, tap, xb, target=tb, progress=False, **opts).maps
        cc = jaxcam.metrics.confidence_change(tap, xb, m, jaxcam.targets.softmax(tb))
        maps.append(np.asarray(m))
        drops.append(np.asarray(cc.drop))
        ups.append(np.asarray(cc.increased))
      drop, up = np.concatenate(drops), np.concatenate(ups)
      out[name] = {"avg_drop": float(100 * np.nanmean(drop)), "increase": float(100 * np.mean(up)),
                   "maps": np.concatenate(maps)}  # fmt: skip
    except ValueError as e:  # e.g. CAM on VGG-16 (no global-average-pooling head)
      out[name] = {"n/a": str(e).split(". ")[0]}
    if bar:
      bar.update(1)
  if bar:
    bar.close()
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--images", default=None, help="ILSVRC2012 validation folder (ImageFolder layout or flat)")
  p.add_argument("--labels", default=None, help="for a flat folder: lines '<file> <class index>' (0-based)")
  p.add_argument("--weights", default=None, help="torchvision checkpoint of --model (required with --images)")
  p.add_argument("--model", default="vgg16", choices=["vgg16", "resnet18", "resnet50"], help="default vgg16")
  p.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
  p.add_argument("--batch-size", type=int, default=16)
  p.add_argument("--out", default="runs/imagenet_grid")
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  if args.images is None:  # offline: the shipped pretrained network on scikit-image's photos
    name = "efficientnet_lite0"
    module, variables = models.efficientnet_lite0(pretrained=True)
    photos = models.sample_images()
    names, originals, ids = list(photos), list(photos.values()), None
  else:
    if args.weights is None:
      raise SystemExit("imagenet_grid.py: --images needs --weights (a torchvision checkpoint of --model)")
    name = args.model
    module, variables = models.get_model(args.model, weights=args.weights)
    files, labels = list_images(args.images, args.labels)
    if args.limit:
      files, labels = files[: args.limit], None if labels is None else labels[: args.limit]
    from jaxcam.stream import decode_image

    names, originals = [os.path.relpath(f, args.images) for f in files], [decode_image(f) for f in files]
    ids = None if labels is None else np.asarray(labels)
  x = models.preprocess(originals, models.input_size(name) if name in models.MODELS else 224)
  results = run(module, variables, x, ids, METHODS, args.batch_size)
  os.makedirs(args.out, exist_ok=True)
  summary = {
    "model": name,
    "layer": jaxcam.linen_tap(module, variables).layer,
    "images": len(names),
    "methods": {k: {kk: vv for kk, vv in v.items() if kk != "maps"} for k, v in results.items()},
    "paper_vgg16": {k: {"avg_drop": a, "increase": b} for k, (a, b) in PAPER.items()},
    "seconds": round(time.perf_counter() - t0, 1),
  }
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method", "avg_drop", "increase"])
    for k, v in summary["methods"].items():
      w.writerow(
        [k, f"{v['avg_drop']:.2f}" if "avg_drop" in v else "n/a", f"{v['increase']:.2f}" if "increase" in v else "n/a"]
      )
  shown = {k: v["maps"][:6] for k, v in results.items() if "maps" in v}
  viz.grid(originals[:6], shown, names[:6], path=os.path.join(args.out, "grid.png"))
  print(table(summary))
  print(f"{summary['images']} images, {name} at {summary['layer']!r}, {summary['seconds']:.0f} s; wrote {args.out}")
  return 0


def table(summary: dict) -> str:
  lines = [
    "| method | Average Drop % (lower is better) | Increase in Confidence % | paper, VGG-16 |",
    "|---|---|---|---|",
  ]
  for k, v in summary["methods"].items():
    paper = "{:.2f} / {:.2f}".format(*PAPER[k]) if k in PAPER else ""
    if "avg_drop" in v:
      lines.append(f"| {k} | {v['avg_drop']:.2f} | {v['increase']:.2f} | {paper} |")
    else:
      lines.append(f"| {k} | n/a: {v['n/a']} | | {paper} |")
  return "\n".join(lines)


if __name__ == "__main__":
  raise SystemExit(main())
