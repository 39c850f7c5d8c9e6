"""Explanation of image files: bounded-memory loading, sharded outputs, resumable runs.

Every ``jaxcam explain`` runs here: with ``--shard-size N`` in shards of N files; without it as one shard (with
overlays), so both modes share one batching loop, one output format, one top-5 and one image decoder. Files are
sorted and cut into shards of N files (N a multiple of the batch size); shard k writes ``shards/maps-k.npz`` (one
map per readable file) and then ``shards/manifest-k.json`` (per file: shard, index, target, top-5, or the reason it
was skipped; and the blake2b hash of the maps file), both atomically (temporary file + rename). A shard is complete
when its manifest belongs to this run and its maps file still has that hash (and, with overlays asked for, when its
overlays are there), so a killed run restarted with the same command skips the complete shards and produces
byte-identical outputs; a truncated or altered shard is recomputed; a finished run rerun with overlays writes them.
``manifest.json`` merges the shard manifests at the end, with the method, layer, model and versions (no timestamps).

Resuming verifies the run: ``run.json`` holds a fingerprint of what the outputs depend on (the input paths with
their sizes, modification times and a blake2b hash of their bytes; method, options, layer, model, target, input
size, shard size, float16, the jaxcam and jax versions). A rerun with an identical fingerprint resumes; any
difference (files added or rewritten, another method) is a `RunMismatchError` naming what changed (a damaged
run.json: says so), never a silent mix of old and new maps; ``overwrite=True`` (``--overwrite``) first removes the
previous run's outputs: only the files its run.json and manifests list (`run_outputs`). A file jaxcam did not write
where an output would go is never touched: the run is refused. The bookkeeping lives in `jaxcam._runs`.

Several hosts: each process takes every ``process_count``-th shard starting at ``process_index`` and writes its own
shard files; ``jaxcam merge-manifests OUT`` (run once all processes are done) rewrites ``manifest.json`` from every
shard manifest present.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxcam import writers
from jaxcam._budget import MAX_IMAGE_PIXELS, ImageDecodeError, regular_file_size
from jaxcam._runs import (
  _STALE,
  RunMismatchError,
  _describe,
  _planned_outputs,
  _prepare_out,
  _relative_inputs,
  file_digest,
  merge_manifests,
  overlay_path,
  run_fingerprint,
  run_outputs,
  shard_complete,
  shard_paths,
)

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


def decode_image(path: str) -> np.ndarray:
  """The image at `path` as uint8 RGB ``(h, w, 3)``, upright (its EXIF orientation applied, as PIL's
  `ImageOps.exif_transpose`: a phone photo stored sideways is explained as shown), by bit depth
  (`jaxcam.models.to_uint8_rgb`: 16-bit PNGs are scaled, not clipped). Budgets before bytes: a `path` that is not
  a regular file (a FIFO, a device, a link to one) is a ValueError before it is opened, and a header declaring more
  than `jaxcam.io.MAX_IMAGE_PIXELS` pixels an `ImageDecodeError` before any pixel is read. Every other failure (not
  an image, truncated, corrupt, pixels jaxcam cannot read: whatever PIL raised) is a `jaxcam.io.ImageDecodeError`, an
  OSError and a ValueError, naming the file and the decoder's reason.

  Args:
    path: an image file in any format PIL reads (PNG, JPEG, ...).

  Returns:
    A numpy uint8 array ``(h, w, 3)``, the image as shown (grayscale repeated to RGB, alpha dropped).

  Raises:
    jaxcam.io.ImageDecodeError: a file that cannot be decoded, or that declares more than
      `jaxcam.io.MAX_IMAGE_PIXELS` pixels.
    ValueError: `path` is not a regular file (a directory, a FIFO, a device).
    FileNotFoundError: `path` does not exist.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from jaxcam import stream
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, "depth.png")
    ...   Image.fromarray(np.array([[0, 65535]], np.uint16)).save(path)  # a 16-bit grayscale PNG
    ...   stream.decode_image(path).tolist()  # scaled to 8 bits, repeated to RGB
    [[[0, 0, 0], [255, 255, 255]]]
  """
  from PIL import Image, ImageOps

  from jaxcam.models import to_uint8_rgb

  path = os.fspath(path)
  regular_file_size(path, "an image file")  # a FIFO would block open() forever
  too_many = (
    f"more than the {MAX_IMAGE_PIXELS} (8192 x 8192, jaxcam.io.MAX_IMAGE_PIXELS) jaxcam decodes; refused before "
    "decoding. Downscale the image first."
  )
  try:
    with Image.open(path) as im:  # reads the header only
      w, h = im.size
      if w * h > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(f"Cannot decode {path!r}: its header declares {w} x {h} pixels, {too_many}")
      im.load()
      return to_uint8_rgb(ImageOps.exif_transpose(im))
  except (ImageDecodeError, MemoryError):
    raise
  except Image.DecompressionBombError as e:  # PIL's own limit (twice its MAX_IMAGE_PIXELS), met while opening
    declared = re.search(r"\d+ pixels", str(e))
    raise ImageDecodeError(
      f"Cannot decode {path!r}: its header declares {declared.group() if declared else 'more pixels'}, {too_many}"
    ) from e
  except Exception as e:  # a broken file raises any type in PIL (OSError, SyntaxError, struct.error, EOFError, ...)
    reason = " ".join(str(e).split())[:300]
    raise ImageDecodeError(f"Cannot decode {path!r} as an image ({type(e).__name__}: {reason}).") from e


def top5(probs: np.ndarray, class_name: Callable[[int], str] | None = None) -> list[dict[str, Any]]:
  """The five most probable classes ``[{"id", "name", "p"}]`` of one image's probabilities.

  Args:
    probs: one image's class probabilities ``(C,)`` (numpy).
    class_name: a function from class id to name (e.g. `jaxcam.models.class_name`); None: every name is None.

  Returns:
    A list of ``min(5, C)`` dicts, most probable first: ``"id"`` (int), ``"name"`` and ``"p"`` (a float rounded
      to 6 decimals), as in the manifests of `explain_files`.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import stream
    >>> stream.top5(np.array([0.1, 0.6, 0.3]), class_name=lambda i: "abc"[i])
    [{'id': 1, 'name': 'b', 'p': 0.6}, {'id': 2, 'name': 'c', 'p': 0.3}, {'id': 0, 'name': 'a', 'p': 0.1}]
  """
  idx = np.argsort(-probs)[:5]
  return [
    {"id": int(i), "name": class_name(int(i)) if class_name else None, "p": round(float(probs[i]), 6)} for i in idx
  ]


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
  `eigen_smooth` / `aug_smooth` as in `jaxcam.explain` (aug_smooth: pytorch-grad-cam's default augmentations).

  Args:
    files: the image paths, cut into shards in this order (``jaxcam explain`` sorts them); a file that cannot be
      decoded is skipped and listed with its reason.
    out: the output folder (created): ``run.json``, ``shards/``, ``manifest.json``, ``overlays/``.
    method: a method name ("gradcam", ...) or a `jaxcam.MethodSpec`.
    tap: the tap to explain through (its layer is recorded).
    model: the model's name, recorded in the manifests and the run's fingerprint.
    root: the folder the inputs are named relative to in the manifests and overlays; every input must be in it.
    shard_size: files per shard, a multiple of `batch_size`.
    batch_size: images per batch (one compile for the whole run).
    input_size: the side ``S``: images are resized to ``(S, S)`` (PIL bilinear) and scaled to [0, 1].
    target: one class id explained for every image; None: each image's top class.
    float16: store the maps as float16 (float32 otherwise).
    mesh: a 1-D mesh to shard each batch over (`jaxcam.explain_batches`); None: all local devices.
    overlays: also write ``overlays/<rel>.png`` per explained image (`overlay_path`).
    process_index: this process's index among `process_count`: it takes every `process_count`-th shard
      starting at `process_index`.
    process_count: the number of processes sharing the run (merge with `merge_manifests` once all are done).
    progress: called with the number of images done (explained or skipped) after each batch; None: silent.
    class_name: class id -> name for the manifests (e.g. `jaxcam.models.class_name`); None: names are None.
    chunk_progress: a progress bar per chunked map inside each batch.
    options: the method's options (``chunk_size``, ``top_n``, ...), recorded in the fingerprint.
    overwrite: first remove the previous run's outputs in `out` (only the files its run.json and manifests list).
    eigen_smooth: as in `jaxcam.explain`.
    aug_smooth: as in `jaxcam.explain`.

  Returns:
    The merged manifest (what ``manifest.json`` holds): the run's header (method, layer, model, shard size,
      versions, file count, fingerprint), ``"entries"`` ``{relative path: entry}`` (shard, index into its maps
      file, target, top-5, size, peak, overlay; or ``"skipped"`` with the reason), ``"shards"`` and the sorted
      ``"skipped"`` paths. With several processes: the header with this process's entries and skipped paths.

  Raises:
    ValueError: `shard_size` is not a multiple of `batch_size`, or an input is outside `root`.
    RunMismatchError: `out` holds another run's outputs (without `overwrite`), a damaged run.json, or files jaxcam
      did not write where this run would write.

  Examples:
    >>> import os, tempfile
    >>> import jax, jax.numpy as jnp, numpy as np, jaxcam
    >>> from jaxcam import stream, viz
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}  # features relu(x @ w), logits mean(A) @ v
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> with tempfile.TemporaryDirectory() as d:
    ...   files = [viz.save_png(os.path.join(d, "cat.png"), np.full((6, 10, 3), 200, np.uint8))]
    ...   files.append(os.path.join(d, "notes.png"))
    ...   with open(files[1], "wb") as f:
    ...     _ = f.write(b"not an image")
    ...   out = os.path.join(d, "out")
    ...   manifest = stream.explain_files(files, out, method="gradcam", tap=tap, model="tiny", root=d,
    ...                                   shard_size=2, batch_size=2, input_size=8)
    ...   sorted(os.listdir(out)), manifest["skipped"], manifest["entries"]["cat.png"]["size"]
    (['manifest.json', 'run.json', 'shards'], ['notes.png'], [6, 10])
  """
  if shard_size % batch_size:
    raise ValueError(f"Expected --shard-size to be a multiple of --batch-size ({batch_size}), got {shard_size}.")
  job = _Job(**{k: v for k, v in locals().items() if k in _Job.__dataclass_fields__})
  job.files, job.options = list(files), dict(options or {})
  header = _start_run(job, overwrite)
  mine = range(process_index, -(-len(job.files) // shard_size), process_count)
  for k in mine:
    _run_shard(job, k, header)
  if process_count == 1:
    return merge_manifests(out)
  own: dict[str, Any] = {}  # this process's shards (complete ones included): what it explained and skipped
  for k in mine:
    with open(shard_paths(out, k)[1], encoding="utf-8") as f:
      own.update(json.load(f)["entries"])
  return {**header, "entries": own, "skipped": sorted(r for r, e in own.items() if "skipped" in e)}


@dataclasses.dataclass
class _Job:
  """`explain_files`'s arguments, passed on to the functions that do its parts."""

  files: list
  out: str
  method: Any
  tap: Any
  model: str
  root: str
  shard_size: int
  batch_size: int
  input_size: int
  target: int | None
  float16: bool
  mesh: Any
  overlays: bool
  process_index: int
  process_count: int
  progress: Callable[[int], None] | None
  class_name: Callable[[int], str] | None
  chunk_progress: bool
  options: dict
  eigen_smooth: bool
  aug_smooth: bool

  @property
  def method_name(self) -> str:
    return self.method if isinstance(self.method, str) else self.method.name


def _start_run(job: _Job, overwrite: bool) -> dict[str, Any]:
  """Check `out` (resume, overwrite, refuse: `_prepare_out`), remove what a killed run left half-written; returns
  the header every shard manifest carries."""
  import jax

  import jaxcam

  settings = {
    "method": job.method_name,
    "method_inputs": None if isinstance(job.method, str) else repr(getattr(job.method, "inputs", None)),
    "options": {k: _describe(v) for k, v in sorted(job.options.items())},
    "layer": _describe(job.tap.layer),
    "model": job.model,
    "target": job.target,
    "input_size": job.input_size,
    "shard_size": job.shard_size,
    "float16": job.float16,
    "eigen_smooth": bool(job.eigen_smooth),
    "aug_smooth": bool(job.aug_smooth),
    "jaxcam": jaxcam.__version__,
    "jax": jax.__version__,
  }
  rels = _relative_inputs(job.files, job.root, job.out)
  fingerprint = run_fingerprint(job.files, job.root, settings)
  shards = range(job.process_index, -(-len(job.files) // job.shard_size), job.process_count)
  planned = _planned_outputs(job.out, rels, job.shard_size, job.overlays, shards)
  _prepare_out(job.out, fingerprint, overwrite, job.files, planned if job.process_count == 1 else planned[1:])
  shard_dir = os.path.join(job.out, "shards")
  for stale in [n for n in os.listdir(shard_dir) if _STALE.fullmatch(n)]:  # left by a killed run
    os.remove(os.path.join(shard_dir, stale))
  return {
    "method": job.method_name,
    "layer": job.tap.layer,
    "model": job.model,
    "shard_size": job.shard_size,
    "jaxcam": jaxcam.__version__,
    "jax": jax.__version__,
    "files": len(job.files),
    "fingerprint": fingerprint["sha256"],
  }


def _run_shard(job: _Job, k: int, header: dict[str, Any]) -> None:
  """Shard `k`: skipped when complete and intact (`shard_complete`), else explained and written, maps first, then
  the manifest with the maps file's hash."""
  maps_path, manifest_path = shard_paths(job.out, k)
  shard_files = job.files[k * job.shard_size : (k + 1) * job.shard_size]
  if shard_complete(job.out, k, header["fingerprint"], job.overlays):
    if job.progress:
      job.progress(len(shard_files))
    return
  entries, maps = _explain_shard(job, k, shard_files)
  writers.save_npz(maps_path, maps)
  manifest = {**header, "shard": k, "entries": entries, "maps_blake2b": file_digest(maps_path)}
  writers.write_json(manifest_path, manifest, indent=1)


def _explain_shard(job: _Job, k: int, shard_files: list[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The manifest entries (explained and skipped files) and the maps of shard `k`; overlays written on the way."""
  import jax

  import jaxcam

  entries: dict[str, Any] = {}
  maps: dict[str, np.ndarray] = {}
  pending: list[tuple[list[str], list]] = []

  def batches():
    loader = _loader(shard_files, job.input_size, job.batch_size, depth=2, workers=2)
    for names, images, sizes, errors in loader:
      for name, err in errors.items():
        entries[os.path.relpath(name, job.root)] = {"shard": k, "skipped": err}
      if job.progress and errors:
        job.progress(len(errors))
      if images is None:
        continue
      pending.append((names, sizes))
      yield images if job.target is None else (images, np.full((len(names),), job.target, np.int32))

  results = jaxcam.explain_batches(
    job.method,
    job.tap,
    batches(),
    mesh=job.mesh,
    batch_size=job.batch_size,
    progress=job.chunk_progress,
    eigen_smooth=job.eigen_smooth,
    aug_smooth=job.aug_smooth,
    **job.options,
  )
  for result in results:
    names, sizes = pending.pop(0)
    probs = np.asarray(jax.nn.softmax(result["logits"], axis=-1))
    for j, (name, size) in enumerate(zip(names, sizes)):
      key = f"{len(maps):06d}"
      m = result["maps"][j]
      maps[key] = m.astype(np.float16 if job.float16 else np.float32)
      entries[os.path.relpath(name, job.root)] = _entry(job, k, key, name, size, m, int(result["targets"][j]), probs[j])
    if job.progress:
      job.progress(len(names))
  return entries, maps


def _entry(job: _Job, k: int, key: str, name: str, size, m: np.ndarray, tid: int, probs: np.ndarray) -> dict:
  """One explained file's manifest entry; its overlay written when asked for."""
  from jaxcam import viz

  cn = job.class_name
  entry = {
    "shard": k,
    "index": key,
    "target": {"id": tid, "name": cn(tid) if cn else None},
    "top5": top5(probs, cn),
    "size": list(size),
    "peak": list(viz.peak(m, size)),  # (row, col) in the image's own pixels
  }
  if job.overlays:
    png = overlay_path(job.out, os.path.relpath(name, job.root))
    os.makedirs(os.path.dirname(png), exist_ok=True)
    viz.save_png(png, viz.overlay(decode_image(name), m))
    entry["overlay"] = os.path.relpath(png, job.out)
  return entry
