"""Safe weight loading: real torch files in both formats, safetensors, npz; malicious and broken files."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import struct
import tracemalloc
import zipfile
from io import BufferedReader, BytesIO, FileIO

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxcam import _budget, io
from tests.conftest import FIXTURES
from tests.helpers import torchfiles
from tests.helpers.fifo import fifo


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURES, "checkpoints.npz")) as d:
    return {k: d[k] for k in d.files if not k.startswith("__")}


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch PWNED_BY_PICKLE",))


class _TooMuchWork(BaseException):
  """Raised past the walk budget (a BaseException: the loader's `except Exception` cannot turn it into an error)."""


@contextlib.contextmanager
def _counted_work(max_resolve: int):
  """Deterministic measures of the loader's work: the bytes it reads (its own file reads and zip member reads,
  inflated) and the calls of `io._resolve`, which walks the unpickled objects (a tree walk of a DAG would be
  exponential: past `max_resolve` calls the walk is stopped, so a regression fails instead of hanging)."""
  counts = {"bytes": 0, "resolve": 0}

  class Reader(BufferedReader):
    def read(self, size=-1, /):
      data = super().read(size)
      counts["bytes"] += len(data)
      return data

    def readinto(self, buffer, /):
      n = super().readinto(buffer)
      counts["bytes"] += n or 0
      return n

    def readline(self, size=-1, /):
      line = super().readline(size)
      counts["bytes"] += len(line)
      return line

  zip_read, resolve = _budget.read_member, io._resolve

  def read_member(*args):
    data = zip_read(*args)
    counts["bytes"] += len(data)
    return data

  def counted_resolve(*args):
    counts["resolve"] += 1
    if counts["resolve"] > max_resolve:
      raise _TooMuchWork(f"more than {max_resolve} calls of io._resolve")
    return resolve(*args)

  with pytest.MonkeyPatch.context() as mp:
    for module in (io, _budget):
      mp.setattr(module, "open", lambda path, mode="r": Reader(FileIO(path, mode)), raising=False)
    mp.setattr(_budget, "read_member", read_member)
    mp.setattr(io, "_resolve", counted_resolve)
    yield counts


def _safetensors(header, body: bytes = b"\0" * 64) -> bytes:
  text = json.dumps(header).encode()
  return struct.pack("<Q", len(text)) + text + body


def _budget_ok(result, path) -> bool:
  return sum(v.nbytes for v in result.values()) <= io.default_max_bytes(os.path.getsize(path))


@pytest.mark.fast
@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth"])
def test_torch_checkpoints_written_by_torch(name, expected):
  sd = io.load_state_dict(os.path.join(FIXTURES, name))
  assert list(sd) == list(expected)  # order kept
  for k, ref in expected.items():
    got = sd[k]
    if k == "bf16":
      assert got.dtype == ml_dtypes.bfloat16
      got = got.astype(np.float32)
    assert got.dtype == ref.dtype and got.shape == ref.shape, k
    np.testing.assert_array_equal(got, ref, err_msg=k)
  # views are copies with their own memory (no aliasing of the file buffer)
  assert sd["transposed"].flags["C_CONTIGUOUS"] and sd["transposed"].flags["OWNDATA"]


@pytest.mark.fast
def test_safetensors_and_npz(expected, tmp_path):
  sd = io.load_state_dict(os.path.join(FIXTURES, "tiny.safetensors"))
  for k, v in sd.items():
    np.testing.assert_array_equal(v.astype(np.float32) if k == "bf16" else v, expected[k])
  path = tmp_path / "w.npz"
  np.savez(path, a=np.arange(3.0), b=np.ones((2, 2), np.float16))
  got = io.load_state_dict(path)
  np.testing.assert_array_equal(got["a"], np.arange(3.0))
  np.testing.assert_array_equal(got["b"], np.ones((2, 2), np.float16))
  assert got["b"].dtype == np.float16


@pytest.mark.fast
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  # legacy stream: valid magic/protocol/sys-info, then the payload
  legacy = tmp_path / "evil_legacy.pth"
  with open(legacy, "wb") as f:
    for obj in (io._LEGACY_MAGIC, io._LEGACY_PROTOCOL, {"protocol_version": 1001}):
      pickle.dump(obj, f, protocol=2)
    pickle.dump({"w": _Evil()}, f, protocol=2)
  with pytest.raises(io.UnsafeCheckpointError, match=r"posix\.system|os\.system"):
    io.load_state_dict(legacy)
  # zip format with an evil data.pkl
  zipped = tmp_path / "evil_zip.pth"
  with zipfile.ZipFile(zipped, "w") as zf:
    zf.writestr("archive/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
  with pytest.raises(io.UnsafeCheckpointError, match="nothing in the file was executed"):
    io.load_state_dict(zipped)
  # a builtin that would evaluate code
  with open(tmp_path / "eval.pth", "wb") as f:
    for obj in (io._LEGACY_MAGIC, io._LEGACY_PROTOCOL, {}):
      pickle.dump(obj, f, protocol=2)
    f.write(b"\x80\x02cbuiltins\neval\nX\x08\x00\x00\x00__import__('os')\x85R.")
  with pytest.raises(io.UnsafeCheckpointError, match="builtins.eval"):
    io.load_state_dict(tmp_path / "eval.pth")
  assert not (tmp_path / "PWNED_BY_PICKLE").exists()


@pytest.mark.fast
@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth", "tiny.safetensors"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_give_a_clear_error(tmp_path, name, keep):
  raw = open(os.path.join(FIXTURES, name), "rb").read()
  path = tmp_path / name
  path.write_bytes(raw[: int(len(raw) * keep)])
  with pytest.raises(io.CheckpointError, match="truncated|corrupt|not a torch checkpoint"):
    io.load_state_dict(path)


@pytest.mark.fast
def test_corrupt_and_unknown_files(tmp_path):
  bad = tmp_path / "garbage.pth"
  bad.write_bytes(b"hello, not a checkpoint")
  with pytest.raises(io.CheckpointError, match="neither a zip archive nor a pickle"):
    io.load_state_dict(bad)
  raw = bytearray(open(os.path.join(FIXTURES, "tiny_legacy.pth"), "rb").read())
  raw[40:60] = b"\xff" * 20  # scribble over the sys-info pickle
  scribbled = tmp_path / "scribbled.pth"
  scribbled.write_bytes(bytes(raw))
  with pytest.raises((io.CheckpointError, io.UnsafeCheckpointError)):
    io.load_state_dict(scribbled)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    io.load_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("write", [torchfiles.write_zip, torchfiles.write_legacy], ids=["zip", "legacy"])
def test_small_files_cannot_hang_or_exhaust_memory(tmp_path, write):
  s = torchfiles.Storage("0", np.arange(6.0))
  path = tmp_path / "w.pth"
  # a DAG of shared references (2**60 paths): resolved once per object, instantly
  node: list = [0]
  for _ in range(60):
    node = [node, node]
  write(path, {"w": torchfiles.Tensor(s, 0, (2, 3), (3, 1)), "dag": node})
  # 61 shared lists, each walked once and met twice: 124 calls, where a tree walk makes 2**61
  with _counted_work(max_resolve=130) as work, pytest.raises(io.CheckpointError, match="'dag' is a list"):
    io.load_state_dict(path)
  assert work["resolve"] > 60 and 0 < work["bytes"] <= 2 * os.path.getsize(path)
  # zero strides: a 1 GiB array claimed from a few hundred bytes
  write(path, {"w": torchfiles.Tensor(s, 0, (16384, 16384), (0, 0))})
  with pytest.raises(io.CheckpointError, match=r"size \(16384, 16384\) would take .* past \d+ bytes"):
    io.load_state_dict(path)
  # many views of one storage (each legal alone)
  big = torchfiles.Storage("1", np.zeros(2**18))
  write(path, {f"k{i}": torchfiles.Tensor(big, 0, (2**18,), (1,)) for i in range(512)})
  with pytest.raises(io.CheckpointError, match="many views of one storage"):
    io.load_state_dict(path)
  assert len(io.load_state_dict(path, max_bytes=2**30)) == 512  # a trusted file: the budget is the user's call
  # tied weights (two views of one storage) and a transposed view fit the default budget
  write(path, {"a": torchfiles.Tensor(s, 0, (2, 3), (3, 1)), "b": torchfiles.Tensor(s, 0, (3, 2), (1, 3))})
  got = io.load_state_dict(path)
  np.testing.assert_array_equal(got["b"], np.arange(6.0).reshape(2, 3).T)
  # geometry that is not ints, negative, or reads past the storage
  for size, stride, offset in [((2, 3), (3, -1), 0), ((2, 3), (3, 1), 1), (("2", 3), (3, 1), 0), ((2,), (1, 1), 0)]:
    write(path, {"w": torchfiles.Tensor(s, offset, size, stride)})
    with pytest.raises(io.CheckpointError, match="geometry|reads element"):
      io.load_state_dict(path)
  with pytest.raises(ValueError, match="`max_bytes` to be None or a non-negative int, got -1"):
    io.load_state_dict(path, max_bytes=-1)


@pytest.mark.fast
def test_legacy_storage_claiming_more_than_the_file_holds(tmp_path):
  path = tmp_path / "w.pth"
  torchfiles.write_legacy(path, {"w": torchfiles.Tensor(torchfiles.Storage("0", np.arange(6.0)), 0, (6,), (1,))})
  raw = bytearray(path.read_bytes())
  at = raw.rindex(struct.pack("<q", 6))
  raw[at : at + 8] = struct.pack("<q", 2**60)  # the element count in front of the storage
  path.write_bytes(bytes(raw))
  with pytest.raises(io.CheckpointError, match="claims .* bytes, .* left"):
    io.load_state_dict(path)


@pytest.mark.fast
@pytest.mark.parametrize(
  "header,message",
  [
    ([1, 2], "expected a JSON object, got list"),
    ({"w": [1]}, "entry 'w' is a list"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, "data_offsets of 'w'"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, "data_offsets of 'w'"),
    ({"w": {"dtype": "F32", "shape": [2]}}, "data_offsets of 'w' are None"),
    ({"w": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}}, "shape of 'w'"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "shape of 'w'"),
    ({"w": {"dtype": "F32", "data_offsets": [0, 8]}}, "shape of 'w' is None"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "0 <= start <= end"),
    ({"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, "unsupported safetensors dtype 'Q9'"),
    ({"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}, "unsupported safetensors dtype ['F32']"),
    ({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}, "truncated or corrupt"),
  ],
)
def test_safetensors_headers_are_validated(tmp_path, header, message):
  path = tmp_path / "w.safetensors"
  path.write_bytes(_safetensors(header))
  with pytest.raises(io.CheckpointError, match=re.escape(message)):
    io.load_state_dict(path)


@pytest.mark.fast
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
  kind=st.sampled_from(["zip", "legacy", "safetensors"]),
  edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
  cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_loader_fuzz_every_outcome_is_arrays_or_a_checkpoint_error(tmp_path, kind, edits, cut):
  """Mutated real files: a dict of arrays within the byte budget, or CheckpointError / UnsafeCheckpointError."""
  name = {"zip": "tiny_zip.pth", "legacy": "tiny_legacy.pth", "safetensors": "tiny.safetensors"}[kind]
  raw = bytearray(open(os.path.join(FIXTURES, name), "rb").read())
  for where, byte in edits:
    raw[int(where * len(raw))] = byte
  if cut is not None:
    raw = raw[: int(cut * len(raw))]
  path = tmp_path / f"fuzz{os.path.splitext(name)[1]}"
  path.write_bytes(bytes(raw))
  with _counted_work(max_resolve=len(raw)) as work:
    try:
      result = io.load_state_dict(path)
    except (io.CheckpointError, io.UnsafeCheckpointError):
      pass
    else:
      assert isinstance(result, dict) and all(isinstance(v, np.ndarray) for v in result.values())
      assert _budget_ok(result, path)
  assert work["bytes"] <= 2 * len(raw)  # bounded work: the file read about once, no more objects walked than bytes


@pytest.mark.fast
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
  header=st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: (
      st.lists(inner, max_size=3)
      | st.dictionaries(st.sampled_from(["dtype", "shape", "data_offsets", "w"]), inner, max_size=3)
    ),
    max_leaves=12,
  )
)
def test_safetensors_header_fuzz(tmp_path, header):
  path = tmp_path / "h.safetensors"
  path.write_bytes(_safetensors(header))
  try:
    result = io.load_state_dict(path)
  except io.CheckpointError:
    return
  assert isinstance(result, dict) and all(isinstance(v, np.ndarray) for v in result.values())


def _peak_traced(fn) -> tuple[int, BaseException | None]:
  """(peak bytes Python allocated while `fn` ran, the exception it raised or None)."""
  tracemalloc.start()
  try:
    fn()
    error = None
  except Exception as e:
    error = e
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return peak, error


_BOMB = 64 * 2**20  # 64 MiB of zeros deflate to ~64 KiB: past the default budget of such a file (4 x + 16 MiB)


@pytest.mark.fast
@pytest.mark.parametrize("member", ["storage", "data.pkl"])
def test_zip_members_are_charged_by_their_declared_size_before_inflating(tmp_path, member):
  data, _ = torchfiles.dump({"w": torchfiles.Tensor(torchfiles.Storage("0", np.arange(6.0)), 0, (6,), (1,))})
  path = tmp_path / "bomb.pth"
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("archive/data.pkl", data + b"\0" * _BOMB if member == "data.pkl" else data)
    zf.writestr("archive/data/0", b"\0" * _BOMB if member == "storage" else np.arange(6.0, dtype=np.float32).tobytes())
  assert os.path.getsize(path) < 2**20
  peak, error = _peak_traced(lambda: io.load_state_dict(path))
  assert peak < 8 * 2**20, peak  # refused from the zip header, never inflated
  assert isinstance(error, io.CheckpointError) and re.search(r"declares \d+ bytes.*past \d+ bytes", str(error)), error
  assert io.load_state_dict(path, max_bytes=2**28)["w"].shape == (6,)  # a trusted file: the user's budget


@pytest.mark.fast
def test_a_zip_header_that_understates_a_member_cannot_inflate_it(tmp_path):
  """A member whose header declares 24 bytes but whose data inflates to 64 MiB: at most 24 bytes are read."""
  data, _ = torchfiles.dump({"w": torchfiles.Tensor(torchfiles.Storage("0", np.arange(6.0)), 0, (6,), (1,))})
  path = tmp_path / "liar.pth"
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("archive/data.pkl", data)
    zf.writestr("archive/data/0", np.arange(6.0, dtype=np.float32).tobytes() + b"\0" * _BOMB)
  with zipfile.ZipFile(path) as zf:
    local = zf.getinfo("archive/data/0").header_offset
  raw = bytearray(path.read_bytes())
  central = raw.index(b"PK\x01\x02")  # the central directory's entries, in member order: the second one
  central = raw.index(b"PK\x01\x02", central + 1)
  assert raw[central + 46 : central + 60] == b"archive/data/0"
  for at in (local + 22, central + 24):  # the uncompressed size, in the local and the central header
    raw[at : at + 4] = struct.pack("<I", 24)
  path.write_bytes(bytes(raw))
  peak, error = _peak_traced(lambda: io.load_state_dict(path))
  assert peak < 8 * 2**20, peak
  assert error is None or isinstance(error, io.CheckpointError), error


@pytest.mark.fast
def test_npz_files_have_a_budget_checked_before_inflating(tmp_path):
  path = tmp_path / "bomb.npz"
  np.savez_compressed(path, w=np.zeros(_BOMB // 4, np.float32))
  peak, error = _peak_traced(lambda: io.load_state_dict(path))
  assert peak < 8 * 2**20, peak
  assert isinstance(error, io.CheckpointError) and "past" in str(error) and "bomb.npz" in str(error), error
  assert io.load_state_dict(path, max_bytes=2**28)["w"].shape == (_BOMB // 4,)
  # a .npy header claiming more elements than the member holds, and pickled objects: refused by name
  buf = BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("w.npy", buf.getvalue() + np.arange(4.0).tobytes())
  with pytest.raises(io.CheckpointError, match=r"w\.npy.*10\*\*12|w\.npy.*1000000000000"):
    io.load_state_dict(path)
  np.savez(path, w=np.array([{"a": 1}], dtype=object))
  with pytest.raises(io.CheckpointError, match="object"):
    io.load_state_dict(path)


@pytest.mark.fast
def test_safetensors_entries_sharing_bytes_are_charged_each(tmp_path):
  """Many header entries over the same 256 KiB: each would be a copy, 25 MiB from a 0.3 MiB file."""
  n = 2**18
  header = {f"w{i}": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]} for i in range(100)}
  path = tmp_path / "shared.safetensors"
  path.write_bytes(_safetensors(header, b"\1" * n))
  with pytest.raises(io.CheckpointError, match=r"past \d+ bytes"):
    io.load_state_dict(path)
  assert len(io.load_state_dict(path, max_bytes=2**28)) == 100


@pytest.mark.fast
@pytest.mark.parametrize("kind", ["legacy", "zip"])
def test_pickle_declared_sizes_are_checked_before_allocating(tmp_path, kind):
  """A BINBYTES8 opcode declaring 8 GiB in a file of a few hundred bytes: refused before any allocation."""
  bomb = b"\x80\x04\x8e" + struct.pack("<Q", 2**33) + b"abc"
  path = tmp_path / "w.pth"
  if kind == "legacy":
    with open(path, "wb") as f:
      for obj in (io._LEGACY_MAGIC, io._LEGACY_PROTOCOL, {}):
        pickle.dump(obj, f, protocol=2)
      f.write(bomb)
  else:
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", bomb)
  peak, error = _peak_traced(lambda: io.load_state_dict(path))
  assert peak < 8 * 2**20, peak
  assert isinstance(error, io.CheckpointError) and "8589934592 bytes" in str(error), error


@pytest.mark.fast
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".npz"])
def test_fifos_devices_and_links_to_them_are_refused_before_opening(tmp_path, suffix):
  path = tmp_path / f"w{suffix}"
  with fifo(path) as state:
    for target in (path, tmp_path / f"link{suffix}"):
      if target != path:
        os.symlink(path, target)
      with pytest.raises(io.CheckpointError, match=r"is a FIFO \(named pipe\).*regular file"):
        io.load_state_dict(target)
    with pytest.raises(io.CheckpointError, match="FIFO"):
      (io.load_safetensors if suffix == ".safetensors" else io.load_torch)(path)
  assert not state["released"]  # refused without opening: no reader ever blocked
  device = tmp_path / f"dev{suffix}"
  os.symlink(os.devnull, device)
  with pytest.raises(io.CheckpointError, match="is a character device"):
    io.load_state_dict(device)
  (tmp_path / f"dir{suffix}").mkdir()
  with pytest.raises(io.CheckpointError, match="is a directory"):
    io.load_state_dict(tmp_path / f"dir{suffix}")


# -------------------------------------------------------------- found by tests/test_fuzz.py (issue 26, item 6)


def _legacy_with(path, obj_pickle: bytes, keys: list, storages: bytes = b"") -> None:
  with open(path, "wb") as f:
    for header in (io._LEGACY_MAGIC, io._LEGACY_PROTOCOL, {"protocol_version": 1001}):
      pickle.dump(header, f, protocol=2)
    f.write(obj_pickle + pickle.dumps(keys, protocol=2) + storages)


@pytest.mark.fast
def test_errors_met_inside_a_tensor_or_a_global_name_the_file(tmp_path):
  """The fuzzer's finds: a refused global, a storage type torch does not have, a stride of another rank, a tensor
  past its storage and a storage the legacy file never wrote were reported without the file's name."""
  store = lambda type_name="FloatStorage": torchfiles.Storage("0", np.arange(6.0), type_name)
  cases = {
    "evil.pth": (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.", io.UnsafeCheckpointError, "os.system"),
    "bogus.pth": (torchfiles.dump({"w": torchfiles.Tensor(store("BogusStorage"), 0, (2,), (1,))})[0], None, "Bogus"),
    "rank.pth": (torchfiles.dump({"w": torchfiles.Tensor(store(), 0, (2, 3), (3,))})[0], None, "geometry"),
    "past.pth": (torchfiles.dump({"w": torchfiles.Tensor(store(), 0, (10, 10), (10, 1))})[0], None, "reads element"),
  }
  for name, (pkl, error, words) in cases.items():
    with zipfile.ZipFile(tmp_path / name, "w") as zf:
      zf.writestr("archive/data.pkl", pkl)
      zf.writestr("archive/data/0", np.arange(6, dtype=np.float32).tobytes())
    with pytest.raises(error or (io.CheckpointError, io.UnsafeCheckpointError), match=words) as caught:
      io.load_state_dict(tmp_path / name)
    assert str(caught.value).startswith(str(tmp_path / name)), caught.value
  data, _ = torchfiles.dump({"w": torchfiles.Tensor(store(), 0, (2,), (1,))})
  _legacy_with(tmp_path / "nodata.pth", data, keys=[])  # the storage's bytes never written
  with pytest.raises(io.CheckpointError, match=r"nodata\.pth: corrupt checkpoint: storage '0' has no data"):
    io.load_state_dict(tmp_path / "nodata.pth")
  _legacy_with(tmp_path / "evil_legacy.pth", cases["evil.pth"][0], keys=[])
  with pytest.raises(io.UnsafeCheckpointError, match=r"evil_legacy\.pth: Refusing to load global os\.system"):
    io.load_torch(tmp_path / "evil_legacy.pth")


def _image_bytes(fmt: str, mode: str = "RGB", cut: float | None = None) -> bytes:
  from PIL import Image

  im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), np.uint8)).convert(mode)
  buf = BytesIO()
  im.save(buf, fmt)
  raw = buf.getvalue()
  return raw if cut is None else raw[: int(cut * len(raw))]


@pytest.mark.fast
def test_a_broken_image_is_one_error_naming_the_file(tmp_path):
  """The fuzzer's finds: PIL raised ValueError('Reached EOF while reading header') for a cut PPM, OSError('could not
  create decoder object') for a cut WEBP, OSError('broken data stream ...') / ('image file is truncated') for cut
  PNGs and JPEGs, and to_uint8_rgb a ValueError for a TIFF of negative 32-bit values, none naming the file.
  Now each is `io.ImageDecodeError` (an OSError and a ValueError: callers catching either still do) naming the file
  and PIL's reason."""
  from PIL import Image

  from jaxcam import stream

  files = {
    "cut.ppm": _image_bytes("PPM", cut=0.1),
    "cut.webp": _image_bytes("WEBP", cut=0.5),
    "cut.png": _image_bytes("PNG", cut=0.6),
    "cut.jpg": _image_bytes("JPEG", cut=0.5),
    "noise.gif": b"GIF89a" + bytes(range(40)),
  }
  for name, raw in files.items():
    (tmp_path / name).write_bytes(raw)
  Image.fromarray(np.full((4, 4), -5, np.int32), "I").save(tmp_path / "negative.tif")
  for name in [*files, "negative.tif"]:
    with pytest.raises(io.ImageDecodeError, match=rf"Cannot decode '.*{re.escape(name)}' as an image \(\w+: ") as e:
      stream.decode_image(str(tmp_path / name))
    assert isinstance(e.value, OSError) and isinstance(e.value, ValueError) and "\n" not in str(e.value)
  (tmp_path / "ok.png").write_bytes(_image_bytes("PNG", mode="LA"))  # a valid file still decodes
  assert stream.decode_image(tmp_path / "ok.png").shape == (12, 16, 3)


@pytest.mark.fast
def test_a_header_past_pils_own_limit_is_jaxcams_budget_error(tmp_path):
  """A PNG header of 2**31 - 1 x 1 pixels trips PIL's DecompressionBombError inside Image.open, before jaxcam's own
  check: it is reported as jaxcam's budget (found by scripts/audit.py's png_header_2_to_the_31_wide)."""
  import zlib

  from jaxcam import stream

  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 2**31 - 1, 1, 8, 2, 0, 0, 0))
  (tmp_path / "wide.png").write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b""))
  with pytest.raises(io.ImageDecodeError, match=r"wide\.png': its header declares 2147483647 pixels.*MAX_IMAGE_PIXELS"):
    stream.decode_image(str(tmp_path / "wide.png"))
