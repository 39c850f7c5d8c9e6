"""Budgets before bytes: the limits every reader of a user's file checks before it reads, and the readers that
need nothing else (safetensors, npz, zip members).

The one setting is `default_max_bytes` (checkpoints) with `MAX_IMAGE_PIXELS` (images) beside it; their docstrings
say what each reader checks. Every reader also refuses what is not a regular file (`regular_file_size`) before
calling ``open()``: a FIFO blocks ``open()`` forever, a device never ends.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

SLACK_BYTES = 16 * 2**20
"""The fixed part of a checkpoint's budget (`default_max_bytes`)."""

MAX_IMAGE_PIXELS = 8192 * 8192
"""The most pixels (width x height) an image file may declare in its header: checked before a pixel is decoded
(`jaxcam.stream.decode_image`), below PIL's own decompression-bomb limit. 8192 x 8192 RGB decodes to 192 MiB."""

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
_CHUNK = 2**20  # zip members are inflated at most this many bytes at a time


class CheckpointError(ValueError):
  """A checkpoint that is truncated, corrupt, over its byte budget, not a regular file, or of an unknown format.

  A `ValueError`; every loader of `jaxcam.io` raises it with the file's path first in the message.

  Args:
    message: the file's path and what is wrong with it.

  Examples:
    >>> import os, tempfile
    >>> from jaxcam import io
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, "notes.pth")
    ...   with open(path, "w") as f:
    ...     _ = f.write("not a checkpoint")
    ...   try:
    ...     io.load_state_dict(path)
    ...   except io.CheckpointError as e:
    ...     print(str(e).split(": ", 1)[1])
    not a torch checkpoint (neither a zip archive nor a pickle stream; first bytes b'no')
  """


class ImageDecodeError(OSError, ValueError):
  """An image file that cannot be decoded (not an image, truncated, corrupt, of a mode jaxcam cannot read), named in
  the message with the decoder's reason. Both an OSError (what PIL raises for a broken file) and a ValueError.

  Raised by `jaxcam.stream.decode_image` (and so by ``jaxcam explain`` on files), also for an image whose header
  declares more than `MAX_IMAGE_PIXELS` pixels.

  Args:
    message: the file and the decoder's reason.

  Examples:
    >>> import os, tempfile
    >>> from jaxcam import io, stream
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = os.path.join(d, "cat.png")
    ...   with open(path, "wb") as f:
    ...     _ = f.write(b"not an image")
    ...   try:
    ...     stream.decode_image(path)
    ...   except io.ImageDecodeError as e:
    ...     print(isinstance(e, OSError), isinstance(e, ValueError), str(e).startswith("Cannot decode"))
    True True True
  """


CheckpointError.__module__ = ImageDecodeError.__module__ = "jaxcam.io"  # their public home


def default_max_bytes(file_bytes: int) -> int:
  """The byte budget of a checkpoint of `file_bytes` bytes: 4 x its size + `SLACK_BYTES` (16 MiB), which tied
  weights, views and compressed members of real checkpoints fit in. Every loader takes ``max_bytes=`` to
  replace it for a file you trust.

  What is charged to it, each time *before* the bytes are read or inflated:

  - torch zip (``.pt``/``.pth``/``.bin``, torch >= 1.6): each member's declared (uncompressed) size from the zip
    directory, ``data.pkl`` included, then each tensor built; members are inflated in 1 MiB chunks and never past
    their declared size, so a lying header cannot inflate more either;
  - legacy torch pickles: every length a pickle opcode declares is checked against the bytes present, and each
    storage's element count against the bytes left, before anything is allocated; then each tensor built;
  - ``.safetensors``: the header length against the file's size, then each tensor (entries sharing bytes are
    charged once each);
  - ``.npz``: each member's declared size, and each ``.npy`` header's shape against the member's bytes.

  Images have their own budget, `MAX_IMAGE_PIXELS`.

  Args:
    file_bytes: the checkpoint's size in bytes.

  Returns:
    The default ``max_bytes``: the most bytes of arrays the file may produce.

  Examples:
    >>> from jaxcam import io
    >>> io.default_max_bytes(0), io.default_max_bytes(1000)  # 16 MiB, then 4 bytes more per byte of file
    (16777216, 16781216)
  """
  return 4 * int(file_bytes) + SLACK_BYTES


class Budget:
  """Bytes of arrays the file may still produce."""

  def __init__(self, path: str, max_bytes: int):
    self.path, self.left, self.max = path, int(max_bytes), int(max_bytes)

  def charge(self, nbytes: int, what: str) -> None:
    self.left -= int(nbytes)
    if self.left < 0:
      raise CheckpointError(
        f"{self.path}: {what} would take the arrays built from this file past {self.max} bytes (4 x the file size "
        "+ 16 MiB by default): zero strides, many views of one storage, a compressed member that inflates far "
        "beyond the file, or a claimed size larger than the data. If you trust the file, pass max_bytes= a larger "
        "budget."
      )


def make_budget(path: str, max_bytes: int | None, file_bytes: int) -> Budget:
  if max_bytes is None:
    max_bytes = default_max_bytes(file_bytes)
  elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
    raise ValueError(f"Expected `max_bytes` to be None or a non-negative int, got {max_bytes!r}.")
  return Budget(path, max_bytes)


def _kind(mode: int) -> str:
  for test, name in (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
  ):
    if test(mode):
      return name
  return "not a regular file"


def regular_file_size(path: str, what: str, error: type[Exception] = ValueError) -> int:
  """The size of `path` if it is (or links to) a regular file, checked with ``os.stat`` before anything opens it;
  else `error` naming what it is (a FIFO would block ``open()`` forever, a device never ends)."""
  st = os.stat(path)  # follows links: a link to a FIFO or a device is refused as one
  if not stat.S_ISREG(st.st_mode):
    raise error(
      f"Expected {what} to be a regular file, got {path!r}, which is {_kind(st.st_mode)}: jaxcam reads only "
      "regular files (opening a FIFO or a device can block forever or never end). Copy the data to a file and "
      "pass that."
    )
  return st.st_size


def read_member(zf: zipfile.ZipFile, name: str, budget: Budget) -> bytearray:
  """The member `name` of `zf`, its declared size charged to `budget` first, inflated in bounded chunks (at most
  its declared size: zipfile stops there). Raises KeyError for a missing member."""
  info = zf.getinfo(name)
  budget.charge(info.file_size, f"zip member {name!r}, which declares {info.file_size} bytes,")
  out = bytearray()
  with zf.open(info) as f:
    while len(out) < info.file_size:
      chunk = f.read(min(_CHUNK, info.file_size - len(out)))
      if not chunk:
        break
      out += chunk
  return out


# -------------------------------------------------------------------------------------------- safetensors, npz


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _safetensors_entry(path: str, name: str, info: Any) -> tuple[np.dtype, tuple[int, ...], int, int]:
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
  return dtype, tuple(shape), offsets[0], offsets[1]


def load_safetensors(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """A ``.safetensors`` file as ``{name: array}`` (header parsed and validated here; no code, no pickles).

  `max_bytes`: the most bytes of arrays the file may produce (default `default_max_bytes` of its size).

  Args:
    path: the ``.safetensors`` file: an 8-byte little-endian header length, a JSON header (dtype, shape and
      byte offsets per tensor, optional ``__metadata__``), the raw little-endian bytes.
    max_bytes: the most bytes of arrays the file may produce; None: `default_max_bytes` of its size.

  Returns:
    ``{name: numpy array}`` in the header's order, each array a copy (bfloat16 as ``ml_dtypes.bfloat16``).

  Raises:
    CheckpointError: a file that is truncated, has a corrupt header or an unsupported dtype, is over `max_bytes`
      or is not a regular file (the file named).
    ValueError: `max_bytes` is not None or a non-negative int.
    FileNotFoundError: `path` does not exist.

  Examples:
    >>> import json, os, struct, tempfile
    >>> import numpy as np
    >>> from jaxcam import io
    >>> w = np.arange(6, dtype="<f4").reshape(2, 3)
    >>> header = json.dumps({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, w.nbytes]}}).encode()
    >>> d = tempfile.TemporaryDirectory()
    >>> path = os.path.join(d.name, "w.safetensors")
    >>> with open(path, "wb") as f:
    ...   _ = f.write(struct.pack("<Q", len(header)) + header + w.tobytes())
    >>> io.load_safetensors(path)["w"].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    >>> io.load_safetensors(path, max_bytes=16)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxcam.io.CheckpointError: ...: tensor 'w' of shape [2, 3] would take the arrays built from this file past
    16 bytes ...
    >>> d.cleanup()
  """
  path = os.fspath(path)
  size = regular_file_size(path, "a safetensors file", CheckpointError)
  budget = make_budget(path, max_bytes, size)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path}: truncated safetensors file")
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
      raise CheckpointError(f"{path}: truncated safetensors file (header of {n} bytes in a file of {size})")
    raw = f.read(n)
    body = memoryview(f.read(size - 8 - n))
  try:
    header = json.loads(raw)
  except (ValueError, RecursionError) as e:
    raise CheckpointError(f"{path}: corrupt safetensors header: {str(e)[:200]}") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: corrupt safetensors header: expected a JSON object, got {type(header).__name__}")
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype, shape, start, end = _safetensors_entry(path, name, info)
    if end > len(body) or end - start != int(np.prod(shape, dtype=object)) * dtype.itemsize:
      raise CheckpointError(f"{path}: truncated or corrupt safetensors data for {name!r}")
    budget.charge(end - start, f"tensor {name!r} of shape {list(shape)}")
    out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(shape).copy()
  return out


def _npy(raw: bytearray, path: str, name: str) -> np.ndarray:
  """One ``.npy`` member: header parsed, shape checked against the bytes present, no pickles."""
  f = io.BytesIO(raw)
  try:
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in read_header:
      raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = read_header[version](f)
  except ValueError as e:
    raise CheckpointError(f"{path}: corrupt .npz member {name!r}: {str(e)[:200]}") from None
  if dtype.hasobject or dtype.itemsize == 0:
    raise CheckpointError(
      f"{path}: .npz member {name!r} holds {dtype} (pickled Python objects or empty items): only numeric arrays are "
      "loaded, nothing is unpickled."
    )
  count = int(np.prod(shape, dtype=object))
  if count * dtype.itemsize != len(raw) - f.tell():
    raise CheckpointError(
      f"{path}: truncated or corrupt .npz member {name!r}: its header claims shape {shape} of {dtype} "
      f"({count * dtype.itemsize} bytes), the member holds {len(raw) - f.tell()}"
    )
  flat = np.frombuffer(raw, dtype=dtype, count=count, offset=f.tell())
  return flat.reshape(shape, order="F" if fortran else "C")


def load_npz(path: str, *, max_bytes: int | None = None) -> dict[str, np.ndarray]:
  """``{name: array}`` from an ``.npz`` file: each member's declared size charged before it is inflated."""
  size = regular_file_size(path, "an .npz file", CheckpointError)
  budget = make_budget(path, max_bytes, size)
  try:
    with zipfile.ZipFile(path) as zf:
      return {
        (n[: -len(".npy")] if n.endswith(".npy") else n): _npy(read_member(zf, n, budget), path, n)
        for n in zf.namelist()
      }
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
    raise CheckpointError(f"{path}: corrupt .npz file: {e}") from None
  except Exception as e:  # zlib errors and other parsing failures: the bytes are not a valid npz
    if isinstance(e, CheckpointError):
      raise
    raise CheckpointError(f"{path}: corrupt .npz file ({type(e).__name__}: {str(e)[:200]})") from None
