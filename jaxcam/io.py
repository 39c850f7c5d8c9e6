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
the bytes actually present, every length a pickle declares is checked before it is allocated, zip members are
charged by their declared size before they are inflated, and the arrays built may hold at most ``max_bytes`` in
total (default: `default_max_bytes`, 4 x the file size + 16 MiB, which tied weights and views fit in; zero strides
and many views of one storage do not; the budgets of every reader are documented there, in `jaxcam._budget`).
What is not a regular file (a FIFO, a device, a link to one) is refused before it is opened. Every failure is a
`CheckpointError` (or `UnsafeCheckpointError`) naming the file.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from jaxcam import _budget
from jaxcam._budget import (
  MAX_IMAGE_PIXELS,
  Budget,
  CheckpointError,
  ImageDecodeError,
  default_max_bytes,
  load_safetensors,
  regular_file_size,
)

__all__ = [
  "CheckpointError",
  "UnsafeCheckpointError",
  "ImageDecodeError",
  "MAX_IMAGE_PIXELS",
  "default_max_bytes",
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


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A pickle that asks for a global a plain state dict never needs; nothing was executed.

  A `pickle.UnpicklingError`, not a `CheckpointError`: the file may be malicious, not merely broken. The message
  names the file and the global (``builtins.eval``, ``posix.system``, a class of the training code, ...).

  Args:
    message: the file, the refused global and what to do if the file is trusted.

  Examples:
    >>> import os, pickle, tempfile, zipfile
    >>> from jaxcam import io
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, "evil.pth")
    ...   with zipfile.ZipFile(path, "w") as zf:  # a torch zip whose pickle names builtins.eval
    ...     zf.writestr("evil/data.pkl", pickle.dumps(eval))
    ...   try:
    ...     io.load_torch(path)
    ...   except io.UnsafeCheckpointError as e:
    ...     print("builtins.eval" in str(e), "nothing in the file was executed" in str(e))
    True True
  """


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

  def materialize(self, budget: Budget) -> np.ndarray:
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


def _find_global(module: str, name: str) -> Any:
  """The stand-in for a global a plain state dict needs; any other global is refused before anything runs."""
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


class _RestrictedUnpickler(pickle.Unpickler):
  def __init__(self, file: BinaryIO, storage_loader):
    super().__init__(file, encoding="utf-8")
    self._storage_loader = storage_loader

  def find_class(self, module: str, name: str):
    return _find_global(module, name)

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


def _resolve(obj: Any, budget: Budget, memo: dict[int, Any] | None = None) -> Any:
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


def _check_pickle(f: io.BytesIO, path: str) -> None:
  """Walk one pickle's opcodes without building anything: every length it declares (bytes, strings, longs) is
  checked against the bytes present before the unpickler would allocate it; `f` is left where it was."""
  start = f.tell()
  try:
    for op, arg, _ in pickletools.genops(f):
      if op.name in ("GLOBAL", "INST"):  # named inline: refused here, before the rest is even parsed
        _find_global(*str(arg).split(" ", 1))
  except ValueError as e:
    raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint: {str(e)[:200]}") from None
  f.seek(start)


def _load_legacy(raw: bytes, path: str, budget: Budget) -> Any:
  f = io.BytesIO(raw)
  storages: dict[str, _Storage] = {}

  def loader(key, dtype, numel):
    if key not in storages:
      storages[key] = _Storage(key, dtype, numel)
    return storages[key]

  def load():
    _check_pickle(f, path)
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
    nbytes, at = numel * storage.dtype.itemsize, f.tell()
    if numel < 0 or nbytes > len(raw) - at:
      raise CheckpointError(
        f"{path}: truncated torch checkpoint: storage {key!r} claims {nbytes} bytes, {len(raw) - at} left"
      )
    storage.array = np.frombuffer(raw, dtype=storage.dtype, count=numel, offset=at)
    f.seek(at + nbytes)
  return _resolve(result, budget)


def _load_zip(path: str, budget: Budget) -> Any:
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
    read = lambda name: _budget.read_member(zf, name, budget)  # declared size charged before inflating
    if f"{prefix}byteorder" in names and read(f"{prefix}byteorder").strip() not in (b"little", b""):
      raise CheckpointError(f"{path}: big-endian torch checkpoints are not supported")
    storages: dict[str, _Storage] = {}

    def loader(key, dtype, numel):
      if key not in storages:
        try:
          raw = read(f"{prefix}data/{key}")
        except KeyError:
          raise CheckpointError(f"{path}: corrupt torch checkpoint: storage {key!r} is missing") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
          raise CheckpointError(f"{path}: corrupt torch checkpoint: {e}") from None
        s = _Storage(key, dtype, numel)
        s.array = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)
        storages[key] = s
      return storages[key]

    try:
      data = io.BytesIO(read(pkl[0]))
      _check_pickle(data, path)
      result = _RestrictedUnpickler(data, loader).load()
    except UnsafeCheckpointError:
      raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as e:
      raise CheckpointError(f"{path}: corrupt torch checkpoint: {e}") from None
  return _resolve(result, budget)


def load_torch(path: str | os.PathLike, *, max_bytes: int | None = None) -> Any:
  r"""The object in a torch checkpoint (legacy or zip format), tensors as numpy arrays, without torch.

  `max_bytes`: the most bytes of arrays the file may produce (default `default_max_bytes` of its size).

  Args:
    path: a file written by ``torch.save`` (.pt/.pth/.bin), either format.
    max_bytes: the most bytes of arrays the file may produce; None: `default_max_bytes` of its size.

  Returns:
    The pickled object as saved (a state dict, or a training checkpoint such as ``{"epoch": ..., "model": ...}``)
      with every tensor a C-contiguous numpy array that owns its memory (bfloat16 as ``ml_dtypes.bfloat16``).

  Raises:
    CheckpointError: a file that is truncated, corrupt, over `max_bytes`, not a regular file, or not a torch
      checkpoint (the file named).
    UnsafeCheckpointError: a pickle that asks for a global a plain state dict never needs (nothing is run).
    ValueError: `max_bytes` is not None or a non-negative int.
    FileNotFoundError: `path` does not exist.

  Examples:
    >>> import os, tempfile, zipfile
    >>> import numpy as np
    >>> from jaxcam import io
    >>> # the pickle torch.save writes for {"w": torch.arange(3.0)}: a rebuild call on storage "0" (3 float32),
    >>> # offset 0, size (3,), stride (1,), requires_grad False
    >>> pkl = (b"(dVw\nctorch._utils\n_rebuild_tensor_v2\n((Vstorage\nctorch\nFloatStorage\nV0\nVcpu\nI3\ntQ"
    ...        b"I0\n(I3\nt(I1\ntI00\ntRs.")
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, "w.pth")
    ...   with zipfile.ZipFile(path, "w") as zf:  # torch >= 1.6: <archive>/data.pkl and one file per storage
    ...     zf.writestr("w/data.pkl", pkl)
    ...     zf.writestr("w/data/0", np.arange(3.0, dtype="<f4").tobytes())
    ...   io.load_torch(path)
    {'w': array([0., 1., 2.], dtype=float32)}
  """
  path = os.fspath(path)
  size = regular_file_size(path, "a torch checkpoint", CheckpointError)
  budget = _budget.make_budget(path, max_bytes, size)
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path, budget)
    with open(path, "rb") as f:
      raw = f.read()
    if not raw or raw[0] != 0x80:
      raise CheckpointError(
        f"{path}: not a torch checkpoint (neither a zip archive nor a pickle stream; first bytes {raw[:2]!r})"
      )
    return _load_legacy(raw, path, budget)
  except (CheckpointError, UnsafeCheckpointError) as e:  # raised where a tensor or a global is met: name the file
    if path in str(e):
      raise
    raise type(e)(f"{path}: {e}") from None
  except RecursionError:
    raise CheckpointError(f"{path}: corrupt torch checkpoint (objects nested too deeply)") from None
  except Exception as e:  # any other failure while parsing means the bytes are not a valid checkpoint
    raise CheckpointError(f"{path}: corrupt torch checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def load_state_dict(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """``{name: numpy array}`` from a torch checkpoint (.pt/.pth/.bin, either format), .safetensors or .npz.

  Torch checkpoints holding ``{"state_dict": ...}``, ``{"model": ...}`` or ``{"model_state_dict": ...}`` are
  unwrapped. No code from the file is executed, nothing that is not a regular file is opened, and the file may
  produce at most `max_bytes` of arrays (default `default_max_bytes`; see the module docstring).

  Args:
    path: the weights file; the format is chosen by its name: ``.safetensors``, ``.npz``, anything else a torch
      checkpoint (either format).
    max_bytes: the most bytes of arrays the file may produce; None: `default_max_bytes` of its size.

  Returns:
    ``{name: numpy array}`` in the file's order.

  Raises:
    FileNotFoundError: `path` does not exist.
    CheckpointError: a file that cannot be read (truncated, corrupt, over `max_bytes`, not a regular file), or a
      torch checkpoint that is not a dict of tensors.
    UnsafeCheckpointError: a torch pickle that asks for a global a plain state dict never needs (nothing is run).
    ValueError: `max_bytes` is not None or a non-negative int.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from jaxcam import io
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, "head.npz")
    ...   np.savez(path, **{"fc.weight": np.ones((2, 3), np.float32), "fc.bias": np.zeros(2, np.float32)})
    ...   {name: a.shape for name, a in io.load_state_dict(path).items()}
    {'fc.weight': (2, 3), 'fc.bias': (2,)}
    >>> io.load_state_dict("no/such/resnet18.pth")
    Traceback (most recent call last):
    ...
    FileNotFoundError: Expected `path` to name a weights file, got 'no/such/resnet18.pth', which does not exist.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"Expected `path` to name a weights file, got {path!r}, which does not exist.")
  if path.endswith(".safetensors"):
    return load_safetensors(path, max_bytes=max_bytes)
  if path.endswith(".npz"):
    return _budget.load_npz(path, max_bytes=max_bytes)
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
