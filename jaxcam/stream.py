"""Explanation of image files: bounded-memory loading, sharded outputs, resumable runs.

Every ``jaxcam explain`` runs here: with ``--shard-size N`` in shards of N files; without it as one shard (with
overlays), so both modes share one batching loop, one output format, one top-5 and one image decoder. Files are
sorted and cut into shards of N files (N a multiple of the batch size); shard k writes ``shards/maps-k.npz`` (one
map per readable file) and then ``shards/manifest-k.json`` (per file: shard, index, target, top-5, or the reason it
was skipped), both atomically (temporary file + rename). A shard is complete when its manifest exists, so a killed
run restarted with the same command skips the complete shards and produces byte-identical outputs. ``manifest.json``
merges the shard manifests at the end, with the method, layer, model and versions (no timestamps).

Resuming verifies the run: ``run.json`` holds a fingerprint of what the outputs depend on (the input paths with
their sizes and modification times, method, options, layer, model, target, input size, shard size, float16, the
jaxcam and jax versions). A rerun with an identical fingerprint resumes; any difference (files added, another
method) is a `RunMismatchError` naming what changed, never a silent mix of old and new maps; ``overwrite=True``
(``--overwrite``) first removes the previous run's outputs: only the files its run.json and manifests list
(`run_outputs`). A file jaxcam did not write where an output would go is never touched: the run is refused.

Several hosts: each process takes every ``process_count``-th shard starting at ``process_index`` and writes its own
shard files; ``jaxcam merge-manifests OUT`` (run once all processes are done) rewrites ``manifest.json`` from every
shard manifest present.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxcam import writers
from jaxcam._budget import MAX_IMAGE_PIXELS, regular_file_size

__all__ = [
  "RunMismatchError",
  "explain_files",
  "merge_manifests",
  "shard_paths",
  "decode_image",
  "top5",
  "overlay_path",
  "run_fingerprint",
  "run_outputs",
]


class RunMismatchError(ValueError):
  """`out` holds the outputs of a different run (other inputs, method, options, ...)."""


def _describe(value: Any) -> Any:
  """A JSON-able, deterministic description of an option value (arrays and keys by a hash of their bytes)."""
  import jax

  if isinstance(value, (str, int, float, bool)) or value is None:
    return value
  if isinstance(value, (list, tuple)):
    return [_describe(v) for v in value]
  if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    value = jax.random.key_data(value)
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    arr = np.asarray(value)
    return {"array": list(arr.shape), "dtype": str(arr.dtype), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
  return repr(value)


def run_fingerprint(files: Sequence[str], root: str, settings: dict[str, Any]) -> dict[str, Any]:
  """What a run's outputs depend on: its inputs (relative path, size, mtime) and settings, with a sha256."""
  inputs = []
  for f in files:
    try:
      st = os.stat(f)
      inputs.append([os.path.relpath(f, root), st.st_size, st.st_mtime_ns])
    except OSError:
      inputs.append([os.path.relpath(f, root), None, None])
  body = {"inputs": inputs, **{k: _describe(v) for k, v in sorted(settings.items())}}
  digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
  return {"sha256": digest, **body}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  out = []
  for key in sorted(set(old) | set(new) - {"sha256"}):
    if key == "sha256" or old.get(key) == new.get(key):
      continue
    if key == "inputs":
      a = {tuple(i[:1]): i for i in old.get(key, [])}
      b = {tuple(i[:1]): i for i in new.get(key, [])}
      added, removed = len(set(b) - set(a)), len(set(a) - set(b))
      changed = sum(1 for k in set(a) & set(b) if a[k] != b[k])
      out.append(f"inputs ({added} added, {removed} removed, {changed} changed)")
    else:
      out.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
  return out


def _read_json(path: str) -> Any:
  """The JSON object at `path`, or None (missing, not a regular file, unreadable or not JSON)."""
  try:
    if not stat.S_ISREG(os.stat(path).st_mode):
      return None
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_manifest(obj: Any) -> bool:
  return isinstance(obj, dict) and isinstance(obj.get("fingerprint"), str) and isinstance(obj.get("entries"), dict)


_SHARD_MANIFEST = re.compile(r"manifest-(\d{5})\.json")


def run_outputs(out: str) -> set[str]:
  """The files in `out` that jaxcam's own ``run.json`` and manifests list as a run's outputs (absolute paths, some
  perhaps not written yet): all that ``--overwrite`` removes, and what a folder scan leaves out of the inputs."""
  out = os.path.abspath(out)
  found: set[str] = set()
  manifests = []
  run = _read_json(os.path.join(out, "run.json"))
  if isinstance(run, dict) and isinstance(run.get("sha256"), str) and isinstance(run.get("inputs"), list):
    found.add(os.path.join(out, "run.json"))
    rels = [i[0] for i in run["inputs"] if isinstance(i, list) and i and isinstance(i[0], str)]
    size = run.get("shard_size")
    if isinstance(size, int) and size > 0:
      for k in range(-(-len(rels) // size)):
        found.update(shard_paths(out, k))
    found.update(overlay_path(out, rel) for rel in rels)
  top = _read_json(os.path.join(out, "manifest.json"))
  if _is_manifest(top):
    found.add(os.path.join(out, "manifest.json"))
    manifests.append(top)
  shard_dir = os.path.join(out, "shards")
  for name in sorted(os.listdir(shard_dir)) if os.path.isdir(shard_dir) else []:
    match = _SHARD_MANIFEST.fullmatch(name)
    shard = _read_json(os.path.join(shard_dir, name)) if match else None
    if _is_manifest(shard) and shard.get("shard") == int(match[1]):
      found.update(shard_paths(out, int(match[1])))
      manifests.append(shard)
  for m in manifests:
    found.update(
      os.path.join(out, e["overlay"])
      for e in m["entries"].values()
      if isinstance(e, dict) and isinstance(e.get("overlay"), str)
    )
  overlays = os.path.join(out, "overlays") + os.sep
  fixed = {os.path.join(out, n) for n in ("run.json", "manifest.json")}
  return {
    p for p in map(os.path.normpath, found) if p in fixed or p.startswith(overlays) or os.path.dirname(p) == shard_dir
  }


def _remove_outputs(out: str, own: set[str]) -> None:
  """Remove the files in `own` (a previous run's outputs), then the overlay folders that left empty."""
  folders = set()
  for p in sorted(own):
    if os.path.isfile(p) or os.path.islink(p):
      os.remove(p)
      folders.add(os.path.dirname(p))
  top = os.path.join(os.path.abspath(out), "overlays")
  for d in sorted(folders, key=len, reverse=True):
    while d.startswith(top) and os.path.isdir(d) and not os.listdir(d):
      os.rmdir(d)
      d = os.path.dirname(d)


def _prepare_out(out: str, fingerprint: dict[str, Any], overwrite: bool, files: Sequence[str], planned: list[str]):
  """Create `out`; resume only a run with the same fingerprint; with `overwrite`, remove the previous run's
  outputs (only the files its run.json and manifests list). A file in the way of an output that jaxcam did not
  write (`planned`: the paths this run writes) is never removed or overwritten: the run is refused."""
  run_path = os.path.join(out, "run.json")
  own = run_outputs(out)
  in_the_way = sorted(p for p in planned if os.path.lexists(p) and p not in own)
  if in_the_way and (overwrite or not os.path.exists(run_path)):
    more = f" (and {len(in_the_way) - 1} more)" if len(in_the_way) > 1 else ""
    raise RunMismatchError(
      f"{out!r} holds {in_the_way[0]!r}{more}, not written by jaxcam (no run.json or manifest of a jaxcam run lists "
      "it), where this run would write. jaxcam never overwrites such files, --overwrite included: use a fresh "
      "--out, or move them away."
    )
  if overwrite:
    taken = sorted(own & {os.path.abspath(f) for f in files})
    if taken:
      raise RunMismatchError(
        f"{taken[0]!r} is an input of this run and an output of the previous run in {out!r}: --overwrite would "
        "delete it. Copy the inputs elsewhere, or use a fresh --out."
      )
    _remove_outputs(out, own)
  os.makedirs(os.path.join(out, "shards"), exist_ok=True)
  if os.path.exists(run_path):
    try:
      with open(run_path, encoding="utf-8") as f:
        old = json.load(f)
    except (OSError, ValueError):
      old = {}
    if old.get("sha256") != fingerprint["sha256"]:
      changed = ", ".join(_differences(old, fingerprint)) or "an unreadable run.json"
      raise RunMismatchError(
        f"{out!r} holds the outputs of a different run (changed: {changed}). Use a fresh --out, or --overwrite "
        "to replace them."
      )
    return
  if any(n.startswith(("maps-", "manifest-")) for n in os.listdir(os.path.join(out, "shards"))):
    raise RunMismatchError(
      f"{out!r} holds shards of a run without a run.json (an older jaxcam, or not a jaxcam run). Use a fresh --out, "
      "or --overwrite to replace them."
    )
  writers.write_json(run_path, fingerprint, indent=1)


_STALE = re.compile(r"(maps-\d{5}\.npz|manifest-\d{5}\.json)\.tmp-\d+")  # a shard file a killed run left half-written


def _relative_inputs(files: Sequence[str], root: str, out: str) -> list[str]:
  """Each input's path relative to `root`; an input outside `root` is refused (its overlay would land outside
  ``out/overlays``, perhaps on a file of the user's)."""
  rels = []
  for f in files:
    rel = os.path.relpath(f, root)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
      raise ValueError(
        f"Expected every input to be inside `root` ({root!r}), got {f!r}, which is not inside `root`: its outputs "
        f"would be written outside {os.path.join(out, 'overlays')!r}. Pass root=os.path.commonpath(files)."
      )
    rels.append(rel)
  return rels


def _planned_outputs(out: str, rels: list[str], shard_size: int, overlays: bool, shards: range) -> list[str]:
  """The files this run may write (manifest.json first, absolute): its shards, run.json and overlays."""
  paths = [os.path.join(out, "manifest.json"), os.path.join(out, "run.json")]
  for k in shards:
    paths += shard_paths(out, k)
    if overlays and os.path.isdir(os.path.join(out, "overlays")):  # none can be in the way of a fresh folder
      paths += [overlay_path(out, rel) for rel in rels[k * shard_size : (k + 1) * shard_size]]
  return [os.path.normpath(os.path.abspath(p)) for p in paths]


def shard_paths(out: str, k: int) -> tuple[str, str]:
  d = os.path.join(out, "shards")
  return os.path.join(d, f"maps-{k:05d}.npz"), os.path.join(d, f"manifest-{k:05d}.json")


def decode_image(path: str) -> np.ndarray:
  """The image at `path` as uint8 RGB ``(h, w, 3)``, by bit depth (`jaxcam.models.to_uint8_rgb`: 16-bit PNGs
  are scaled, not clipped). Budgets before bytes: a `path` that is not a regular file (a FIFO, a device, a link to
  one) and a header declaring more than `jaxcam.io.MAX_IMAGE_PIXELS` pixels are a ValueError before any pixel is
  read; otherwise raises what PIL raises for a broken file."""
  from PIL import Image

  from jaxcam.models import to_uint8_rgb

  regular_file_size(path, "an image file")  # a FIFO would block open() forever
  with Image.open(path) as im:  # reads the header only
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
      raise ValueError(
        f"Cannot decode {path!r}: its header declares {w} x {h} pixels, more than the {MAX_IMAGE_PIXELS} (8192 x "
        "8192, jaxcam.io.MAX_IMAGE_PIXELS) jaxcam decodes; refused before decoding. Downscale the image first."
      )
    im.load()
    return to_uint8_rgb(im)


def top5(probs: np.ndarray, class_name: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
  """The five most probable classes ``[{"id", "name", "p"}]`` of one image's probabilities."""
  idx = np.argsort(-probs)[:5]
  return [
    {"id": int(i), "name": class_name(int(i)) if class_name else None, "p": round(float(probs[i]), 6)} for i in idx
  ]


def overlay_path(out: str, rel: str) -> str:
  """Where the overlay of input `rel` (relative to the run's root) goes: the input tree mirrored, the file name
  kept whole (``x/cat.jpg`` -> ``overlays/x/cat.jpg.png``), so distinct inputs never share an overlay."""
  return os.path.join(out, "overlays", rel + ".png")


def _decode(path: str, size: int) -> tuple[np.ndarray | None, tuple[int, int] | None, str | None]:
  from jaxcam.models import resize_uint8

  try:
    arr = decode_image(path)
    return resize_uint8(arr, size).astype(np.float32) / 255.0, arr.shape[:2], None
  except Exception as e:  # any decoding failure is reported per file, never fatal
    return None, None, f"{type(e).__name__}: {e}"


def _decoded_batches(files: Sequence[str], size: int, batch_size: int, workers: int) -> Iterator:
  """(names, images or None, sizes, errors) per batch of files; decoding runs in a thread pool."""
  with ThreadPoolExecutor(max_workers=workers) as pool:
    for start in range(0, len(files), batch_size):
      names = list(files[start : start + batch_size])
      decoded = list(pool.map(lambda p: _decode(p, size), names))
      good = [(n, a, hw) for n, (a, hw, err) in zip(names, decoded) if a is not None]
      errors = {n: err for n, (a, _, err) in zip(names, decoded) if a is None}
      images = np.stack([a for _, a, _ in good]) if good else None
      yield [n for n, _, _ in good], images, [hw for _, _, hw in good], errors


def _loader(files: Sequence[str], size: int, batch_size: int, depth: int, workers: int) -> Iterator:
  """`_decoded_batches` run in a background thread, at most `depth` batches ahead (bounded memory)."""
  from jaxcam.batch import run_ahead

  return run_ahead(_decoded_batches(files, size, batch_size, workers), depth)


def explain_files(
  files: Sequence[str],
  out: str,
  *,
  method: str,
  tap,
  model: str,
  root: str,
  shard_size: int,
  batch_size: int,
  input_size: int,
  target: int | None = None,
  float16: bool = False,
  mesh=None,
  overlays: bool = False,
  process_index: int = 0,
  process_count: int = 1,
  progress: Callable[[int], None] | None = None,
  class_name: Callable[[int], str] | None = None,
  chunk_progress: bool = False,
  options: dict[str, Any] | None = None,
  overwrite: bool = False,
  eigen_smooth: bool = False,
  aug_smooth: bool = False,
) -> dict[str, Any]:
  """Explain `files` shard by shard into `out` (see the module docstring); returns the merged manifest.

  `progress` is called with the number of images done; `chunk_progress` adds a bar per chunked map inside each
  batch (expensive methods); `options` are the method's options (``chunk_size``, ``top_n``, ...);
  `eigen_smooth` / `aug_smooth` as in `jaxcam.explain` (aug_smooth: pytorch-grad-cam's default augmentations)."""
  import jax

  import jaxcam
  from jaxcam import viz

  if shard_size % batch_size:
    raise ValueError(f"Expected --shard-size to be a multiple of --batch-size ({batch_size}), got {shard_size}.")
  method_name = method if isinstance(method, str) else method.name
  settings = {
    "method": method_name,
    "method_inputs": None if isinstance(method, str) else repr(getattr(method, "inputs", None)),
    "options": {k: _describe(v) for k, v in sorted((options or {}).items())},
    "layer": _describe(tap.layer),
    "model": model,
    "target": target,
    "input_size": input_size,
    "shard_size": shard_size,
    "float16": float16,
    "eigen_smooth": bool(eigen_smooth),
    "aug_smooth": bool(aug_smooth),
    "jaxcam": jaxcam.__version__,
    "jax": jax.__version__,
  }
  rels = _relative_inputs(files, root, out)
  fingerprint = run_fingerprint(files, root, settings)
  planned = _planned_outputs(
    out, rels, shard_size, overlays, range(process_index, -(-len(files) // shard_size), process_count)
  )
  _prepare_out(out, fingerprint, overwrite, files, planned if process_count == 1 else planned[1:])
  shard_dir = os.path.join(out, "shards")
  for stale in [n for n in os.listdir(shard_dir) if _STALE.fullmatch(n)]:  # left by a killed run
    os.remove(os.path.join(shard_dir, stale))
  n_shards = -(-len(files) // shard_size)
  header = {
    "method": method_name,
    "layer": tap.layer,
    "model": model,
    "shard_size": shard_size,
    "jaxcam": jaxcam.__version__,
    "jax": jax.__version__,
    "files": len(files),
    "fingerprint": fingerprint["sha256"],
  }
  for k in range(process_index, n_shards, process_count):
    maps_path, manifest_path = shard_paths(out, k)
    shard_files = files[k * shard_size : (k + 1) * shard_size]
    if os.path.exists(manifest_path) and os.path.exists(maps_path):
      if progress:
        progress(len(shard_files))
      continue  # complete: written atomically, manifest last
    entries: dict[str, Any] = {}
    maps: dict[str, np.ndarray] = {}
    pending: list[tuple[list[str], list]] = []

    def batches():
      for names, images, sizes, errors in _loader(shard_files, input_size, batch_size, depth=2, workers=2):
        for name, err in errors.items():
          entries[os.path.relpath(name, root)] = {"shard": k, "skipped": err}
        if progress and errors:
          progress(len(errors))
        if images is None:
          continue
        pending.append((names, sizes))
        yield images if target is None else (images, np.full((len(names),), target, np.int32))

    index = 0
    results = jaxcam.explain_batches(
      method,
      tap,
      batches(),
      mesh=mesh,
      batch_size=batch_size,
      progress=chunk_progress,
      eigen_smooth=eigen_smooth,
      aug_smooth=aug_smooth,
      **(options or {}),
    )
    for result in results:
      names, sizes = pending.pop(0)
      probs = np.asarray(jax.nn.softmax(result["logits"], axis=-1))
      for j, (name, size) in enumerate(zip(names, sizes)):
        rel = os.path.relpath(name, root)
        key = f"{index:06d}"
        m = result["maps"][j]
        maps[key] = m.astype(np.float16 if float16 else np.float32)
        tid = int(result["targets"][j])
        entries[rel] = {
          "shard": k,
          "index": key,
          "target": {"id": tid, "name": class_name(tid) if class_name else None},
          "top5": top5(probs[j], class_name),
          "size": list(size),
          "peak": list(viz.peak(m, size)),  # (row, col) in the image's own pixels
        }
        if overlays:
          png = overlay_path(out, rel)
          os.makedirs(os.path.dirname(png), exist_ok=True)
          viz.save_png(png, viz.overlay(decode_image(name), m))
          entries[rel]["overlay"] = os.path.relpath(png, out)
        index += 1
      if progress:
        progress(len(names))
    writers.save_npz(maps_path, maps)
    writers.write_json(manifest_path, {**header, "shard": k, "entries": entries}, indent=1)
  if process_count == 1:
    return merge_manifests(out)
  own: dict[str, Any] = {}  # this process's shards (complete ones included): what it explained and skipped
  for k in range(process_index, n_shards, process_count):
    with open(shard_paths(out, k)[1], encoding="utf-8") as f:
      own.update(json.load(f)["entries"])
  return {**header, "entries": own, "skipped": sorted(r for r, e in own.items() if "skipped" in e)}


def merge_manifests(out: str) -> dict[str, Any]:
  """Merge every ``shards/manifest-*.json`` of `out` into ``manifest.json`` (sorted; no timestamps)."""
  d = os.path.join(out, "shards")
  names = sorted(n for n in os.listdir(d) if n.startswith("manifest-") and n.endswith(".json"))
  if not names:
    raise FileNotFoundError(f"No shard manifests in {d!r}: nothing to merge.")
  merged: dict[str, Any] = {"entries": {}}
  keys = ("method", "layer", "model", "shard_size", "jaxcam", "jax", "files", "fingerprint")
  for n in names:
    path = os.path.join(d, n)
    try:
      with open(path, encoding="utf-8") as f:
        shard = json.load(f)
      missing = [k for k in keys + ("entries",) if k not in shard]
    except (OSError, ValueError) as e:
      raise ValueError(f"Cannot read shard manifest {path!r} ({type(e).__name__}: {e}); rerun that shard.") from None
    if missing:
      raise ValueError(f"Shard manifest {path!r} lacks {missing}: not a manifest of this jaxcam; rerun that shard.")
    if merged.setdefault("fingerprint", shard["fingerprint"]) != shard["fingerprint"]:
      raise RunMismatchError(f"Shard manifest {path!r} belongs to a different run than {names[0]!r}; not merged.")
    for key in keys:
      merged.setdefault(key, shard[key])
    merged["entries"].update(shard["entries"])
  merged["shards"] = len(names)
  merged["skipped"] = sorted(k for k, v in merged["entries"].items() if "skipped" in v)
  writers.write_json(os.path.join(out, "manifest.json"), merged, indent=1)
  return merged
