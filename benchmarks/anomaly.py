"""CAMs that localise anomalies: a CutPaste detector on MVTec-AD (or its synthetic stand-in), explained by every
method in jaxcam's table at the deepest layer, scored against the defect masks.

    python benchmarks/anomaly.py --data path/to/mvtec_ad/bottle --out runs/bottle   # real MVTec-AD categories
    python benchmarks/anomaly.py --synthetic --out runs/synth                       # offline, bundled textures
    python benchmarks/anomaly.py --synthetic --quick                                # CI-sized

Writes results.json (``image_auroc`` of the detector; per method ``pixel_auroc``, ``pointing``, ``iou`` for the
defect-logit target and under ``gde`` for the anomaly-score target), results.csv, one PNG grid per category and
the derivative study (exact vs approximate Grad-CAM++ on the trained detector and on ImageNet EfficientNet-Lite0).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jaxcam
from benchmarks import _anomaly as an
from jaxcam import _progress, viz

SETTINGS = {  # size, train/good, test/good, test/<kind> per texture, training steps, textures
  "full": dict(size=128, n_train=96, n_good=16, n_defect=8, steps=250, textures=tuple(an.TEXTURES)),
  "quick": dict(size=64, n_train=24, n_good=6, n_defect=2, steps=12, textures=("brick",)),
}
QUICK_METHODS = ("gradcam", "gradcam_pp")


def _categories(args, setting) -> list[str]:
  if args.synthetic:
    root = os.path.join(args.out, "data")
    return an.write_synthetic(root, size=setting["size"], n_train=setting["n_train"], n_good=setting["n_good"],
                              n_defect=setting["n_defect"], seed=args.seed, textures=setting["textures"])  # fmt: skip
  if os.path.isdir(os.path.join(args.data, "train")):
    return [args.data]
  found = sorted(os.path.join(args.data, d) for d in os.listdir(args.data)
                 if os.path.isdir(os.path.join(args.data, d, "train")))  # fmt: skip
  if not found:
    raise SystemExit(f"anomaly.py: no MVTec-AD category (a folder with train/good and test/) in {args.data!r}")
  return found


def _explain_rows(module, variables, cat, gauss, methods, key, bar, exact=True) -> tuple[dict, dict]:
  """{row: {target: scores}} and {row: maps for the grid} on the defective test images."""
  tap = jaxcam.linen_tap(module, variables, "head")
  x = jnp.asarray(cat.test[cat.labels == 1], jnp.float32) / 255.0
  masks = cat.masks[cat.labels == 1]
  targets = {"defect": an.defect_score, "gde": an.gde_target(gauss)}
  rows = [(m, {}) for m in methods] + ([("gradcam_pp_exact", {"derivatives": "exact"})] if exact else [])
  results, grid_maps = {}, {}
  for name, extra in rows:
    method = "gradcam_pp" if name == "gradcam_pp_exact" else name
    opts = {**an.method_options(method, key), **extra}
    results[name] = {}
    for tname, target in targets.items():
      try:
        maps = np.asarray(jaxcam.explain(method, tap, x, target=target, progress=False, **opts).maps)
        results[name][tname] = an.localization_scores(maps, masks)
        if tname == "defect":
          grid_maps[name] = maps
      except Exception as e:  # e.g. CAM and Finer-CAM need logits and class ids, not a score: recorded, not fatal
        results[name][tname] = {"n/a": f"{type(e).__name__}: {str(e).split('. ')[0]}"}
      bar.update(1)
  return results, grid_maps


def _derivative_study(tap, x, target, masks=None) -> dict:
  rep = jaxcam.study.compare_derivatives(tap, x, target)
  out = {
    "images": int(x.shape[0]),
    "median_map_rel_l2": float(np.median(np.asarray(rep.map_rel_l2))),
    "median_spearman": float(np.median(np.asarray(rep.map_spearman))),
    "argmax_moved": float(np.mean(np.asarray(rep.argmax_moved))),
    "median_alpha_rel_err": float(np.median(np.asarray(rep.alpha_rel_err))),
  }
  if masks is not None:
    out["exact"] = an.localization_scores(np.asarray(rep.maps_exact), masks)
    out["approx"] = an.localization_scores(np.asarray(rep.maps_approx), masks)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument("--data", help="an MVTec-AD category folder (or the dataset root: every category)")
  src.add_argument("--synthetic", action="store_true", help="generate the offline stand-in from bundled textures")
  p.add_argument("--out", default="runs/anomaly", help="output folder (default runs/anomaly)")
  p.add_argument("--quick", action="store_true", help="CI-sized: one texture, 64 px, 12 steps, 2 methods")
  p.add_argument("--size", type=int, default=None, help="image size (default 128, quick 64)")
  p.add_argument("--steps", type=int, default=None, help="training steps (default 250, quick 12)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  setting = dict(SETTINGS["quick" if args.quick else "full"])
  setting["size"] = args.size or setting["size"]
  setting["steps"] = args.steps or setting["steps"]
  os.makedirs(args.out, exist_ok=True)
  t0 = time.perf_counter()
  key = jax.random.key(args.seed)
  methods = QUICK_METHODS if args.quick else tuple(jaxcam.method_names())
  methods = tuple(m for m in methods if m != "legrad")  # a CNN detector: LeGrad reads transformer blocks
  summary: dict = {"setting": {**setting, "textures": list(setting["textures"])}, "categories": {}, "methods": {}}
  per_method: dict = {}
  for ci, folder in enumerate(_categories(args, setting)):
    cat = an.load_mvtec(folder, setting["size"])
    k_init, k_train, k_exp = jax.random.split(jax.random.fold_in(key, ci), 3)
    module, variables = an.pretrained_detector(k_init, setting["size"])
    bar = _progress.bar(setting["steps"], f"{cat.name}: training", unit="step")
    tt = time.perf_counter()
    variables, losses = an.train(module, variables, cat.train, key=k_train, steps=setting["steps"], progress=bar.update)
    bar.close()
    train_s = time.perf_counter() - tt
    gauss = an.fit_gaussian(an.features_of(module, variables, cat.train))
    scores = np.asarray(gauss.score(jnp.asarray(an.features_of(module, variables, cat.test))))
    auroc = an.image_auroc(scores, cat.labels)
    bar = _progress.bar(2 * (len(methods) + (not args.quick)), f"{cat.name}: explaining", unit="map")
    te = time.perf_counter()
    results, grid_maps = _explain_rows(module, variables, cat, gauss, methods, k_exp, bar, exact=not args.quick)
    bar.close()
    explain_s = time.perf_counter() - te
    defective = cat.test[cat.labels == 1]
    x = jnp.asarray(defective, jnp.float32) / 255.0
    deriv = {}
    if not args.quick:  # exact vs approximate Grad-CAM++ on the trained detector (the full run only)
      tap = jaxcam.linen_tap(module, variables, "head", output="logits")  # class-id targets read the logits
      defect_class = jnp.argmax(module.apply(variables, x)["logits"][:, 1:], -1) + 1
      for tname, target in (("logit", jaxcam.targets.logit(defect_class)),
                            ("log_softmax", jaxcam.targets.log_softmax(defect_class))):  # fmt: skip
        deriv[tname] = _derivative_study(tap, x, target, cat.masks[cat.labels == 1])
        deriv[tname]["target"] = f"{tname} of the predicted defect class (cutpaste or scar)"
    summary["categories"][cat.name] = {
      "image_auroc": auroc,
      "train_s": round(train_s, 1),
      "explain_s": round(explain_s, 1),
      "loss_first": float(np.mean(losses[: max(1, len(losses) // 10)])),
      "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
      "n_train": int(len(cat.train)),
      "n_test": int(len(cat.test)),
      "n_defective": int(cat.labels.sum()),
      "methods": results,
      "derivatives": deriv,
    }
    for name, r in results.items():
      per_method.setdefault(name, []).append(r)
    pick = np.linspace(0, len(defective) - 1, min(4, len(defective))).round().astype(int)
    shown = ["gradcam", "gradcam_pp", "gradcam_pp_exact", "layercam", "scorecam", "eigencam"]
    cols = {"mask": cat.masks[cat.labels == 1][pick].astype(np.float32)}
    cols.update({m: grid_maps[m][pick] for m in shown if m in grid_maps})
    kinds = [k for k, lab in zip(cat.kinds, cat.labels) if lab == 1]
    viz.grid(list(defective[pick]), cols, [kinds[i] for i in pick], path=os.path.join(args.out, f"grid_{cat.name}.png"))
  # averages over categories
  cats = summary["categories"].values()
  summary["image_auroc"] = float(np.mean([c["image_auroc"] for c in cats]))
  for name, rs in per_method.items():
    row: dict = {}
    for tname in ("defect", "gde"):
      vals = [r[tname] for r in rs if "n/a" not in r[tname]]
      entry = {k: float(np.mean([v[k] for v in vals])) for k in ("pixel_auroc", "pointing", "iou")} if vals else {
        "n/a": rs[0][tname].get("n/a", "")}  # fmt: skip
      if tname == "defect":
        row.update(entry)
      else:
        row["gde"] = entry
    summary["methods"][name] = row
  if not args.quick:  # the derivative study on the ImageNet model, log-softmax of the top class
    net, net_vars = jaxcam.models.efficientnet_lite0(pretrained=True)
    photos = jaxcam.models.sample_images()
    xi = jnp.asarray(jaxcam.models.preprocess(list(photos.values()), "efficientnet_lite0"))
    top = jnp.argmax(net.apply(net_vars, xi), -1)
    summary["imagenet_lite0"] = _derivative_study(jaxcam.linen_tap(net, net_vars), xi, jaxcam.targets.log_softmax(top))
  summary["seconds"] = round(time.perf_counter() - t0, 1)
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
  with open(os.path.join(args.out, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["method", "target", "pixel_auroc", "pointing", "iou"])
    for name, row in summary["methods"].items():
      for tname, entry in (("defect", row), ("gde", row["gde"])):
        w.writerow(
          [name, tname] + [f"{entry[k]:.4f}" if k in entry else "n/a" for k in ("pixel_auroc", "pointing", "iou")]
        )
  print(table(summary))
  print(f"image AUROC {summary['image_auroc']:.3f}; {summary['seconds']:.0f} s; wrote {args.out}/results.json")
  return 0


def table(summary: dict) -> str:
  """The results as a Markdown table (defect-logit and anomaly-score targets), best pixel AUROC first."""
  lines = [
    "| method | pixel AUROC | pointing | IoU | pixel AUROC (GDE score) | pointing (GDE) |",
    "|---|---|---|---|---|---|",
  ]
  f = lambda e, k: f"{e[k]:.3f}" if k in e else "n/a"
  rows = sorted(summary["methods"].items(), key=lambda kv: -kv[1].get("pixel_auroc", -1))
  for name, r in rows:
    lines.append(f"| {name} | {f(r, 'pixel_auroc')} | {f(r, 'pointing')} | {f(r, 'iou')} | "
                 f"{f(r['gde'], 'pixel_auroc')} | {f(r['gde'], 'pointing')} |")  # fmt: skip
  return "\n".join(lines)


if __name__ == "__main__":
  raise SystemExit(main())
