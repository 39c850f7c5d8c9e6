"""Streaming `jaxcam explain --shard-size`: shards, manifest, skipped images, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxcam import cli, stream
from tests.helpers.cli import image_files, run_cli
from tests.helpers.fifo import fifo

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


def _images(d, n, seed=0):
  rng = np.random.default_rng(seed)
  d.mkdir(exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(d / f"img{i:03d}.png")
  (d / "broken.png").write_bytes(b"not an image")
  return d


def _tree(out):
  files = {}
  for base, _, names in os.walk(out):
    for n in names:
      p = os.path.join(base, n)
      files[os.path.relpath(p, out)] = open(p, "rb").read()
  return files


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.fast
def test_resume_verifies_the_run(convnet_b2, tmp_path):
  files = image_files(tmp_path / "in", 3)
  out = tmp_path / "out"
  first = run_cli(convnet_b2, files, out)
  assert first["fingerprint"] == json.loads((out / "run.json").read_text())["sha256"]
  assert run_cli(convnet_b2, files, out)["entries"] == first["entries"]  # identical run: resumed
  with pytest.raises(stream.RunMismatchError, match=r"different run \(changed: method \('gradcam' -> 'layercam'\)"):
    run_cli(convnet_b2, files, out, method="layercam")
  extra = tmp_path / "in" / "img9.png"
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(extra)
  with pytest.raises(stream.RunMismatchError, match=r"inputs \(1 added, 0 removed, 0 changed\).*--overwrite"):
    run_cli(convnet_b2, files + [str(extra)], out)
  with pytest.raises(stream.RunMismatchError, match=r"options"):
    run_cli(convnet_b2, files, out, options={"eps": 1e-3}, method="gradcam")
  replaced = run_cli(convnet_b2, files, out, method="layercam", overwrite=True)
  assert replaced["method"] == "layercam" and len(replaced["entries"]) == 3
  # shards without run.json (not ours, or an older run): refused, never reused
  os.remove(out / "run.json")
  with pytest.raises(stream.RunMismatchError, match="without a run.json"):
    run_cli(convnet_b2, files, out, method="layercam")


def test_stream_outputs_and_skipped_images(tmp_path):
  d = _images(tmp_path / "imgs", 9)
  out = tmp_path / "out"
  args = ["explain", str(d), "--out", str(out), "--shard-size", "4", "--batch-size", "2", "--float16"]
  assert cli.main(args) == cli.EXIT_PARTIAL  # broken.png skipped: results kept, status 1
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["skipped"] == ["broken.png"] and "Error" in manifest["entries"]["broken.png"]["skipped"]
  assert manifest["shards"] == 3 and manifest["method"] == "gradcam" and manifest["layer"] == "head"
  assert manifest["model"] == "efficientnet_lite0" and "jax" in manifest and "jaxcam" in manifest
  total = 0
  for k in range(3):
    with np.load(out / "shards" / f"maps-{k:05d}.npz") as maps:
      for key in maps.files:
        assert maps[key].dtype == np.float16 and maps[key].shape == (224, 224)
      total += len(maps.files)
  assert total == 9
  e = manifest["entries"]["img004.png"]
  assert e["shard"] == 1 and len(e["top5"]) == 5 and e["target"]["id"] == e["top5"][0]["id"]
  assert cli.main(["explain", str(d), "--out", str(out), "--shard-size", "3", "--batch-size", "2"]) == 2


@pytest.mark.slow
def test_killed_run_resumes_to_byte_identical_outputs(tmp_path):
  d = _images(tmp_path / "imgs", 40, seed=1)
  cmd = [sys.executable, "-m", "jaxcam.cli", "explain", str(d), "--shard-size", "2", "--batch-size", "2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  full = tmp_path / "full"
  first = subprocess.run(cmd + ["--out", str(full)], cwd=ROOT, env=env, capture_output=True, timeout=600)
  assert first.returncode == cli.EXIT_PARTIAL, first.stderr[-2000:]  # broken.png skipped

  resumed = tmp_path / "resumed"
  proc = subprocess.Popen(
    cmd + ["--out", str(resumed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  marker = resumed / "shards" / "manifest-00002.json"
  deadline = time.time() + 300
  while not marker.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = sorted(n for n in os.listdir(resumed / "shards") if n.startswith("manifest-"))
  assert 3 <= len(done) < 21 and not (resumed / "manifest.json").exists(), done  # really killed mid-run
  again = subprocess.run(cmd + ["--out", str(resumed)], cwd=ROOT, env=env, capture_output=True, timeout=600)
  assert again.returncode == cli.EXIT_PARTIAL, again.stderr[-2000:]
  assert _tree(resumed) == _tree(full)


@pytest.mark.fast
def test_two_processes_split_shards_and_merge_to_the_single_process_manifest(tmp_path):
  """Multi-host in simulation: process 0 and 1 of 2 each write their shards; merge == one process's output."""
  import jaxcam
  from jaxcam import models, stream

  d = _images(tmp_path / "imgs", 7, seed=2)
  files = sorted(str(p) for p in d.iterdir())
  module, variables = models.efficientnet_lite0(pretrained=True)
  tap = jaxcam.linen_tap(module, variables)
  common = dict(
    method="gradcam",
    tap=tap,
    model="efficientnet_lite0",
    root=str(d),
    shard_size=2,
    batch_size=2,
    input_size=224,
    class_name=models.class_name,
  )
  single = tmp_path / "single"
  stream.explain_files(files, str(single), **common)
  multi = tmp_path / "multi"
  written = []
  for index in (0, 1):
    stream.explain_files(files, str(multi), process_index=index, process_count=2, **common)
    written.append(sorted(os.listdir(multi / "shards")))
  assert written[0] == ["manifest-00000.json", "manifest-00002.json", "maps-00000.npz", "maps-00002.npz"]
  assert not (multi / "manifest.json").exists()
  assert cli.main(["merge-manifests", str(multi)]) == 0
  assert _tree(multi) == _tree(single)


@pytest.mark.slow
def test_two_real_processes_with_jax_distributed_then_killed_and_restarted(tmp_path):
  """Multi-host for real: two processes joined by jax.distributed (a local coordinator) each explain their shards;
  merge-manifests joins them into exactly the single-process output. Then the whole job is killed mid-run (as a
  preempted cluster) and restarted: each process resumes its own shards, and the result is the same again."""
  d = _images(tmp_path / "imgs", 12, seed=3)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  base = [sys.executable, "-m", "jaxcam.cli", "explain", str(d), "--shard-size", "2", "--batch-size", "2"]
  single = tmp_path / "single"
  subprocess.run(base + ["--out", str(single)], cwd=ROOT, env=env, capture_output=True, timeout=600)

  def cluster(out):
    port = _free_port()
    return [
      subprocess.Popen(
        base
        + ["--out", str(out), "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
      )
      for i in (0, 1)
    ]

  multi = tmp_path / "multi"
  procs = cluster(multi)
  errs = [p.communicate(timeout=600)[1].decode()[-2000:] for p in procs]
  # broken.png sorts first: process 0 owns its shard, skips it and reports a partial run; process 1 explains all
  assert [p.returncode for p in procs] == [cli.EXIT_PARTIAL, 0], errs
  shards = sorted(n for n in os.listdir(multi / "shards") if n.startswith("manifest-"))
  assert len(shards) == 7 and not (multi / "manifest.json").exists()  # 13 files in shards of 2; no merge yet
  assert cli.main(["merge-manifests", str(multi)]) == 0
  assert _tree(multi) == _tree(single)

  resumed = tmp_path / "resumed"
  procs = cluster(resumed)
  marker = resumed / "shards" / "manifest-00001.json"  # written by process 1
  deadline = time.time() + 300
  while not marker.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
    time.sleep(0.01)
  for p in procs:
    p.send_signal(signal.SIGKILL)
    p.wait()
  done = sorted(n for n in os.listdir(resumed / "shards") if n.startswith("manifest-"))
  assert 1 <= len(done) < 7, done  # really killed mid-run
  for p in cluster(resumed):
    p.communicate(timeout=600)
  assert cli.main(["merge-manifests", str(resumed)]) == 0
  assert _tree(resumed) == _tree(single)


def _png_header_only(path, width, height):
  """A PNG whose header declares width x height RGB pixels, with almost no pixel data."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


@pytest.mark.fast
def test_decode_image_refuses_what_is_not_a_regular_file_and_oversized_headers(tmp_path):
  with fifo(tmp_path / "pipe.png") as state:
    with pytest.raises(ValueError, match=r"pipe\.png.*is a FIFO \(named pipe\)"):
      stream.decode_image(str(tmp_path / "pipe.png"))
    os.symlink(tmp_path / "pipe.png", tmp_path / "link.jpg")
    with pytest.raises(ValueError, match=r"link\.jpg.*is a FIFO"):
      stream.decode_image(str(tmp_path / "link.jpg"))
  assert not state["released"]  # refused without opening it
  os.symlink(os.devnull, tmp_path / "null.png")
  with pytest.raises(ValueError, match="is a character device"):
    stream.decode_image(str(tmp_path / "null.png"))
  # a header declaring 9000 x 9000 pixels (243 MiB decoded) in 100 bytes: refused before decoding
  _png_header_only(tmp_path / "huge.png", 9000, 9000)
  with pytest.raises(ValueError, match=r"huge\.png.*declares 9000 x 9000 pixels.*MAX_IMAGE_PIXELS"):
    stream.decode_image(str(tmp_path / "huge.png"))
  _png_header_only(tmp_path / "small.png", 3, 2)  # the same file at a small size decodes (as black)
  assert stream.decode_image(str(tmp_path / "small.png")).shape == (2, 3, 3)


@pytest.mark.fast
def test_a_fifo_among_the_inputs_is_skipped_without_hanging(convnet_b2, tmp_path):
  files = image_files(tmp_path / "in", 2)
  with fifo(tmp_path / "in" / "pipe.png") as state:
    found = cli.collect_images([str(tmp_path / "in")])
    assert sorted(os.path.basename(f) for f in found) == ["img0.png", "img1.png", "pipe.png"]
    manifest = run_cli(convnet_b2, sorted(found), tmp_path / "out")
  assert not state["released"]
  assert manifest["skipped"] == ["pipe.png"] and "FIFO" in manifest["entries"]["pipe.png"]["skipped"]
  assert sorted(manifest["entries"]) == ["img0.png", "img1.png", "pipe.png"] and len(files) == 2


@pytest.mark.fast
def test_overwrite_removes_only_what_jaxcam_wrote(convnet_b2, tmp_path):
  files = image_files(tmp_path / "in", 3)
  out = tmp_path / "out"
  mine = {"overlays/holiday.png": b"a photo", "shards/notes.txt": b"notes", "results.csv": b"1,2"}
  for rel, data in mine.items():
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_bytes(data)
  run_cli(convnet_b2, files, out, overlays=True)
  assert (out / "overlays" / "img0.png.png").exists()
  replaced = run_cli(convnet_b2, files, out, method="layercam", overwrite=True, overlays=True)
  assert replaced["method"] == "layercam"
  for rel, data in mine.items():  # the user's files: still there, unchanged
    assert (out / rel).read_bytes() == data, rel
  # a file of the user's where jaxcam would write (a manifest.json of their own): refused, even with --overwrite
  other = tmp_path / "other"
  other.mkdir()
  (other / "manifest.json").write_text('{"mine": true}')
  for overwrite in (False, True):
    with pytest.raises(stream.RunMismatchError, match=r"manifest\.json.*not written by jaxcam"):
      run_cli(convnet_b2, files, other, overwrite=overwrite)
  assert (other / "manifest.json").read_text() == '{"mine": true}'
  # an input that is one of the previous run's outputs is not deleted by --overwrite
  overlay = str(out / "overlays" / "img0.png.png")
  with pytest.raises(ValueError, match=r"img0\.png\.png.*input.*output"):
    run_cli(convnet_b2, [overlay], out, overwrite=True, root=os.path.dirname(overlay))
  assert os.path.exists(overlay)


@pytest.mark.fast
def test_inputs_outside_the_root_cannot_write_outside_the_outputs(convnet_b2, tmp_path):
  a = image_files(tmp_path / "a", 1)
  b = image_files(tmp_path / "b", 1, seed=1)
  with pytest.raises(ValueError, match=r"b/img0\.png.*not inside `root`"):
    run_cli(convnet_b2, a + b, tmp_path / "out", root=str(tmp_path / "a"), overlays=True)
  assert not (tmp_path / "b" / "img0.png.png").exists() and not (tmp_path / "out" / "b").exists()


def _same_size_images(d, n, seed=0):
  """`n` uncompressed PNGs (their size depends only on the pixel count), so content can change at the same size."""
  rng = np.random.default_rng(seed)
  d.mkdir(exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"img{i}.png", compress_level=0)
  return sorted(str(p) for p in d.iterdir())


def test_resume_cannot_lie(convnet_b2, tmp_path):
  """Resume checks content, not only size and mtime; a truncated or altered shard is recomputed; a rerun asked for
  overlays writes them; a damaged run.json is reported as damaged."""
  files = _same_size_images(tmp_path / "in", 4)
  out = tmp_path / "out"
  run_cli(convnet_b2, files, out)
  before = _tree(out)
  maps0, maps1 = (out / "shards" / "maps-00000.npz"), (out / "shards" / "maps-00001.npz")
  maps0.write_bytes(before["shards/maps-00000.npz"][:100])  # truncated
  with np.load(maps1) as m:
    altered = {k: np.zeros_like(v) for k, v in m.items()}
  np.savez(maps1, **altered)  # a valid file with other maps
  run_cli(convnet_b2, files, out)
  assert _tree(out) == before  # both shards recomputed, byte-identical
  # overlays asked for on a finished run: written, and listed
  again = run_cli(convnet_b2, files, out, overlays=True)
  assert all((out / "overlays" / f"img{i}.png.png").is_file() for i in range(4))
  assert again["entries"]["img0.png"]["overlay"] == "overlays/img0.png.png"
  # same size, same mtime, other pixels: the content hash notices
  st = os.stat(files[0])
  Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(files[0], compress_level=0)
  os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.stat(files[0]).st_size == st.st_size
  with pytest.raises(stream.RunMismatchError, match=r"inputs \(0 added, 0 removed, 1 changed\)"):
    run_cli(convnet_b2, files, out)
  # a damaged run.json: one clear line saying so, not "every setting changed"
  run = out / "run.json"
  run.write_bytes(run.read_bytes()[:40])
  with pytest.raises(stream.RunMismatchError, match=r"run\.json.*damaged") as info:
    run_cli(convnet_b2, files, out)
  assert "\n" not in str(info.value) and "changed:" not in str(info.value)
  assert run_cli(convnet_b2, files, out, overwrite=True)["entries"]["img0.png"]["shard"] == 0  # --overwrite replaces
