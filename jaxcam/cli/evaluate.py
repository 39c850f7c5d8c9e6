"""`jaxcam evaluate`: the metrics table (Average Drop / Increase, deletion / insertion, ROAD, ADCC, ARCC, pointing,
energy, AUROC, IoU) per method on the bundled photos or a folder."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from jaxcam import _progress, writers
from jaxcam.cli._common import (
  DEMO_EXTRA,
  CliError,
  _check_out,
  _load_model,
  collect_images,
  demo_methods,
  import_model,
  imported_tap,
  is_imported,
)
from jaxcam.metrics.table import DEFAULT_METRICS, METRICS, get_metric

EVAL_METRICS = METRICS  # the live metric table (`jaxcam.metrics.register_metric` adds a column here too)
DEFAULT_EVAL_METRICS = DEFAULT_METRICS


def _evaluation_rows(names: str) -> list[str]:
  """--methods: comma-separated rows (``gradcam_pp_exact``: Grad-CAM++ with exact derivatives), or "default":
  every fixed-cost row plus exact Grad-CAM++."""
  import jaxcam

  if names == "default":
    return demo_methods() + list(DEMO_EXTRA)
  rows = [n.strip() for n in names.split(",") if n.strip()]
  for n in rows:
    try:
      jaxcam.get_method(n)
    except (KeyError, ValueError, TypeError) as e:
      raise CliError(str(e).strip("'\"")) from None
  return rows


def _stem(name: str) -> str:
  return os.path.splitext(os.path.basename(name))[0]


def _lookup(table: dict, name: str) -> Any:
  """An image's entry in a boxes file: by its name as listed, its file name, or its stem (on either side, so
  "coffee.png" in the file finds the bundled photo "coffee")."""
  base = os.path.basename(name)
  for k in (name, base, _stem(name)):
    if k in table:
      return table[k]
  stems = [k for k in table if _stem(k) == _stem(name)]
  return table[stems[0]] if len(stems) == 1 else None


def _centres(n_out: int, n_in: int) -> np.ndarray:
  """The source index of each resized pixel's centre (the rule boxes and masks are resized by)."""
  return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)


def read_boxes(boxes: str) -> dict:
  """The ``--boxes`` file checked whole (before any model is loaded): a regular file (a FIFO would block forever),
  a JSON object whose every value is a list of ``[x0, y0, x1, y1]`` (or one such box) of finite numbers."""
  import json

  from jaxcam._budget import regular_file_size

  try:
    regular_file_size(boxes, "--boxes")
    with open(boxes, encoding="utf-8") as f:
      table = json.load(f)
  except (OSError, ValueError) as e:
    raise CliError(f"--boxes: cannot read {boxes!r} as JSON: {e}".splitlines()[0]) from None
  if not isinstance(table, dict):
    kind = type(table).__name__
    raise CliError(f'--boxes: expected a JSON object {{"image": [[x0, y0, x1, y1], ...]}}, got a {kind}')
  for name, entry in table.items():
    if not _is_boxes(entry):
      raise CliError(
        f"--boxes: expected a list of [x0, y0, x1, y1] for {name!r}, got {entry!r:.80} (in {boxes!r}; "
        "numbers in the original image's pixels)"
      )
  return table


def _is_boxes(entry: Any) -> bool:
  def number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)

  if not isinstance(entry, list):
    return False
  if len(entry) == 4 and all(number(v) for v in entry):
    return True  # one box
  return all(isinstance(b, list) and len(b) == 4 and all(number(v) for v in b) for b in entry)


def load_regions(boxes: str | None, masks: str | None, names: list[str], photos: dict, size: int):
  """Boolean regions (B, S, S) at the model's input size and which images have one, from ``--boxes`` (JSON:
  ``{"image": [[x0, y0, x1, y1], ...]}`` in the original image's pixels, half-open, keyed by the image's name, file
  name or stem) or ``--masks`` (a folder of ``<stem>.png`` at the image's size, nonzero = inside). A resized pixel
  is inside when its centre falls inside in the original image."""
  from jaxcam import stream

  out = np.zeros((len(names), size, size), bool)
  present = np.zeros(len(names), bool)
  table = read_boxes(boxes) if boxes else None
  for i, name in enumerate(names):
    h, w = np.asarray(photos[name]).shape[:2]
    rows, cols = _centres(size, h)[:, None], _centres(size, w)[None, :]
    if table is not None:
      entry = _lookup(table, name)
      if entry is None:
        continue
      for x0, y0, x1, y1 in np.asarray(entry, float).reshape(-1, 4):
        out[i] |= (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
      present[i] = True
    if masks:
      path = os.path.join(masks, _stem(name) + ".png")
      if not os.path.exists(path):
        continue
      m = np.asarray(stream.decode_image(path))
      m = m.max(axis=-1) if m.ndim == 3 else m
      if m.shape != (h, w):
        raise CliError(f"--masks: {path} is {m.shape[1]}x{m.shape[0]}, its image {name!r} is {w}x{h}")
      out[i] |= m[_centres(size, h)][:, _centres(size, w)] > 0
      present[i] = True
  if not present.any():
    raise CliError(
      f"no region for any image: {'--boxes keys' if boxes else '--masks files'} must match the images "
      f"(by name, file name or stem; masks as <stem>.png). Images: {', '.join(names[:5])}"
    )
  return out, present


def cmd_evaluate(args) -> int:
  t0 = time.perf_counter()
  rows, wanted = _checked_arguments(args)  # every argument, before any image or model is loaded
  tap, x, names, regions, rows = _evaluation_inputs(args, rows)
  table, per_image = _evaluate_rows(args, tap, x, names, regions, rows, wanted)
  os.makedirs(args.out, exist_ok=True)
  summary = {
    "model": args.model,
    "layer": tap.layer,
    "score": args.score,
    "steps": args.steps,
    "images": names,
    "metrics": wanted,
    "methods": {
      row: {k: _mean_std(v) for k, v in vals.items()}
      for row, vals in table.items()
    },
  }  # fmt: skip
  writers.write_json(os.path.join(args.out, "summary.json"), summary)
  with open(os.path.join(args.out, "results.csv"), "w", encoding="utf-8") as f:
    f.write(",".join(["method", "image", *wanted]) + "\n")
    for r in per_image:
      f.write(",".join([r["method"], r["image"], *(f"{r[k]:.6g}" for k in wanted)]) + "\n")
  print(evaluation_table(summary))
  print(f"wrote results.csv and summary.json to {args.out} in {time.perf_counter() - t0:.1f} s")
  return 0


def _checked_arguments(args) -> tuple[list[str], list[str]]:
  """The rows and metrics to evaluate, every argument checked first (a user error costs no minutes of work)."""
  rows = _evaluation_rows(args.methods)
  if not rows:
    raise CliError(f"--methods: expected at least one method (comma-separated), got {args.methods!r}")
  regional = bool(args.boxes or args.masks)
  if args.metrics is None:
    wanted = list(DEFAULT_METRICS) + ([k for k, v in METRICS.items() if "regions" in v.needs] if regional else [])
  else:
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
  bad = sorted(set(wanted) - set(METRICS))
  if bad or not wanted:
    raise CliError(f"--metrics: unknown {bad or args.metrics!r}; choose from {', '.join(METRICS)}")
  needs = [m for m in wanted if "regions" in METRICS[m].needs]
  if needs and not regional:
    raise CliError(f"--metrics {','.join(needs)} need regions: pass --boxes FILE.json or --masks FOLDER")
  for flag, value, least in (("--steps", args.steps, 1), ("--chunk-size", args.chunk_size, 1)):
    if value < least:
      raise CliError(f"{flag} must be at least {least}, got {value}")
  if args.size < 1:
    raise CliError(f"--size must be at least 1, got {args.size} (the input size of an imported model, in pixels)")
  if args.tolerance < 0:
    raise CliError(f"--tolerance must be >= 0, got {args.tolerance} (pointing-game tolerance in input pixels)")
  if args.boxes:
    read_boxes(args.boxes)
  if args.masks and not os.path.isdir(args.masks):
    raise CliError(f"--masks: expected a folder of <stem>.png masks, got {args.masks!r}")
  _check_out(args.out)
  return rows, wanted


def _evaluation_inputs(args, rows: list[str]):
  """(tap, preprocessed images, their names, regions or None, the rows this tap can read)."""
  import jax.numpy as jnp

  import jaxcam
  from jaxcam import models, stream

  if args.inputs:
    files = collect_images(args.inputs)
    photos = {}
    for f in files:
      try:
        photos[os.path.relpath(f)] = stream.decode_image(f)
      except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
        raise CliError(f"cannot read image {f!r}: {type(e).__name__}: {e}".splitlines()[0]) from None
  else:
    photos = models.sample_images()
  names = list(photos)
  if is_imported(args.model):  # pixels in [0, 1] at the model's input size: the model normalizes inside
    m = import_model(args.model, args.weights)
    size = m.input_size[0] if m.input_size else args.size
    x = jnp.asarray(np.stack([models.resize_uint8(photos[n], size) for n in names]).astype(np.float32) / 255.0)
    tap = imported_tap(m, x, args.layer)
  else:
    module, variables = _load_model(args.model, args.weights)
    x = jnp.asarray(models.preprocess([photos[n] for n in names], args.model))
    try:
      tap = jaxcam.linen_tap(module, variables, args.layer)
    except (KeyError, ValueError, TypeError) as e:
      raise CliError(str(e)) from None
  regions = load_regions(args.boxes, args.masks, names, photos, x.shape[1]) if args.boxes or args.masks else None
  if args.methods == "default":  # the rows that can read this tap (LeGrad needs transformer blocks)
    rows = [r for r in rows if jaxcam.get_method(r).applies(tap)]
  return tap, x, names, regions, rows


def _evaluate_rows(args, tap, x, names, regions, rows, wanted):
  """Per row: its maps timed warm, then every metric; returns the table and the per-image records."""
  import jax

  import jaxcam

  ids = jax.numpy.argmax(tap.forward(x), axis=-1)
  score = jaxcam.targets.softmax(ids) if args.score == "probability" else jaxcam.targets.logit(ids)
  key = jax.random.key(args.seed)
  settings = dict(key=key, regions=regions, steps=args.steps, chunk_size=args.chunk_size, tolerance=args.tolerance)
  table: dict[str, dict[str, list[float]]] = {}
  per_image: list[dict] = []
  bar = _progress.bar(len(rows), "evaluating", unit="method")
  try:
    for row in rows:
      opts: dict[str, Any] = {"key": key} if "key" in jaxcam.get_method(row).defaults() else {}

      def run(row=row, opts=opts):
        return jax.block_until_ready(jaxcam.explain(row, tap, x, ids, progress=False, **opts).maps)

      run()  # compile
      start = time.perf_counter()
      maps = run()
      cost = (time.perf_counter() - start) / len(names)
      values = jaxcam.metrics.evaluate(tap, x, row, score, metrics=wanted, maps=maps, method_options=opts, **settings)
      table[row] = {k: v.tolist() for k, v in values.items()} | {"s_per_image": [cost]}
      for i, n in enumerate(names):
        per_image.append({"method": row, "image": n, **{k: float(v[i]) for k, v in values.items()}})
      bar.update(1)
  finally:
    bar.close()
  return table, per_image


def _mean_std(values: list[float]) -> dict:
  """Mean and std over the images that have a value (localization metrics: those with a region)."""
  v = np.asarray(values, float)
  v = v[np.isfinite(v)]
  if not v.size:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": int(v.size)}


def evaluation_table(summary: dict) -> str:
  """The markdown table `jaxcam evaluate` prints: mean ± std per method and metric, and the warm cost per image."""
  wanted = summary["metrics"]
  head = "| method | " + " | ".join(f"{m} {get_metric(m).arrow}" for m in wanted) + " | s/img |"
  lines = [head, "|" + "---|" * (len(wanted) + 2)]
  for row, vals in summary["methods"].items():
    cells = [
      "-" if vals[m]["mean"] is None else f"{vals[m]['mean']:.3f} ± {vals[m]['std']:.3f}" for m in wanted
    ]  # fmt: skip
    lines.append(f"| {row} | " + " | ".join(cells) + f" | {vals['s_per_image']['mean']:.3f} |")
  return "\n".join(lines)
