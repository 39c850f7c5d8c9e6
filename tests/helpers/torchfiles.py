"""Write torch-format checkpoints without torch, for the loader's hostile-input tests.

`dump(obj)` pickles `obj` the way ``torch.save`` does: tensors become ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)`` calls and storages persistent ids ``("storage", torch.FloatStorage, key, "cpu",
numel)``; stand-in modules named ``torch`` and ``torch._utils`` exist only while pickling, so the bytes are what
torch writes and what jaxcam's restricted unpickler reads.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np

from jaxcam import io as jio

LEGACY_MAGIC, LEGACY_PROTOCOL = jio._LEGACY_MAGIC, jio._LEGACY_PROTOCOL
STORAGE_TYPES = {name: np.dtype(dtype) for name, dtype in jio._STORAGE_DTYPES.items()}
"""torch's typed storage names and their element types."""


class Storage:
  """A storage: its key, data and type (``FloatStorage`` by default; a name torch does not have is stored as float32
  bytes under that name)."""

  def __init__(self, key: str, data: np.ndarray, type_name: str = "FloatStorage"):
    dtype = STORAGE_TYPES.get(type_name, np.dtype(np.float32))
    self.key, self.type_name, self.data = key, type_name, np.asarray(data).astype(dtype).ravel()


class Tensor:
  """A view of a storage: offset, size, stride (in elements), as torch pickles it."""

  def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


@contextlib.contextmanager
def _fake_torch(type_names=("FloatStorage",)):
  torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
    raise AssertionError

  _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in type_names:
    setattr(torch, name, type(name, (), {"__module__": "torch"}))
  torch._utils = utils
  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  sys.modules.update({"torch": torch, "torch._utils": utils})
  try:
    yield torch, utils
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


def _storage_type_names(obj) -> set[str]:
  """The storage types of the tensors in `obj`, each shared object visited once (the tests pickle DAGs)."""
  names, stack, seen = set(), [obj], set()
  while stack:
    o = stack.pop()
    if id(o) in seen:
      continue
    seen.add(id(o))
    if isinstance(o, Tensor):
      names.add(o.storage.type_name)
    elif isinstance(o, dict):
      stack += list(o.values())
    elif isinstance(o, (list, tuple)):
      stack += list(o)
  return names


def dump(obj) -> tuple[bytes, dict[str, Storage]]:
  """(pickle bytes, {key: storage}) for an object holding `Tensor`s."""
  storages: dict[str, Storage] = {}
  type_names = {"FloatStorage"} | _storage_type_names(obj)
  with _fake_torch(type_names) as (torch, utils):

    class P(pickle.Pickler):
      def persistent_id(self, o):
        if isinstance(o, Storage):
          storages[o.key] = o
          return ("storage", getattr(torch, o.type_name), o.key, "cpu", o.data.size)
        return None

      def reducer_override(self, o):
        if isinstance(o, Tensor):
          return utils._rebuild_tensor_v2, (o.storage, o.offset, o.size, o.stride, False, None)
        return NotImplemented

    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
  return buf.getvalue(), storages


def write_zip(path, obj) -> None:
  """A zip-format (torch >= 1.6) checkpoint."""
  data, storages = dump(obj)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", data)
    zf.writestr("archive/byteorder", "little")
    for key, s in storages.items():
      zf.writestr(f"archive/data/{key}", s.data.tobytes())


def write_legacy(path, obj) -> None:
  """A legacy-format checkpoint: magic, protocol, sys info, the object, the storage keys, the storages."""
  data, storages = dump(obj)
  with open(path, "wb") as f:
    for header in (jio._LEGACY_MAGIC, jio._LEGACY_PROTOCOL, {"protocol_version": 1001, "little_endian": True}):
      pickle.dump(header, f, protocol=2)
    f.write(data)
    pickle.dump(list(storages), f, protocol=2)
    for s in storages.values():
      f.write(struct.pack("<q", s.data.size))
      f.write(s.data.tobytes())
