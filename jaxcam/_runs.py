"""The bookkeeping of a streaming run (`jaxcam.stream`): its fingerprint, its own outputs, resume checks, merging.

``run.json`` holds the fingerprint: every input by relative path, size, modification time and a blake2b hash of
its bytes (so a file rewritten at the same size and mtime is noticed), and the settings. Each shard manifest carries
the blake2b hash of its maps file: resume trusts a shard only when its manifest belongs to this run and the maps
file still has that hash (a truncated or altered shard is recomputed), and, when overlays are asked for, only when
every overlay it lists is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcam import writers
from jaxcam._budget import regular_file_size

_CHUNK = 1 << 20


class RunMismatchError(ValueError):
  """`out` holds the outputs of a different run (other inputs, method, options, ...).

  A `ValueError`, raised by `jaxcam.stream.explain_files` (the message names what changed, and suggests a fresh
  ``--out`` or ``--overwrite``) and by `merge_manifests` (shard manifests of different runs).

  Args:
    message: the folder or file, what does not match, and what to do.

  Examples:
    >>> import json, os, tempfile
    >>> from jaxcam import stream
    >>> header = dict.fromkeys(["method", "layer", "model", "shard_size", "jaxcam", "jax", "files"], "x")
    >>> with tempfile.TemporaryDirectory() as out:
    ...   os.makedirs(os.path.join(out, "shards"))
    ...   for k, run in enumerate(["run-a", "run-b"]):  # two shards written by two different runs
    ...     with open(stream.shard_paths(out, k)[1], "w") as f:
    ...       json.dump({**header, "fingerprint": run, "entries": {}}, f)
    ...   try:
    ...     stream.merge_manifests(out)
    ...   except stream.RunMismatchError as e:
    ...     print("belongs to a different run" in str(e))
    True
  """


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


def file_digest(path: str) -> str | None:
  """The blake2b hash (hex, 16 bytes) of the file at `path`, read in bounded chunks; None for a file that is not a
  regular file (a FIFO would block) or cannot be read (the run then skips it as unreadable)."""
  try:
    regular_file_size(path, "an input")
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
      while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()
  except (OSError, ValueError):
    return None


def run_fingerprint(files: Sequence[str], root: str, settings: dict[str, Any]) -> dict[str, Any]:
  """What a run's outputs depend on: its inputs (relative path, size, mtime, blake2b of the bytes) and settings,
  with a sha256.

  Args:
    files: the input paths.
    root: the folder the inputs are named relative to.
    settings: ``{name: value}`` of everything else the outputs depend on (method, options, layer, model, ...);
      arrays and PRNG keys are described by shape, dtype and a sha256 of their bytes, other objects by repr.

  Returns:
    ``{"sha256": ..., "inputs": [[relative path, size, mtime_ns, blake2b], ...], **settings}`` (JSON-able; an
      input that cannot be read has None for size, mtime and hash); the sha256 covers everything else.

  Examples:
    >>> import os, tempfile
    >>> from jaxcam import stream
    >>> with tempfile.TemporaryDirectory() as root:
    ...   path = os.path.join(root, "cat.png")
    ...   with open(path, "wb") as f:
    ...     _ = f.write(b"abc")
    ...   run = stream.run_fingerprint([path], root, {"method": "gradcam"})
    ...   other = stream.run_fingerprint([path], root, {"method": "layercam"})
    >>> run["inputs"][0][:2], run["method"], run["sha256"] != other["sha256"]
    (['cat.png', 3], 'gradcam', True)
  """
  inputs = []
  for f in files:
    try:
      st = os.stat(f)
      inputs.append([os.path.relpath(f, root), st.st_size, st.st_mtime_ns, file_digest(f)])
    except OSError:
      inputs.append([os.path.relpath(f, root), None, None, None])
  body = {"inputs": inputs, **{k: _describe(v) for k, v in sorted(settings.items())}}
  digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
  return {"sha256": digest, **body}


def _is_run(obj: Any) -> bool:
  return isinstance(obj, dict) and isinstance(obj.get("sha256"), str) and isinstance(obj.get("inputs"), list)


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
  perhaps not written yet): all that ``--overwrite`` removes, and what a folder scan leaves out of the inputs.

  Args:
    out: a run's output folder (it may not exist, or hold no run).

  Returns:
    A set of absolute, normalized paths: ``run.json``, ``manifest.json``, the shard files and the overlays that
      the run's own files name, limited to those places in `out`; empty when `out` holds no jaxcam run.

  Examples:
    >>> import json, os, tempfile
    >>> from jaxcam import stream
    >>> with tempfile.TemporaryDirectory() as out:
    ...   run = stream.run_fingerprint([os.path.join(out, "in", "cat.png")], os.path.join(out, "in"), {"shard_size": 4})
    ...   with open(os.path.join(out, "run.json"), "w") as f:
    ...     json.dump(run, f)
    ...   sorted(os.path.relpath(p, out) for p in stream.run_outputs(out))
    ['overlays/cat.png.png', 'run.json', 'shards/manifest-00000.json', 'shards/maps-00000.npz']
  """
  out = os.path.abspath(out)
  found: set[str] = set()
  manifests = []
  run = _read_json(os.path.join(out, "run.json"))
  if _is_run(run):
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
    if match is None:
      continue
    shard = _read_json(os.path.join(shard_dir, name))
    if shard is not None and _is_manifest(shard) and shard.get("shard") == int(match[1]):
      found.update(shard_paths(out, int(match[1])))
      manifests.append(shard)
  for m in manifests:
    found.update(
      os.path.join(out, e["overlay"])
      for e in m["entries"].values()
      if isinstance(e, dict) and isinstance(e.get("overlay"), str)
    )
  if manifests and not _is_run(run) and os.path.isfile(os.path.join(out, "run.json")):
    found.add(os.path.join(out, "run.json"))  # damaged, beside jaxcam's manifests: --overwrite may replace it
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
    old = _read_json(run_path)
    if not _is_run(old):
      raise RunMismatchError(
        f"{run_path!r} is damaged (not the JSON of a jaxcam run: truncated or edited?), so what {out!r} holds cannot "
        "be verified. Use --overwrite to replace that run, or a fresh --out."
      )
    if old["sha256"] != fingerprint["sha256"]:
      changed = ", ".join(_differences(old, fingerprint))
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


def shard_complete(out: str, k: int, fingerprint: str, overlays: bool) -> bool:
  """Whether shard `k` of the run `fingerprint` (its sha256) is complete and intact: its manifest belongs to this
  run and shard, its maps file has the blake2b hash the manifest records and, with `overlays`, every explained
  entry's overlay is there. An incomplete shard's files are removed (they are this run's: recomputed next)."""
  maps_path, manifest_path = shard_paths(out, k)
  manifest = _read_json(manifest_path)
  ok = (
    _is_manifest(manifest)
    and manifest["fingerprint"] == fingerprint
    and manifest.get("shard") == k
    and isinstance(manifest.get("maps_blake2b"), str)
    and file_digest(maps_path) == manifest["maps_blake2b"]
  )
  if ok and overlays:
    entries = [e for e in manifest["entries"].values() if isinstance(e, dict) and "skipped" not in e]
    ok = all(isinstance(e.get("overlay"), str) and os.path.isfile(os.path.join(out, e["overlay"])) for e in entries)
  if not ok:
    for p in (manifest_path, maps_path):  # the manifest first: a kill in between leaves an incomplete shard
      if os.path.lexists(p):
        os.remove(p)
  return ok


def shard_paths(out: str, k: int) -> tuple[str, str]:
  """The maps file and the manifest of shard `k` of the run in `out` (the shard number zero-padded to 5 digits).

  Args:
    out: the run's output folder.
    k: the shard number (shard k holds inputs ``k * shard_size`` to ``(k + 1) * shard_size - 1``).

  Returns:
    ``(out/shards/maps-<k>.npz, out/shards/manifest-<k>.json)``.

  Examples:
    >>> from jaxcam import stream
    >>> stream.shard_paths("out", 3)
    ('out/shards/maps-00003.npz', 'out/shards/manifest-00003.json')
  """
  d = os.path.join(out, "shards")
  return os.path.join(d, f"maps-{k:05d}.npz"), os.path.join(d, f"manifest-{k:05d}.json")


def overlay_path(out: str, rel: str) -> str:
  """Where the overlay of input `rel` (relative to the run's root) goes: the input tree mirrored, the file name
  kept whole (``x/cat.jpg`` -> ``overlays/x/cat.jpg.png``), so distinct inputs never share an overlay.

  Args:
    out: the run's output folder.
    rel: the input's path relative to the run's root.

  Returns:
    ``out/overlays/<rel>.png``.

  Examples:
    >>> from jaxcam import stream
    >>> stream.overlay_path("out", "x/cat.jpg")
    'out/overlays/x/cat.jpg.png'
  """
  return os.path.join(out, "overlays", rel + ".png")


_MERGED_KEYS = ("method", "layer", "model", "shard_size", "jaxcam", "jax", "files", "fingerprint")


def _read_shard_manifest(path: str) -> dict[str, Any]:
  """The shard manifest at `path`, checked: a ValueError for a file that cannot be read or is not one of jaxcam's
  shard manifests (another program's JSON, an edited or truncated file)."""
  try:
    regular_file_size(path, "a shard manifest")
    with open(path, encoding="utf-8") as f:
      shard = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read shard manifest {path!r} ({type(e).__name__}: {e}); rerun that shard.") from None
  if not _is_manifest(shard):
    got = f"a JSON {type(shard).__name__}" if not isinstance(shard, dict) else f"keys {sorted(shard)[:8]}"
    raise ValueError(
      f"{path!r} is not a shard manifest of jaxcam (expected a JSON object with 'fingerprint' and 'entries', got "
      f"{got}); remove it, or rerun that shard."
    )
  missing = [k for k in _MERGED_KEYS if k not in shard]
  if missing:
    raise ValueError(
      f"{path!r} is not a shard manifest of jaxcam (it lacks {missing}: another program's, or an older jaxcam's); "
      "rerun that shard."
    )
  return shard


def merge_manifests(out: str) -> dict[str, Any]:
  """Merge every ``shards/manifest-*.json`` of `out` into ``manifest.json`` (sorted; no timestamps). A file there
  that is not a shard manifest of this run is a ValueError naming it (`RunMismatchError` for another run's).

  What ``jaxcam merge-manifests OUT`` runs once every process of a multi-host run is done.

  Args:
    out: the run's output folder.

  Returns:
    The merged manifest, also written to ``out/manifest.json``: the run's header (method, layer, model,
      shard size, versions, file count, fingerprint), ``"entries"`` of every shard, ``"shards"`` (how many were
      merged) and ``"skipped"`` (the sorted paths that could not be explained).

  Raises:
    FileNotFoundError: no shard manifest in ``out/shards`` (or no such folder).
    ValueError: a ``manifest-*.json`` there that cannot be read or is not a shard manifest of jaxcam.
    RunMismatchError: shard manifests of different runs.

  Examples:
    >>> import json, os, tempfile
    >>> from jaxcam import stream
    >>> header = dict.fromkeys(["method", "layer", "model", "shard_size", "jaxcam", "jax", "files"], "x")
    >>> shards = [{"cat.png": {"shard": 0, "index": "000000"}}, {"notes.png": {"shard": 1, "skipped": "not an image"}}]
    >>> with tempfile.TemporaryDirectory() as out:
    ...   os.makedirs(os.path.join(out, "shards"))
    ...   for k, entries in enumerate(shards):  # as two processes wrote them
    ...     with open(stream.shard_paths(out, k)[1], "w") as f:
    ...       json.dump({**header, "fingerprint": "run-a", "entries": entries}, f)
    ...   merged = stream.merge_manifests(out)
    ...   os.path.exists(os.path.join(out, "manifest.json"))
    True
    >>> merged["shards"], sorted(merged["entries"]), merged["skipped"]
    (2, ['cat.png', 'notes.png'], ['notes.png'])
  """
  d = os.path.join(out, "shards")
  names = sorted(n for n in os.listdir(d) if n.startswith("manifest-") and n.endswith(".json"))
  if not names:
    raise FileNotFoundError(f"No shard manifests in {d!r}: nothing to merge.")
  merged: dict[str, Any] = {"entries": {}}
  for n in names:
    path = os.path.join(d, n)
    shard = _read_shard_manifest(path)
    if merged.setdefault("fingerprint", shard["fingerprint"]) != shard["fingerprint"]:
      raise RunMismatchError(f"Shard manifest {path!r} belongs to a different run than {names[0]!r}; not merged.")
    for key in _MERGED_KEYS:
      merged.setdefault(key, shard[key])
    merged["entries"].update(shard["entries"])
  merged["shards"] = len(names)
  merged["skipped"] = sorted(k for k, v in merged["entries"].items() if "skipped" in v)
  writers.write_json(os.path.join(out, "manifest.json"), merged, indent=1)
  return merged
