"""Safe weight loading: real torch files in both formats, safetensors, npz; malicious and broken files."""

from __future__ import annotations

import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import pytest

from jaxcam import io, writers
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURES, "checkpoints.npz")) as d:
    return {k: d[k] for k in d.files if not k.startswith("__")}


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


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch PWNED_BY_PICKLE",))


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


@pytest.mark.parametrize("name", ["tiny_legacy.pth", "tiny_zip.pth", "tiny.safetensors"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_give_a_clear_error(tmp_path, name, keep):
  raw = open(os.path.join(FIXTURES, name), "rb").read()
  path = tmp_path / name
  path.write_bytes(raw[: int(len(raw) * keep)])
  with pytest.raises(io.CheckpointError, match="truncated|corrupt|not a torch checkpoint"):
    io.load_state_dict(path)


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


def test_save_npz_is_deterministic_and_loadable(tmp_path):
  arrays = {"b": np.arange(6.0).reshape(2, 3), "a": np.ones(3, np.float16)}
  p1 = writers.save_npz(tmp_path / "one.npz", arrays)
  import time

  time.sleep(2.1)  # zip timestamps have 2-second resolution: numpy.savez would differ now
  p2 = writers.save_npz(tmp_path / "two.npz", arrays)
  assert open(p1, "rb").read() == open(p2, "rb").read()
  back = io.load_state_dict(p1)
  np.testing.assert_array_equal(back["b"], arrays["b"])
  np.testing.assert_array_equal(back["a"], arrays["a"])
  assert back["a"].dtype == np.float16
