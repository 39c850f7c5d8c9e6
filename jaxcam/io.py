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

A small file cannot make the loader hang or exhaust memory: shared references in the pickle are resolved once
(a pickle that is a DAG of shared lists stays linear), element counts claimed by the file are checked against
the bytes actually present, and the arrays built may hold at most ``max_bytes`` in total (default: 4 x the file
size + 16 MiB, which tied weights and views fit in; zero strides and many views of one storage do not). Every
failure is a `CheckpointError` (or `UnsafeCheckpointError`) naming the file.
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


_BUDGET_SLACK = 16 * 2**20


def default_max_bytes(file_bytes: int) -> int:
  """The default budget of array bytes a checkpoint of `file_bytes` bytes may produce."""
  return 4 * int(file_bytes) + _BUDGET_SLACK


class _Budget:
  """Bytes of arrays the file may still produce."""

  def __init__(self, path: str, max_bytes: int):
    self.path, self.left, self.max = path, int(max_bytes), int(max_bytes)

  def charge(self, nbytes: int, what: str) -> None:
    self.left -= int(nbytes)
    if self.left < 0:
      raise CheckpointError(
        f"{self.path}: {what} would take the arrays built from this file past {self.max} bytes (4 x the file size "
        "+ 16 MiB by default): zero strides, many views of one storage or a claimed size larger than the data. "
        "If you trust the file, pass max_bytes= a larger budget."
      )


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
    try:
      self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
    except TypeError:
      raise CheckpointError(f"corrupt checkpoint: tensor size {size!r} / stride {stride!r} are not sequences") from None
    self.dtype = dtype

  def materialize(self, budget: _Budget) -> np.ndarray:
    flat = self.storage.array
    if flat is None:
      raise CheckpointError(f"corrupt checkpoint: storage {self.storage.key!r} has no data")
    if self.dtype is not None and self.dtype != flat.dtype:
      flat = flat.view(self.dtype)
    geometry = self.size + self.stride + (self.offset,)
    if (
      len(self.size) != len(self.stride)
      or not all(isinstance(v, int) and not isinstance(v, bool) for v in geometry)
      or any(v < 0 for v in geometry)
    ):
      raise CheckpointError(f"corrupt checkpoint: bad tensor geometry size={self.size} stride={self.stride}")
    budget.charge(int(np.prod(self.size, dtype=object)) * flat.itemsize, f"a tensor of size {self.size}")
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


def _resolve(obj: Any, budget: _Budget, memo: dict[int, Any] | None = None) -> Any:
  """Tensor references replaced by arrays; each shared object (pickle memo) resolved once."""
  memo = {} if memo is None else memo
  if id(obj) in memo:
    return memo[id(obj)][1]
  if isinstance(obj, _TensorRef):
    out: Any = obj.materialize(budget)
  elif isinstance(obj, dict):
    items = [(k, _resolve(v, budget, memo)) for k, v in obj.items()]
    out = collections.OrderedDict(items) if isinstance(obj, collections.OrderedDict) else dict(items)
  elif isinstance(obj, (list, tuple)):
    out = type(obj)(_resolve(v, budget, memo) for v in obj)
  else:
    return obj
  memo[id(obj)] = (obj, out)  # keep obj alive so its id is not reused
  return out


# ------------------------------------------------------------------------------------------------ formats


def _load_legacy(f: BinaryIO, path: str, budget: _Budget) -> Any:
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
    left = os.fstat(f.fileno()).st_size - f.tell() if hasattr(f, "fileno") else nbytes
    if numel < 0 or nbytes > left:
      raise CheckpointError(f"{path}: truncated torch checkpoint: storage {key!r} claims {nbytes} bytes, {left} left")
    data = f.read(nbytes)
    if len(data) < nbytes:
      raise CheckpointError(f"{path}: truncated torch checkpoint: storage {key!r} has {len(data)} of {nbytes} bytes")
    storage.array = np.frombuffer(data, dtype=storage.dtype)
  return _resolve(result, budget)


def _load_zip(path: str, budget: _Budget) -> Any:
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
        budget.charge(len(raw), f"storage {key!r}")  # a zip entry may inflate far beyond the file's size
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
  return _resolve(result, budget)


def zlib_error():
  import zlib

  return zlib.error


def _budget(path: str, max_bytes: int | None) -> _Budget:
  if max_bytes is None:
    max_bytes = default_max_bytes(os.path.getsize(path))
  elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
    raise ValueError(f"Expected `max_bytes` to be None or a non-negative int, got {max_bytes!r}.")
  return _Budget(path, max_bytes)


def load_torch(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
  """The object in a torch checkpoint (legacy or zip format), tensors as numpy arrays, without torch.

  `max_bytes`: the most bytes of arrays the file may produce (default `default_max_bytes` of its size)."""
  path = os.fspath(path)
  budget = _budget(path, max_bytes)
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path, budget)
    with open(path, "rb") as f:
      head = f.read(2)
      if not head or head[0] != 0x80:
        raise CheckpointError(
          f"{path}: not a torch checkpoint (neither a zip archive nor a pickle stream; first bytes {head!r})"
        )
      f.seek(0)
      return _load_legacy(f, path, budget)
  except (CheckpointError, UnsafeCheckpointError):
    raise
  except RecursionError:
    raise CheckpointError(f"{path}: corrupt torch checkpoint (objects nested too deeply)") from None
  except Exception as e:  # any other failure while parsing means the bytes are not a valid checkpoint
    raise CheckpointError(f"{path}: corrupt torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A ``.safetensors`` file as ``{name: array}`` (header parsed and validated here; no code, no pickles)."""
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
  except (ValueError, RecursionError) as e:
    raise CheckpointError(f"{path}: corrupt safetensors header: {str(e)[:200]}") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: corrupt safetensors header: expected a JSON object, got {type(header).__name__}")
  body = memoryview(raw)[8 + n :]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if not isinstance(info, dict):
      raise CheckpointError(
        f"{path}: corrupt safetensors header: entry {name!r} is a {type(info).__name__}, not an object"
      )
    name_of_dtype = info.get("dtype")
    dtype = np.dtype(_SAFETENSORS_DTYPES.get(name_of_dtype, np.void) if isinstance(name_of_dtype, str) else np.void)
    if dtype == np.void:
      raise CheckpointError(f"{path}: unsupported safetensors dtype {info.get('dtype')!r} for {name!r}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
      raise CheckpointError(
        f"{path}: corrupt safetensors header: shape of {name!r} is {shape!r}, not a list of ints >= 0"
      )
    if (
      not isinstance(offsets, list)
      or len(offsets) != 2
      or not all(_is_int(o) for o in offsets)
      or not 0 <= offsets[0] <= offsets[1]
    ):
      raise CheckpointError(
        f"{path}: corrupt safetensors header: data_offsets of {name!r} are {offsets!r}, not [start, end] with "
        "0 <= start <= end"
      )
    start, end = offsets
    if end > len(body) or end - start != int(np.prod(shape, dtype=object)) * dtype.itemsize:
      raise CheckpointError(f"{path}: truncated or corrupt safetensors data for {name!r}")
    out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(tuple(shape)).copy()
  return out


def load_state_dict(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """``{name: numpy array}`` from a torch checkpoint (.pt/.pth/.bin, either format), .safetensors or .npz.

  Torch checkpoints holding ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped. No code from the file
  is executed, and a torch file may produce at most `max_bytes` of arrays (see the module docstring).
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
  obj = load_torch(path, max_bytes=max_bytes)
  for key in ("state_dict", "model", "model_state_dict"):
    if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
      obj = obj[key]
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: expected a state dict of tensors, got a {type(obj).__name__}")
  bad = [(k, v) for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    k, v = bad[0]
    raise CheckpointError(
      f"{path}: expected a state dict of tensors; {str(k)[:80]!r} is a {type(v).__name__} ({len(bad)} such entries)"
    )
  return dict(obj)
