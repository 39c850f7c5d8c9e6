"""Hypothesis strategies for malformed files jaxcam reads: torch checkpoints (zip and legacy), raw pickle opcode
streams, safetensors, npz and images. Each strategy draws a `Case`: a file name suffix, its bytes and a short
description of how it was built (printed when the case fails, so it can be rebuilt by hand).

The files start from valid ones built here (`tests.helpers.torchfiles` pickles tensors as ``torch.save`` does) and
then lie: random geometries and dtypes, members missing or added, declared sizes patched in the zip directory,
headers with random JSON, opcodes with random arguments, truncation and byte edits.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import pickletools
import struct
import zipfile

import numpy as np
from hypothesis import strategies as st

from tests.helpers import torchfiles


@dataclasses.dataclass
class Case:
  suffix: str
  data: bytes
  how: str


# ------------------------------------------------------------------------------------------------ mutations

_ints = st.one_of(st.integers(-3, 40), st.sampled_from([2**31 - 1, 2**32, 2**40, 2**62, 2**63 - 1, -(2**40)]))


@st.composite
def mutate(draw, data: bytes, how: str, case_suffix: str) -> Case:
  """`data` cut short or with a few bytes replaced (or neither)."""
  raw = bytearray(data)
  kind = draw(st.sampled_from(["none", "none", "edit", "cut", "both"]))
  if kind in ("edit", "both") and raw:
    for _ in range(draw(st.integers(1, 6))):
      raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    how += " +edits"
  if kind in ("cut", "both"):
    raw = raw[: draw(st.integers(0, len(raw)))]
    how += f" cut at {len(raw)}"
  return Case(case_suffix, bytes(raw), how)


# -------------------------------------------------------------------------------------------------- pickles

_GLOBALS = [
  b"collections\nOrderedDict\n",
  b"torch._utils\n_rebuild_tensor_v2\n",
  b"torch._utils\n_rebuild_parameter\n",
  b"torch\nFloatStorage\n",
  b"torch\nfloat32\n",
  b"_codecs\nencode\n",
  b"builtins\nset\n",
]


@st.composite
def _opcode(draw) -> bytes:
  op = draw(st.sampled_from(pickletools.opcodes))
  code = op.code.encode("latin1")
  if op.arg is None:
    return code
  n = op.arg.n
  if op.name in ("GLOBAL", "INST"):
    return code + draw(st.sampled_from(_GLOBALS))
  if n > 0:
    return code + draw(st.binary(min_size=n, max_size=n))
  if n == pickletools.UP_TO_NEWLINE:
    return code + draw(st.sampled_from([b"0", b"1", b"-7", b"3.5", b"'ab'", b"storage", b"99999999999"])) + b"\n"
  body = draw(st.binary(max_size=12))
  size = len(body) if draw(st.booleans()) else draw(_ints) % 2**32
  width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT8U: 8}.get(n, 4)
  size %= 2 ** (8 * width)
  return code + size.to_bytes(width, "little") + body


def _valid_ops() -> list[bytes]:
  """The opcodes (with their arguments) of a valid state-dict pickle, to splice into random streams."""
  data, _ = torchfiles.dump({"w": torchfiles.Tensor(torchfiles.Storage("0", np.arange(6.0)), 0, (2, 3), (3, 1))})
  ops = list(pickletools.genops(data))
  ends = [pos for _, _, pos in ops[1:]] + [len(data)]
  return [data[pos:end] for (_, _, pos), end in zip(ops, ends)]


_VALID_OPS = _valid_ops()


@st.composite
def opcode_pickle(draw) -> bytes:
  """A stream of random opcodes with plausible arguments, mixed with runs of a valid state dict's opcodes, framed
  like a protocol-2..5 pickle."""
  ops = []
  for _ in range(draw(st.integers(0, 6))):
    if draw(st.booleans()):
      ops += draw(st.lists(_opcode(), max_size=6))
    else:
      start = draw(st.integers(0, len(_VALID_OPS) - 1))
      ops += _VALID_OPS[start : start + draw(st.integers(1, 24))]
  return b"\x80" + bytes([draw(st.integers(2, 5))]) + b"".join(ops) + (b"." if draw(st.booleans()) else b"")


@st.composite
def opcode_checkpoint(draw) -> Case:
  """A random opcode stream where a checkpoint's state dict goes: a zip's data.pkl (beside a valid storage) or the
  object of a legacy file (with valid headers)."""
  data = draw(opcode_pickle())
  if draw(st.booleans()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
      zf.writestr("archive/data.pkl", data)
      zf.writestr("archive/data/0", np.arange(6, dtype=np.float32).tobytes())
    return Case(".pth", buf.getvalue(), f"zip data.pkl={data!r}")
  out = io.BytesIO()
  for header in (torchfiles.LEGACY_MAGIC, torchfiles.LEGACY_PROTOCOL, {"protocol_version": 1001}):
    pickle.dump(header, out, protocol=2)
  keys = pickle.dumps(["0"], protocol=2) + struct.pack("<q", 6) + np.arange(6, dtype=np.float32).tobytes()
  return Case(".pth", out.getvalue() + data + keys, f"legacy object={data!r}")


_STORAGE_TYPES = sorted(torchfiles.STORAGE_TYPES) + ["BogusStorage"]


@st.composite
def tensors(draw) -> dict:
  """A state dict of tensors with random geometry over a few storages of random type and length."""
  storages = [
    torchfiles.Storage(str(k), np.arange(draw(st.integers(0, 12))), draw(st.sampled_from(_STORAGE_TYPES)))
    for k in range(draw(st.integers(1, 3)))
  ]
  out = {}
  for i in range(draw(st.integers(0, 4))):
    rank = draw(st.integers(0, 3))
    size = tuple(draw(st.lists(_ints, min_size=rank, max_size=rank)))
    stride = tuple(draw(st.lists(_ints, min_size=rank, max_size=rank + draw(st.integers(0, 1)))))
    out[f"t{i}"] = torchfiles.Tensor(draw(st.sampled_from(storages)), draw(_ints), size, stride)
  return out


def _describe(obj: dict) -> str:
  return ", ".join(
    f"{k}={t.storage.type_name}[{t.storage.data.size}]@{t.offset} size={t.size} stride={t.stride}"
    for k, t in obj.items()
  )


# ------------------------------------------------------------------------------------------------ torch zip


def _patch_directory(raw: bytes, entry: int, field: int, value: int) -> bytes:
  """Set a 4-byte field (16 CRC, 20 compressed size, 24 uncompressed size) of the `entry`-th central directory
  header."""
  at = -1
  for _ in range(entry + 1):
    at = raw.find(b"PK\x01\x02", at + 1)
    if at < 0:
      return raw
  return raw[: at + field] + struct.pack("<I", value % 2**32) + raw[at + field + 4 :]


@st.composite
def torch_zip(draw) -> Case:
  obj = draw(tensors())
  data, storages = torchfiles.dump(obj)
  how = f"zip {_describe(obj)}"
  if draw(st.integers(0, 3)) == 0:
    data = draw(opcode_pickle())
    how += f" data.pkl={data!r}"
  prefix = draw(st.sampled_from(["archive/", "archive/", "a/b/", ""]))
  method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", compression=method) as zf:
    if draw(st.integers(0, 7)):
      zf.writestr(f"{prefix}data.pkl", data)
    byteorder = draw(st.sampled_from([b"little", b"little", b"big", b"", b"\xff\xfe", None]))
    if byteorder is not None:
      zf.writestr(f"{prefix}byteorder", byteorder)
    for key, s in storages.items():
      stored = s.data.tobytes()
      delta = draw(st.sampled_from([0, 0, 0, -1, -4, 3, 64]))
      if draw(st.integers(0, 7)):
        zf.writestr(f"{prefix}data/{key}", stored[: max(0, len(stored) + delta)] + b"\1" * max(0, delta))
        how += f" storage {key} {delta:+d} bytes"
    extra = st.sampled_from([f"{prefix}data/9", f"{prefix}extra", "x/data.pkl"])
    for name in draw(st.lists(extra, max_size=2, unique=True)):
      zf.writestr(name, draw(st.binary(max_size=8)))
  raw = buf.getvalue()
  for _ in range(draw(st.integers(0, 2))):
    entry, field, value = draw(st.integers(0, 3)), draw(st.sampled_from([16, 20, 24])), draw(_ints)
    raw = _patch_directory(raw, entry, field, value)
    how += f" directory entry {entry} field {field} := {value}"
  return draw(mutate(raw, how, ".pth"))


# --------------------------------------------------------------------------------------------- legacy torch


@st.composite
def torch_legacy(draw) -> Case:
  obj = draw(tensors())
  data, storages = torchfiles.dump(obj)
  how = f"legacy {_describe(obj)}"
  if draw(st.integers(0, 3)) == 0:
    data = draw(opcode_pickle())
    how += f" object={data!r}"
  magic = draw(st.sampled_from([torchfiles.LEGACY_MAGIC] * 4 + [0, "x"]))
  protocol = draw(st.sampled_from([torchfiles.LEGACY_PROTOCOL] * 4 + [7, None]))
  out = io.BytesIO()
  for header in (magic, protocol, {"protocol_version": 1001, "little_endian": True}):
    pickle.dump(header, out, protocol=2)
  out.write(data)
  keys: object = list(storages)
  change = draw(st.sampled_from(["none", "none", "none", "extra", "drop", "not a list"]))
  keys = {"none": keys, "extra": keys + ["zz"], "drop": keys[1:], "not a list": {"a": 1}}[change]
  pickle.dump(keys, out, protocol=2)
  for s in storages.values():
    numel = s.data.size if draw(st.booleans()) else draw(_ints)
    out.write(struct.pack("<q", max(-(2**63), min(numel, 2**63 - 1))) + s.data.tobytes())
    how += f" storage {s.key} numel={numel}"
  return draw(mutate(out.getvalue(), how + f" magic={magic!r} protocol={protocol!r} keys={change}", ".pth"))


# ----------------------------------------------------------------------------------------------- safetensors

_json_leaf = st.one_of(
  st.none(),
  st.booleans(),
  _ints,
  st.floats(allow_nan=False),
  st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8", "", "f32"]),
)
_json = st.recursive(
  _json_leaf,
  lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
  max_leaves=8,
)


@st.composite
def _safetensors_entry(draw) -> object:
  if draw(st.integers(0, 4)) == 0:
    return draw(_json)
  entry = {
    "dtype": draw(st.sampled_from(["F32", "F16", "BF16", "I64", "I8", "U8", "BOOL", "F64", "X9"])),
    "shape": draw(st.lists(_ints, max_size=3)),
    "data_offsets": draw(st.lists(_ints, min_size=2, max_size=2)),
  }
  for key in draw(st.lists(st.sampled_from(list(entry)), max_size=1)):
    entry[key] = draw(_json)
  return entry


@st.composite
def safetensors(draw) -> Case:
  header = draw(st.dictionaries(st.sampled_from(["w", "b", "__metadata__", "é"]), _safetensors_entry(), max_size=4))
  text = json.dumps(header).encode()
  if draw(st.integers(0, 5)) == 0:
    text = draw(st.sampled_from([b"{", b"\xff\xfe{}", b"[]", b"1e999", b"{" * 5000, b'{"a": 1' + b"0" * 5000 + b"}"]))
  length = len(text) if draw(st.integers(0, 3)) else draw(_ints) % 2**64
  raw = struct.pack("<Q", length) + text + draw(st.binary(max_size=64))
  return draw(mutate(raw, f"safetensors length={length} header={text[:300]!r}", ".safetensors"))


# ------------------------------------------------------------------------------------------------------- npz

_DESCRS = ["<f4", ">f8", "|u1", "<i8", "|b1", "|O", "<U3", "|V0", "|V4", "<c8", "<M8[s]"]
_DESCRS += ["[('a', '<f4')]", "('<f4', (3,))"]  # structured and subarray dtypes, written as Python literals


@st.composite
def npy(draw) -> tuple[bytes, str]:
  """One ``.npy`` member: a version, a header dict (descr, fortran_order, shape) that may lie, some data."""
  version = draw(st.sampled_from([(1, 0), (1, 0), (2, 0), (3, 0), (9, 9)]))
  shape = tuple(draw(st.lists(_ints, max_size=3)))
  descr = draw(st.sampled_from([d if d.startswith(("[", "(")) else repr(d) for d in _DESCRS]))
  fortran = draw(st.sampled_from(["False", "True", "1", "'x'"]))
  header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
  if draw(st.integers(0, 6)) == 0:
    header = draw(st.sampled_from(["{", "[1, 2]", "{'descr': '<f4'}", "__import__('os')", "{'descr': '<f4', " * 200]))
  text = header.encode("latin1") + b"\n"
  size = struct.pack("<H" if version[0] == 1 else "<I", len(text) % (2**16 if version[0] == 1 else 2**32))
  data = b"\x93NUMPY" + bytes(version) + size + text + draw(st.binary(max_size=48))
  return data, f"npy v{version} {header[:120]}"


@st.composite
def npz(draw) -> Case:
  buf = io.BytesIO()
  how = "npz"
  with zipfile.ZipFile(buf, "w", compression=draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))) as zf:
    for name in draw(st.lists(st.sampled_from(["w0.npy", "w1", "w2.npy", "x/y.npy"]), max_size=3, unique=True)):
      if draw(st.integers(0, 3)):
        data, what = draw(npy())
      else:
        arr = np.arange(draw(st.integers(0, 6)), dtype=draw(st.sampled_from(["f4", "u1", "i8", ">f8"])))
        member = io.BytesIO()
        np.save(member, arr)
        data, what = member.getvalue(), f"valid {arr.dtype}{arr.shape}"
      zf.writestr(name, data)
      how += f" [{what}]"
  raw = buf.getvalue()
  for _ in range(draw(st.integers(0, 1))):
    entry, field, value = draw(st.integers(0, 2)), draw(st.sampled_from([16, 20, 24])), draw(_ints)
    raw = _patch_directory(raw, entry, field, value)
    how += f" directory entry {entry} field {field} := {value}"
  return draw(mutate(raw, how, ".npz"))


# ---------------------------------------------------------------------------------------------------- images

_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LA", "PA", "I", "I;16", "F", "RGBX", "HSV", "LAB"]
_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp", "PPM": ".ppm"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  import zlib

  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def image(draw) -> Case:
  """A small image of a random mode saved in a random format (where PIL can), with random EXIF orientation, then
  perhaps truncated or edited; or a hand-made PNG whose header lies about its size; or random bytes."""
  from PIL import Image

  kind = draw(st.sampled_from(["pil"] * 6 + ["png header", "random"]))
  if kind == "random":
    suffix = draw(st.sampled_from(list(_FORMATS.values())))
    return Case(suffix, draw(st.binary(max_size=64)), "random bytes")
  if kind == "png header":
    w, h = draw(_ints) % 2**32, draw(_ints) % 2**32
    depth, color = draw(st.sampled_from([1, 2, 4, 8, 16, 3])), draw(st.sampled_from([0, 2, 3, 4, 6, 5]))
    body = draw(st.binary(max_size=64))
    import zlib

    raw = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
    raw += _png_chunk(b"IDAT", zlib.compress(body)) + _png_chunk(b"IEND", b"")
    return draw(mutate(raw, f"png header {w}x{h} depth {depth} color {color}", ".png"))
  mode = draw(st.sampled_from(_MODES))
  fmt = draw(st.sampled_from(sorted(_FORMATS)))
  w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
  seed = draw(st.integers(0, 2**16))
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  try:
    im = Image.fromarray(pixels).convert(mode)
  except ValueError:  # a conversion PIL does not offer
    im = Image.new(mode, (w, h))
  exif = Image.Exif()
  orientation = draw(st.sampled_from([None, 1, 3, 6, 8, 0, 9, 65535]))
  if orientation is not None:
    exif[0x0112] = orientation
  buf = io.BytesIO()
  try:
    im.save(buf, fmt, exif=exif.tobytes()) if orientation is not None else im.save(buf, fmt)
  except (OSError, ValueError, KeyError, TypeError):  # a mode this format cannot store: keep it as PNG or random
    buf = io.BytesIO()
    try:
      im.save(buf, "PNG")
      fmt = "PNG"
    except (OSError, ValueError, KeyError):
      return Case(".png", draw(st.binary(max_size=64)), f"random bytes (PIL cannot save {mode})")
  how = f"{fmt} mode {mode} {w}x{h} pixels seed {seed} orientation {orientation}"
  return draw(mutate(buf.getvalue(), how, _FORMATS[fmt]))


STRATEGIES = {
  "torch_zip": (torch_zip, "load_state_dict"),
  "torch_legacy": (torch_legacy, "load_state_dict"),
  "pickle_opcodes": (opcode_checkpoint, "load_torch"),
  "safetensors": (safetensors, "load_safetensors"),
  "npz": (npz, "load_state_dict"),
  "image": (image, "decode_image"),
}
"""family -> (strategy factory, the fuzz_child reader it is read with)."""
