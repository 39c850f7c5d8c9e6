"""Re-run the bad-input audit classes (issue 16) and count the outcomes.

    python scripts/audit.py [--json out.json]                    # audits this checkout's jaxcam
    JAXCAM_AUDIT_ROOT=/path/to/old/checkout python scripts/audit.py  # audits another checkout's jaxcam

Each case throws one bad input or fault at jaxcam and classifies what came back:

- ``clear``: an exception from jaxcam (its type defined in jaxcam or a builtin raised by jaxcam code) whose message
  names what was wrong (the case's expected words), a warning where the case expects one, or a CLI exit status 2
  with a one-line ``jaxcam: error:`` message and no traceback;
- ``silent``: no error (a wrong result, or a NaN map, handed back as if fine);
- ``deep``: an exception raised inside JAX, Flax, numpy or PIL rather than by jaxcam;
- ``unclear``: a jaxcam error whose message does not name the problem; ``traceback``: the CLI printed one;
- ``hang``: over the case's time limit.

The cases are the audit's classes (options of the wrong type, inputs misread, degenerate results, deep errors,
hostile checkpoints, broken images, CLI user errors), several per class, built on a small random network (plus the
packaged EfficientNet-Lite0 where the CLI needs a model). Run it on two checkouts to compare. Checkpoint and image
cases run in a forked child under a memory cap. The second-round cases (issue 26) want every checkpoint or image
error to name its file: their expected words include the file's name.

Results (2026-12-07, 80 cases): before the issue 26 item 6 fixes (32a4176) 63 clear (79%), 5 unclear (checkpoint
errors met inside a tensor or a global did not name the file), 11 deep (PIL's own errors for broken images), 1
unclear image, no hang; after, 80 clear (100%), no hang. The fuzz tests (tests/test_fuzz.py) keep the same promise
for generated files.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io as _io
import json
import os
import pickle
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, os.environ.get("JAXCAM_AUDIT_ROOT", ROOT))


def _torchfiles():
  """tests/helpers/torchfiles.py of this checkout (the audited one may predate it)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("torchfiles", os.path.join(ROOT, "tests", "helpers", "torchfiles.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from PIL import Image  # noqa: E402

import jaxcam  # noqa: E402
from jaxcam import cli, io, models  # noqa: E402
from tests import nets as test_models  # noqa: E402

CASES: list[tuple[str, str, object, tuple[str, ...]]] = []  # (class, name, fn, words the message must contain)


def case(cls: str, *words: str):
  def register(fn):
    CASES.append((cls, fn.__name__, fn, words))
    return fn

  return register


class _Hang(BaseException):
  """Raised by the alarm: a BaseException, so code that catches OSError (TimeoutError is one) cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int):
  def handler(*_):
    raise _Hang

  old = signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------- fixtures

_module = test_models.ConvNet()
_x = jax.random.normal(jax.random.key(0), (3, 12, 12, 3))
_vars = _module.init(jax.random.key(1), _x)
_tap = jaxcam.linen_tap(_module, _vars, "body_2")
TMP = tempfile.mkdtemp(prefix="jaxcam-audit-")


def _path(name: str) -> str:
  return os.path.join(TMP, name)


# --------------------------------------------------------------------------------------------- options


@case("options", "relu")
def relu_none():
  return jaxcam.gradcam(_tap, _x, relu=None)


@case("options", "normalize")
def normalize_string():
  return jaxcam.gradcam(_tap, _x, normalize="no")


@case("options", "upsample")
def upsample_string():
  return jaxcam.gradcam(_tap, _x, upsample="false")


@case("options", "eps")
def eps_negative():
  return jaxcam.gradcam_pp(_tap, _x, eps=-1.0)


@case("options", "eps")
def eps_string():
  return jaxcam.xgradcam(_tap, _x, eps="abc")


@case("options", "chunk_size")
def chunk_size_zero():
  return jaxcam.scorecam(_tap, _x, chunk_size=0)


@case("options", "chunk_size")
def chunk_size_float():
  return jaxcam.ablationcam(_tap, _x, chunk_size=2.5)


@case("options", "batch_size")
def batch_size_zero():
  return list(jaxcam.explain_batches("gradcam", _tap, [np.asarray(_x)], batch_size=0))


@case("options", "pretrained")
def pretrained_string():
  return models.resnet18(pretrained="no")


@case("options", "fusion")
def fusion_unknown():
  return jaxcam.gradcam(_tap, _x, fusion="avg")


@case("options", "partial")
def jit_without_partial():
  return jax.jit(jaxcam.gradcam)(_tap, _x, normalize=False)


# --------------------------------------------------------------------------------------------- inputs


@case("inputs", "NaN", "image")
def nan_image():
  return jaxcam.gradcam(_tap, _x.at[1, 2, 2, 0].set(jnp.nan))


@case("inputs", "NaN", "image")
def inf_image_many():
  return jaxcam.explain_many(["gradcam", "layercam"], _tap, _x.at[0].set(jnp.inf))


@case("inputs", "divide by 255")
def floats_0_255_into_a_shipped_model():
  class Shipped(test_models.ConvNet):
    input_mean = (0.5, 0.5, 0.5)

  return jaxcam.gradcam(jaxcam.linen_tap(Shipped(), _vars, "body_2"), jax.nn.sigmoid(_x) * 255)


@case("inputs", "Ambiguous")
def float_slightly_over_two():
  return models.preprocess(np.full((8, 8, 3), 1.6, np.float32), 8)


@case("inputs", "NaN")
def preprocess_nan():
  return models.preprocess(np.full((8, 8, 3), np.nan, np.float32), 8)


@case("inputs", "normalized")
def preprocess_normalized():
  return models.preprocess(np.full((8, 8, 3), -1.0, np.float32), 8)


@case("inputs", "16-bit")
def png_16_bit():
  gray = np.linspace(0, 255, 64).reshape(8, 8).astype(np.uint8)
  Image.fromarray(gray.astype(np.uint16) * 257).save(_path("g16.png"))
  from jaxcam import stream

  got = stream.decode_image(_path("g16.png"))
  if not np.array_equal(got[..., 0], gray):
    return "misread"  # a silent wrong result
  raise _Clear("16-bit decoded by depth")


@case("inputs", "image")
def preprocess_empty():
  return models.preprocess([], 8)


@case("inputs", "shape")
def preprocess_five_channels():
  return models.preprocess(np.zeros((8, 8, 5), np.uint8), 8)


# --------------------------------------------------------------------------------------------- degenerate


@case("degenerate", "1, 1")
def one_by_one_layer():
  return jaxcam.gradcam(_tap, _x[:, :2, :2])


@case("degenerate", "float")
def int_score_callable():
  return jaxcam.gradcam(_tap, _x, target=lambda out: jnp.argmax(out, -1))


@case("degenerate", "class ids")
def out_of_range_id_batches():
  return list(jaxcam.explain_batches("gradcam", _tap, [(np.asarray(_x), np.array([0, 1, 99]))]))


@case("degenerate", "class ids")
def out_of_range_id_diagonals():
  return jaxcam.derivatives.diagonals(_tap, _x, jnp.array([0, 1, 99]))


@case("degenerate", "class ids")
def out_of_range_id_gradcam():
  return jaxcam.gradcam(_tap, _x, target=jnp.array([0, 1, 99]))


# --------------------------------------------------------------------------------------------- deep errors


@case("deep", "channel")
def one_channel_image():
  return jaxcam.gradcam(_tap, _x[..., :1])


@case("deep", "channel")
def four_channel_image():
  return jaxcam.gradcam(_tap, jnp.concatenate([_x, _x[..., :1]], -1))


@case("deep", "variables")
def variables_of_another_model():
  other = {"params": {k: v for k, v in _vars["params"].items() if k != "body_0"}}
  return jaxcam.gradcam(jaxcam.linen_tap(_module, other, "body_2"), _x)


@case("deep", "ImageNet")
def class_name_target_typo():
  return jaxcam.gradcam(_tap, _x, target="egyptian kat")


@case("deep", "images")
def preprocess_jax_array():
  out = models.preprocess(jnp.zeros((1, 8, 8, 3)), 8)
  if out.shape == (1, 8, 8, 3):
    raise _Clear("accepted a jax array: images")
  return out


# --------------------------------------------------------------------------------------------- checkpoints


def _legacy_pickle(obj_bytes: bytes) -> bytes:
  buf = _io.BytesIO()
  for header in (io._LEGACY_MAGIC, io._LEGACY_PROTOCOL, {"protocol_version": 1001}):
    pickle.dump(header, buf, protocol=2)
  return buf.getvalue() + obj_bytes


@case("checkpoints", "state dict")
def dag_pickle():
  node: list = [0]
  for _ in range(60):
    node = [node, node]
  with open(_path("dag.pth"), "wb") as f:
    f.write(_legacy_pickle(pickle.dumps({"x": node}, protocol=2)) + pickle.dumps([], protocol=2))
  return io.load_state_dict(_path("dag.pth"))


@case("checkpoints", "bytes")
def zero_strides():
  torchfiles = _torchfiles()
  s = torchfiles.Storage("0", np.arange(4.0))
  torchfiles.write_zip(_path("z.pth"), {"w": torchfiles.Tensor(s, 0, (16384, 16384), (0, 0))})
  return io.load_state_dict(_path("z.pth"))


@case("checkpoints", "data_offsets")
def safetensors_negative_offsets():
  header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}).encode()
  with open(_path("neg.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + b"\0" * 16)
  return io.load_state_dict(_path("neg.safetensors"))


@case("checkpoints", "JSON object")
def safetensors_list_header():
  header = json.dumps([1, 2]).encode()
  with open(_path("list.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header)
  return io.load_state_dict(_path("list.safetensors"))


@case("checkpoints", "shape")
def safetensors_string_shape():
  header = json.dumps({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}).encode()
  with open(_path("str.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + b"\0" * 8)
  return io.load_state_dict(_path("str.safetensors"))


@case("checkpoints", "storage")
def zip_missing_storage():
  torchfiles = _torchfiles()
  with zipfile.ZipFile(_path("nostorage.pth"), "w") as zf:
    data, _ = torchfiles.dump({"w": torchfiles.Tensor(torchfiles.Storage("0", np.ones(2)), 0, (2,), (1,))})
    zf.writestr("archive/data.pkl", data)
  return io.load_state_dict(_path("nostorage.pth"))


_ZEROS = 256 * 2**20  # 256 MiB of zeros deflate to ~256 KiB


@case("checkpoints", "declares", "past")
def zip_member_bomb():
  torchfiles = _torchfiles()
  data, _ = torchfiles.dump({"w": torchfiles.Tensor(torchfiles.Storage("0", np.ones(2)), 0, (2,), (1,))})
  with zipfile.ZipFile(_path("bomb.pth"), "w", compression=zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("archive/data.pkl", data)
    zf.writestr("archive/data/0", b"\0" * _ZEROS)
  return io.load_state_dict(_path("bomb.pth"))


@case("checkpoints", "past")
def npz_bomb():
  np.savez_compressed(_path("bomb.npz"), w=np.zeros(_ZEROS // 4, np.float32))
  return io.load_state_dict(_path("bomb.npz"))


@case("checkpoints", "bytes")
def pickle_declares_8_gib():
  with open(_path("bytes8.pth"), "wb") as f:
    f.write(_legacy_pickle(b"\x80\x04\x8e" + struct.pack("<Q", 2**33) + b"abc"))
  return io.load_state_dict(_path("bytes8.pth"))


@case("checkpoints", "past")
def safetensors_entries_sharing_bytes():
  n = 2**20
  header = json.dumps({f"w{i}": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]} for i in range(2000)}).encode()
  with open(_path("shared.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + b"\1" * n)
  return io.load_state_dict(_path("shared.safetensors"))


def _fifo(name: str) -> str:
  if os.path.lexists(_path(name)):
    os.remove(_path(name))
  os.mkfifo(_path(name))
  return _path(name)


@case("checkpoints", "FIFO")
def fifo_checkpoint():
  return io.load_state_dict(_fifo("pipe.pth"))


@case("checkpoints", "FIFO")
def fifo_npz():
  return io.load_state_dict(_fifo("pipe.npz"))


@case("checkpoints", "character device")
def link_to_a_device():
  if not os.path.lexists(_path("zero.safetensors")):
    os.symlink("/dev/zero", _path("zero.safetensors"))
  return io.load_state_dict(_path("zero.safetensors"))


@case("inputs", "FIFO")
def fifo_image():
  return jaxcam.explain_model((_module, _vars), [_fifo("pipe.png")], size=12)


# ------------------------------------------------------------- checkpoints, second round (issue 26, item 6)
# Every error must name the file (the words include its name): what a fuzzer found raised without it.


def _zip_with(name: str, pkl: bytes, storage: bytes | None = b"\0" * 24, byteorder: bytes | None = b"little") -> str:
  with zipfile.ZipFile(_path(name), "w") as zf:
    zf.writestr("archive/data.pkl", pkl)
    if byteorder is not None:
      zf.writestr("archive/byteorder", byteorder)
    if storage is not None:
      zf.writestr("archive/data/0", storage)
  return _path(name)


def _tensor_pickle(size, stride, offset=0, type_name="FloatStorage", numel=6) -> bytes:
  torchfiles = _torchfiles()
  storage = torchfiles.Storage("0", np.arange(numel), type_name)
  return torchfiles.dump({"w": torchfiles.Tensor(storage, offset, size, stride)})[0]


@case("checkpoints", "os.system", "evil_zip.pth")
def zip_unsafe_global_names_the_file():
  return io.load_state_dict(_zip_with("evil_zip.pth", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R."))


@case("checkpoints", "BogusStorage", "bogus.pth")
def zip_unknown_storage_type():
  return io.load_state_dict(_zip_with("bogus.pth", _tensor_pickle((2,), (1,), type_name="BogusStorage")))


@case("checkpoints", "geometry", "badstride.pth")
def zip_stride_rank_mismatch():
  return io.load_state_dict(_zip_with("badstride.pth", _tensor_pickle((2, 3), (3,))))


@case("checkpoints", "reads element", "pastend.pth")
def zip_tensor_reads_past_its_storage():
  return io.load_state_dict(_zip_with("pastend.pth", _tensor_pickle((10, 10), (10, 1))))


@case("checkpoints", "no data", "nostore.pth")
def legacy_storage_never_written():
  torchfiles = _torchfiles()
  data = _tensor_pickle((2,), (1,))
  with open(_path("nostore.pth"), "wb") as f:
    for header in (torchfiles.LEGACY_MAGIC, torchfiles.LEGACY_PROTOCOL, {"protocol_version": 1001}):
      pickle.dump(header, f, protocol=2)
    f.write(data + pickle.dumps([], protocol=2))
  return io.load_state_dict(_path("nostore.pth"))


@case("checkpoints", "nested", "cycle.pth")
def legacy_list_that_contains_itself():
  cyclic: list = []
  cyclic.append(cyclic)
  with open(_path("cycle.pth"), "wb") as f:
    f.write(_legacy_pickle(pickle.dumps({"x": cyclic}, protocol=2)) + pickle.dumps([], protocol=2))
  return io.load_state_dict(_path("cycle.pth"))


@case("checkpoints", "big-endian", "big.pth")
def zip_big_endian():
  return io.load_state_dict(_zip_with("big.pth", _tensor_pickle((2,), (1,)), byteorder=b"big"))


@case("checkpoints", "corrupt", "crc.pth")
def zip_member_with_a_wrong_crc():
  raw = open(_zip_with("crc.pth", _tensor_pickle((2,), (1,))), "rb").read()
  at = raw.rfind(b"PK\x01\x02")  # the last member's directory entry: its CRC-32 at offset 16
  with open(_path("crc.pth"), "wb") as f:
    f.write(raw[: at + 16] + b"\xde\xad\xbe\xef" + raw[at + 20 :])
  return io.load_state_dict(_path("crc.pth"))


@case("checkpoints", "pickled", "objects.npz")
def npz_object_array():
  np.savez(_path("objects.npz"), w=np.array([{"a": 1}], dtype=object))
  return io.load_state_dict(_path("objects.npz"))


@case("checkpoints", "claims", "shape.npz")
def npz_header_claims_a_huge_shape():
  header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (9999999999,), }".ljust(117) + b"\n"
  with zipfile.ZipFile(_path("shape.npz"), "w") as zf:
    zf.writestr("w.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 16)
  return io.load_state_dict(_path("shape.npz"))


@case("checkpoints", "version", "v9.npz")
def npz_unknown_npy_version():
  with zipfile.ZipFile(_path("v9.npz"), "w") as zf:
    zf.writestr("w.npy", b"\x93NUMPY\x09\x00" + b"\0" * 32)
  return io.load_state_dict(_path("v9.npz"))


def _safetensors_raw(name: str, raw: bytes) -> str:
  with open(_path(name), "wb") as f:
    f.write(raw)
  return _path(name)


@case("checkpoints", "truncated", "len.safetensors")
def safetensors_header_length_2_63():
  return io.load_state_dict(_safetensors_raw("len.safetensors", struct.pack("<Q", 2**63) + b"{}"))


@case("checkpoints", "header", "utf.safetensors")
def safetensors_header_not_utf8():
  return io.load_state_dict(_safetensors_raw("utf.safetensors", struct.pack("<Q", 4) + b"\xff\xfe\xfa{"))


@case("checkpoints", "header", "deep.safetensors")
def safetensors_header_nested_deeply():
  return io.load_state_dict(_safetensors_raw("deep.safetensors", struct.pack("<Q", 200000) + b"[" * 200000))


@case("checkpoints", "dtype", "f8.safetensors")
def safetensors_unknown_dtype():
  header = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
  return io.load_state_dict(_safetensors_raw("f8.safetensors", struct.pack("<Q", len(header)) + header + b"\0\0"))


# ------------------------------------------------------------------------ images (issue 26, item 6)
# A broken image is one jaxcam error naming the file, whatever PIL raised; a valid one decodes upright.


def _saved(name: str, fmt: str, mode: str = "RGB", size=(16, 12), cut: float | None = None, **kw) -> str:
  im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)).convert(mode)
  buf = _io.BytesIO()
  im.save(buf, fmt, **kw)
  raw = buf.getvalue()
  with open(_path(name), "wb") as f:
    f.write(raw if cut is None else raw[: int(cut * len(raw))])
  return _path(name)


def _decode(path: str):
  from jaxcam import stream

  return stream.decode_image(path)


@case("images", "cut.png")
def png_truncated():
  return _decode(_saved("cut.png", "PNG", cut=0.6))


@case("images", "cut.jpg")
def jpeg_truncated():
  return _decode(_saved("cut.jpg", "JPEG", size=(64, 64), cut=0.5))


@case("images", "cut.ppm")
def ppm_header_truncated():
  return _decode(_saved("cut.ppm", "PPM", cut=0.1))


@case("images", "cut.webp")
def webp_truncated():
  return _decode(_saved("cut.webp", "WEBP", cut=0.5))


@case("images", "cut.gif")
def gif_truncated():
  return _decode(_saved("cut.gif", "GIF", mode="P", cut=0.5))


@case("images", "cut.tif")
def tiff_truncated():
  return _decode(_saved("cut.tif", "TIFF", cut=0.3))


@case("images", "noise.png")
def random_bytes_named_png():
  return _decode(_safetensors_raw("noise.png", bytes(np.random.default_rng(1).integers(0, 256, 64, np.uint8))))


@case("images", "neg.tif")
def tiff_of_negative_32_bit_values():
  Image.fromarray(np.full((4, 4), -5, np.int32), "I").save(_path("neg.tif"))
  return _decode(_path("neg.tif"))


def _png(name: str, w: int, h: int, depth: int = 8, color: int = 2, body: bytes = b"") -> str:
  import zlib

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color, 0, 0, 0))
  return _safetensors_raw(name, raw + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))


@case("images", "MAX_IMAGE_PIXELS", "wide.png")
def png_header_2_to_the_31_wide():
  return _decode(_png("wide.png", 2**31 - 1, 1))


@case("images", "lie.png")
def png_header_8000_square_without_pixels():
  return _decode(_png("lie.png", 8000, 8000))


@case("images", "depth.png")
def png_impossible_depth_and_color():
  return _decode(_png("depth.png", 4, 4, depth=3, color=5))


@case("images")
def exif_orientation_out_of_range_decodes_as_stored():
  exif = Image.Exif()
  exif[0x0112] = 9
  got = _decode(_saved("exif9.jpg", "JPEG", size=(16, 12), exif=exif.tobytes()))
  if got.shape == (12, 16, 3):
    raise _Clear("an unknown orientation leaves the image as stored")
  return got


@case("images", "bad.png")
def explain_model_with_a_corrupt_image():
  _saved("bad.png", "PNG", cut=0.5)
  return jaxcam.explain_model((_module, _vars), [_image("good.png", 12), _path("bad.png")], size=12)


# --------------------------------------------------------------------------------------------- CLI


def _image(name="a.png", size=8) -> str:
  Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(_path(name))
  return _path(name)


@case("cli", "not a folder")
def cli_out_is_a_file():
  open(_path("afile"), "w").close()
  return ("cli", ["explain", _image(), "--out", _path("afile")])


@case("cli", "weights")
def cli_missing_weights():
  return ("cli", ["explain", _image(), "--model", "resnet18", "--weights", _path("nope.pth"), "--out", _path("o1")])


@case("cli", "weights")
def cli_garbage_weights():
  with open(_path("garbage.pth"), "wb") as f:
    f.write(b"\x80\x02garbage")
  return ("cli", ["explain", _image(), "--model", "resnet18", "--weights", _path("garbage.pth"), "--out", _path("o2")])


@case("cli", "weights")
def cli_malicious_weights():
  with open(_path("evil.pth"), "wb") as f:
    f.write(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
  return ("cli", ["explain", _image(), "--model", "resnet18", "--weights", _path("evil.pth"), "--out", _path("o3")])


@case("cli", "weights")
def cli_weights_for_packaged_model():
  return ("cli", ["explain", _image(), "--weights", _path("garbage.pth"), "--out", _path("o4")])


@case("cli", "shard-size")
def cli_negative_shard_size():
  return ("cli", ["explain", _image(), "--shard-size", "-3", "--out", _path("o5")])


@case("cli", "manifest")
def cli_truncated_manifest():
  os.makedirs(_path("m/shards"), exist_ok=True)
  with open(_path("m/shards/manifest-00000.json"), "w") as f:
    f.write('{"method": "gradc')
  return ("cli", ["merge-manifests", _path("m")])


@case("cli", "FIFO")
def cli_fifo_weights():
  return ("cli", ["explain", _image(), "--model", "resnet18", "--weights", _fifo("w.pth"), "--out", _path("o6")])


CLASSES = ("options", "inputs", "degenerate", "deep", "checkpoints", "images", "cli")


class _Clear(Exception):
  """Raised by a case that verified the right behaviour itself."""


def _from_jaxcam(e: BaseException) -> bool:
  tb = traceback.extract_tb(e.__traceback__)
  return bool(tb) and "jaxcam" in tb[-1].filename.replace(os.sep, "/").split("/site-packages/")[-1]


LIMIT_S = 30


def run_case(fn, words) -> str:
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    try:
      with time_limit(LIMIT_S):
        result = fn()
    except _Clear:
      return "clear"
    except _Hang:
      return "hang"
    except Exception as e:
      if time.perf_counter() - t0 >= LIMIT_S - 1:  # the alarm fired inside code that wrapped the TimeoutError
        return "hang"
      text = f"{type(e).__name__}: {e}"
      if not _from_jaxcam(e) and type(e).__module__.split(".")[0] in ("jax", "jaxlib", "flax", "numpy", "PIL"):
        return "deep"
      if not _from_jaxcam(e):
        return "deep"
      return "clear" if all(w.lower() in text.lower() for w in words) else "unclear"
  if isinstance(result, tuple) and result and result[0] == "cli":
    err = _io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_io.StringIO()):
      try:
        with time_limit(LIMIT_S):
          rc = cli.main(result[1])
      except SystemExit as e:
        rc = e.code
      except _Hang:
        return "hang"
      except Exception:
        return "traceback"
    text = err.getvalue()
    if rc == 2 and text.startswith("jaxcam: error:") and "Traceback" not in text:
      return "clear" if all(w.lower() in text.lower() for w in words) else "unclear"
    return "silent"
  if any(all(w.lower() in str(m.message).lower() for w in words) for m in caught):
    return "clear"
  return "silent"


def run_isolated(fn, words) -> str:
  """`run_case` in a forked child limited to LIMIT_S seconds and 4 GiB of memory (a loader that blows up is a
  'hang', never a crash of the audit)."""
  import multiprocessing
  import resource

  ctx = multiprocessing.get_context("fork")
  parent, child = ctx.Pipe(duplex=False)

  def target():
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))
    try:
      child.send(run_case(fn, words))
    except BaseException:  # MemoryError and the like: the loader did not bound its work
      child.send("hang")

  proc = ctx.Process(target=target)
  proc.start()
  proc.join(LIMIT_S + 10)
  if proc.is_alive():
    proc.kill()
    proc.join()
    return "hang"
  return parent.recv() if parent.poll() else "hang"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json")
  args = p.parse_args(argv)
  counts: dict[str, collections.Counter] = {c: collections.Counter() for c in CLASSES}
  rows = []
  for cls, name, fn, words in CASES:
    outcome = run_isolated(fn, words) if cls in ("checkpoints", "images") else run_case(fn, words)
    counts[cls][outcome] += 1
    rows.append({"class": cls, "case": name, "outcome": outcome})
    print(f"{cls:12s} {name:34s} {outcome}", file=sys.stderr, flush=True)
  kinds = ("clear", "silent", "deep", "unclear", "traceback", "hang")
  print(f"jaxcam {jaxcam.__version__} at {os.path.abspath(os.path.dirname(jaxcam.__file__))}: {len(CASES)} cases")
  print("| class | cases | " + " | ".join(kinds) + " |")
  print("|---|---|" + "---|" * len(kinds))
  for cls in CLASSES:
    c = counts[cls]
    print(f"| {cls} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in kinds) + " |")
  total = sum(counts.values(), collections.Counter())
  print(f"| all | {len(CASES)} | " + " | ".join(str(total[k]) for k in kinds) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
