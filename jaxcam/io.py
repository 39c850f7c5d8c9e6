"""Safe weight loading: PyTorch checkpoints without torch and without executing code; safetensors; npz.

`load_state_dict(path)` returns ``{name: numpy array}`` for

- legacy torch files (``torch.save(..., _use_new_zipfile_serialization=False)`` and everything before torch
  1.6): a sequence of pickles (magic number, protocol, sys info, the state dict, the storage keys) followed by
  the raw storages, each prefixed by its element count;
- zip-based torch files (torch >= 1.6): ``<archive>/data.pkl`` plus one file per storage;
- ``.safetensors`` (parsed here: a JSON header and raw little-endian bytes) and ``.npz`` (no pickles).

The pickles are read by a restricted unpickler that resolves only the globals a plain state dict needs (the
tensor rebuild functions, typed storages of numeric dtypes, ``OrderedDict``) to stand-ins defined here; any
other global (``os.system``, ``builtins.eval``, an unknown class) raises `UnsafeCheckpointError` before
anything runs. Arrays are rebuilt with numpy from the stored bytes (offsets, strides and shared storages
included), with bounds checked.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

__all__ = [
  "CheckpointError",
  "UnsafeCheckpointError",
  "load_state_dict",
  "load_torch",
  "load_safetensors",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
  "float64": np.float64,
  "float32": np.float32,
  "float16": np.float16,
  "bfloat16": ml_dtypes.bfloat16,
  "int64": np.int64,
  "int32": np.int32,
  "int16": np.int16,
  "int8": np.int8,
  "uint8": np.uint8,
  "bool": np.bool_,
}
_SAFETENSORS_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": ml_dtypes.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}


class CheckpointError(ValueError):
  """A checkpoint that is truncated, corrupt or of an unknown format."""


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A pickle that asks for a global a plain state dict never needs; nothing was executed."""


# ---------------------------------------------------------------------------------------------- stand-ins


class _StorageType:
  def __init__(self, name: str):
    self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _DType:
  def __init__(self, name: str):
    self.dtype = np.dtype(_TORCH_DTYPES[name])


class _Storage:
  """Raw storage: a flat numpy array filled from the file (now for zip, after the pickle for legacy)."""

  def __init__(self, key: str, dtype: np.dtype, numel: int):
    self.key, self.dtype, self.numel = key, dtype, int(numel)
    self.array: np.ndarray | None = None


class _TensorRef:
  def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple, dtype: np.dtype | None = None):
    if not isinstance(storage, _Storage):
      raise CheckpointError("corrupt checkpoint: a tensor refers to something that is not a storage")
    self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)
    self.dtype = dtype

  def materialize(self) -> np.ndarray:
    flat = self.storage.array
    if flat is None:
      raise CheckpointError(f"corrupt checkpoint: storage {self.storage.key!r} has no data")
    if self.dtype is not None and self.dtype != flat.dtype:
      flat = flat.view(self.dtype)
    if len(self.size) != len(self.stride) or any(s < 0 for s in self.size) or any(s < 0 for s in self.stride):
      raise CheckpointError(f"corrupt checkpoint: bad tensor geometry size={self.size} stride={self.stride}")
    if 0 in self.size:
      return np.zeros(self.size, flat.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if self.offset < 0 or last >= flat.size:
      raise CheckpointError(
        f"corrupt or truncated checkpoint: a tensor reads element {last} of storage {self.storage.key!r}, "
        f"which has {flat.size}"
      )
    view = np.lib.stride_tricks.as_strided(
      flat[self.offset :], shape=self.size, strides=[s * flat.itemsize for s in self.stride], writeable=False
    )
    return np.array(view, order="C")  # own the memory, C-contiguous


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
  return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
  return _TensorRef(storage, storage_offset, size, stride, dtype.dtype if isinstance(dtype, _DType) else None)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
  return data


def _codecs_encode(text, encoding="latin1"):  # protocol-2 pickles store bytes as _codecs.encode(str, 'latin1')
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafeCheckpointError("unexpected arguments to _codecs.encode in checkpoint")
  return text.encode("latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
  ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
  ("_codecs", "encode"): _codecs_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, file: BinaryIO, storage_loader):
    super().__init__(file, encoding="utf-8")
    self._storage_loader = storage_loader

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name in _TORCH_DTYPES:
      return _DType(name)
    raise UnsafeCheckpointError(
      f"Refusing to load global {module}.{name} from a checkpoint: only plain state dicts (tensors, numeric "
      "storages, OrderedDict) are accepted, and nothing in the file was executed. If you trust the file, "
      "load it with torch and save its state_dict() or use safetensors."
    )

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage" or len(pid) < 5:
      raise UnsafeCheckpointError(f"Refusing unknown persistent id {str(pid)[:80]!r} in checkpoint.")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(storage_type, _StorageType):
      raise UnsafeCheckpointError(f"Refusing storage of type {storage_type!r} in checkpoint.")
    storage = self._storage_loader(key, storage_type.dtype, numel)
    if len(pid) > 5 and pid[5] is not None:  # legacy storage view: (view_key, offset, view_numel)
      _, view_offset, view_numel = pid[5]
      return _ViewStorage(storage, int(view_offset), int(view_numel))
    return storage


class _ViewStorage(_Storage):
  def __init__(self, base: _Storage, offset: int, numel: int):
    super().__init__(base.key, base.dtype, numel)
    self.base, self.offset = base, offset

  @property
  def array(self):
    return None if self.base.array is None else self.base.array[self.offset : self.offset + self.numel]

  @array.setter
  def array(self, value):
    pass


def _resolve(obj: Any) -> Any:
  if isinstance(obj, _TensorRef):
    return obj.materialize()
  if isinstance(obj, dict):
    return (
      type(obj)((k, _resolve(v)) for k, v in obj.items())
      if isinstance(obj, collections.OrderedDict)
      else {k: _resolve(v) for k, v in obj.items()}
    )
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v) for v in obj)
  return obj


# ------------------------------------------------------------------------------------------------ formats


def _load_legacy(f: BinaryIO, path: str) -> Any:
  storages: dict[str, _Storage] = {}

  def loader(key, dtype, numel):
    if key not in storages:
      storages[key] = _Storage(key, dtype, numel)
    return storages[key]

  def load():
    return _RestrictedUnpickler(f, loader).load()

  try:
    magic = load()
    if magic != _LEGACY_MAGIC:
      raise CheckpointError(f"{path}: not a torch checkpoint (bad magic number)")
    protocol = load()
    if protocol != _LEGACY_PROTOCOL:
      raise CheckpointError(f"{path}: unsupported legacy torch protocol {protocol!r}")
    load()  # sys info
    result = load()
    keys = load()
  except (EOFError, struct.error) as e:
    raise CheckpointError(f"{path}: truncated torch checkpoint (the pickles end early): {e}") from None
  except UnsafeCheckpointError:
    raise
  except pickle.UnpicklingError as e:
    raise CheckpointError(f"{path}: corrupt torch checkpoint: {e}") from None
  if not isinstance(keys, list):
    raise CheckpointError(f"{path}: corrupt torch checkpoint: no storage key list")
  for key in keys:
    storage = storages.get(str(key))
    if storage is None:
      raise CheckpointError(f"{path}: corrupt torch checkpoint: unknown storage {key!r}")
    header = f.read(8)
    if len(header) < 8:
      raise CheckpointError(f"{path}: truncated torch checkpoint: storage {key!r} is missing")
    (numel,) = struct.unpack("<q", header)
    nbytes = numel * storage.dtype.itemsize
    data = f.read(nbytes)
    if numel < 0 or len(data) < nbytes:
      raise CheckpointError(f"{path}: truncated torch checkpoint: storage {key!r} has {len(data)} of {nbytes} bytes")
    storage.array = np.frombuffer(data, dtype=storage.dtype)
  return _resolve(result)


def _load_zip(path: str) -> Any:
  try:
    zf = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise CheckpointError(f"{path}: corrupt zip-based torch checkpoint: {e}") from None
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
      raise CheckpointError(f"{path}: a zip file without <archive>/data.pkl is not a torch checkpoint")
    prefix = pkl[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and zf.read(f"{prefix}byteorder").strip() not in (b"little", b""):
      raise CheckpointError(f"{path}: big-endian torch checkpoints are not supported")
    storages: dict[str, _Storage] = {}

    def loader(key, dtype, numel):
      if key not in storages:
        try:
          raw = zf.read(f"{prefix}data/{key}")
        except KeyError:
          raise CheckpointError(f"{path}: corrupt torch checkpoint: storage {key!r} is missing") from None
        except (zipfile.BadZipFile, zlib_error(), EOFError) as e:
          raise CheckpointError(f"{path}: corrupt torch checkpoint: {e}") from None
        s = _Storage(key, dtype, numel)
        usable = len(raw) // dtype.itemsize * dtype.itemsize
        s.array = np.frombuffer(raw[:usable], dtype=dtype)
        storages[key] = s
      return storages[key]

    try:
      data = zf.read(pkl[0])
      result = _RestrictedUnpickler(io.BytesIO(data), loader).load()
    except UnsafeCheckpointError:
      raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as e:
      raise CheckpointError(f"{path}: corrupt torch checkpoint: {e}") from None
  return _resolve(result)


def zlib_error():
  import zlib

  return zlib.error


def load_torch(path: str | os.PathLike) -> Any:
  """The object in a torch checkpoint (legacy or zip format), tensors as numpy arrays, without torch."""
  path = os.fspath(path)
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path)
    with open(path, "rb") as f:
      head = f.read(2)
      if not head or head[0] != 0x80:
        raise CheckpointError(
          f"{path}: not a torch checkpoint (neither a zip archive nor a pickle stream; first bytes {head!r})"
        )
      f.seek(0)
      return _load_legacy(f, path)
  except (CheckpointError, UnsafeCheckpointError):
    raise
  except Exception as e:  # any other failure while parsing means the bytes are not a valid checkpoint
    raise CheckpointError(f"{path}: corrupt torch checkpoint ({type(e).__name__}: {e})") from None


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A ``.safetensors`` file as ``{name: array}`` (header parsed here; no code, no pickles)."""
  path = os.fspath(path)
  with open(path, "rb") as f:
    raw = f.read()
  if len(raw) < 8:
    raise CheckpointError(f"{path}: truncated safetensors file")
  (n,) = struct.unpack("<Q", raw[:8])
  if 8 + n > len(raw):
    raise CheckpointError(f"{path}: truncated safetensors file (header of {n} bytes)")
  try:
    header = json.loads(raw[8 : 8 + n])
  except ValueError as e:
    raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
  body = memoryview(raw)[8 + n :]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = np.dtype(_SAFETENSORS_DTYPES.get(info.get("dtype"), np.void))
    if dtype == np.void:
      raise CheckpointError(f"{path}: unsupported safetensors dtype {info.get('dtype')!r} for {name!r}")
    start, end = info["data_offsets"]
    shape = tuple(info["shape"])
    if end > len(body) or end - start != int(np.prod(shape)) * dtype.itemsize:
      raise CheckpointError(f"{path}: truncated or corrupt safetensors data for {name!r}")
    out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).copy()
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """``{name: numpy array}`` from a torch checkpoint (.pt/.pth/.bin, either format), .safetensors or .npz.

  Torch checkpoints holding ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped. No code from the file
  is executed (see the module docstring).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Expected `path` to name a weights file, got {path!r}, which does not exist.")
  if path.endswith(".safetensors"):
    return load_safetensors(path)
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
      raise CheckpointError(f"{path}: corrupt .npz file: {e}") from None
  obj = load_torch(path)
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
  if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
    raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
  return dict(obj)
