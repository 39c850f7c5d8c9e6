"""Deterministic, atomic writers for the CLI's outputs (maps, manifests): reruns give byte-identical files.

Loading lives in `jaxcam.io`; this module only writes.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Any

import numpy as np

__all__ = ["save_npz", "unique_file_names", "write_json"]


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, compress: bool = True) -> str:
  """Write ``{name: array}`` as .npz with deterministic bytes (fixed zip timestamps), atomically.

  `numpy.savez` stamps each member with the current time, so reruns differ; this writes the same members with
  the zip epoch (1980-01-01), to a temporary file that is renamed into place.
  """
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  with zipfile.ZipFile(tmp, "w", compression=method) as zf:
    for name in sorted(arrays):
      buf = io.BytesIO()
      np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = method
      info.external_attr = 0o644 << 16
      zf.writestr(info, buf.getvalue())
  os.replace(tmp, path)
  return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> str:
  """Write JSON with sorted keys and a trailing newline (deterministic bytes), atomically."""
  path = os.fspath(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=indent, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
  return path


def unique_file_names(names: list[str] | tuple[str, ...], suffix: str) -> list[str]:
  """One file name per entry of `names` (``name + suffix``), all distinct even where letter case is ignored (macOS,
  Windows) and all inside the folder: path separators become ``_``, an empty name or ``.``/``..`` becomes
  ``image``, and a repeat gets ``_1``, ``_2``, ... (the first free one)."""
  taken: set[str] = set()
  out = []
  for name in names:
    base = str(name).replace("/", "_").replace("\\", "_").replace("\0", "_")
    if base in ("", ".", ".."):
      base = "image"
    candidate, k = base, 0
    while (candidate + suffix).lower() in taken:
      k += 1
      candidate = f"{base}_{k}"
    taken.add((candidate + suffix).lower())
    out.append(candidate + suffix)
  return out
