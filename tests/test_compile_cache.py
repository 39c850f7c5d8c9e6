"""`jaxcam.compile_cache`: a second fresh process compiles nothing the first compiled; off means off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import pytest

from jaxcam import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe(env_dir: str | None, tmp_path) -> dict:
  """The probe's JSON from a fresh process with ``JAXCAM_CACHE_DIR=env_dir`` (None: unset) and the user's cache
  home under `tmp_path`."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAXCAM_CACHE_DIR", "JAXCAM_TEST_CACHE")}
  env["PYTHONPATH"] = ROOT
  env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # never the user's own cache
  if env_dir is not None:
    env["JAXCAM_CACHE_DIR"] = env_dir
  out = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tests", "helpers", "cache_probe.py")],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=True,
  )
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_second_fresh_process_compiles_nothing_again(tmp_path):
  where = str(tmp_path / "cache")
  first, second = _probe(where, tmp_path), _probe(where, tmp_path)
  assert first["path"] == where
  assert first["misses"] > 0  # the first process compiled and stored its programs
  assert second["requests"] == first["requests"]
  assert second["misses"] == 0
  assert second["hits"] == first["requests"]
  default = _probe(None, tmp_path)  # no setting: the user's cache folder
  assert default["path"] == os.path.join(str(tmp_path / "xdg"), "jaxcam", "xla")
  off = _probe("off", tmp_path / "off")
  assert off["path"] is None
  assert off["hits"] == 0  # nothing read, nothing written, and no cache folder made
  assert off["misses"] == 0
  assert not (tmp_path / "off" / "xdg").exists()


@pytest.mark.fast
def test_off_leaves_jax_alone_and_an_unwritable_folder_warns(monkeypatch, tmp_path):
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("JAXCAM_CACHE_DIR", "OFF")
  assert compile_cache.enable() is None
  assert jax.config.jax_compilation_cache_dir == before
  if before:  # a cache set by the user (here: the test suite's) wins over JAXCAM_CACHE_DIR
    monkeypatch.setenv("JAXCAM_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compile_cache.enable() == before
    assert not (tmp_path / "elsewhere").exists()
  else:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("JAXCAM_CACHE_DIR", str(blocker / "xla"))
    with pytest.warns(UserWarning, match="JAXCAM_CACHE_DIR"):
      assert compile_cache.enable() is None
    assert jax.config.jax_compilation_cache_dir == before
