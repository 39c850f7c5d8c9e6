"""`jaxcam.compile_cache`: a second fresh process neither compiles nor traces what the first did; off means off."""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import compile_cache, providers
from jaxcam.models import convert as convert_lib
from jaxcam.models.resnet import ResNet
from tests import nets
from tests.seeded import seeded_state_dict

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
def test_a_second_fresh_process_compiles_and_traces_nothing_again(tmp_path):
  where = str(tmp_path / "cache")
  first, second = _probe(where, tmp_path), _probe(where, tmp_path)
  assert first["path"] == where
  assert first["misses"] > 0  # the first process compiled and stored its programs
  assert first["programs"].get("stored") == 1  # the shipped ResNet's program; the test ConvNet's is not named
  assert len(os.listdir(os.path.join(where, "programs"))) == 1
  assert second["requests"] == first["requests"]
  assert second["misses"] == 0
  assert second["hits"] == first["requests"]
  assert second["programs"] == {"loaded": 1}  # read back, not traced again
  assert second["resnet_maps"] == first["resnet_maps"]  # the same program: the same numbers
  assert second["convnet_maps"] == first["convnet_maps"]
  default = _probe(None, tmp_path)  # no setting: the user's cache folder
  assert default["path"] == os.path.join(str(tmp_path / "xdg"), "jaxcam")
  off = _probe("off", tmp_path / "off")
  assert off["path"] is None
  assert off["hits"] == 0  # nothing read, nothing written, and no cache folder made
  assert off["misses"] == 0
  assert off["programs"] == {}
  assert not (tmp_path / "off" / "xdg").exists()


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
  """jaxcam's caches on in `tmp_path` for this test only (JAX's own cache settings untouched), with empty in-process
  program tables and counters."""
  root = tmp_path / "jaxcam-cache"
  for sub in ("programs", "shapes"):
    (root / sub).mkdir(parents=True)
  monkeypatch.setattr(compile_cache, "_ROOT", [str(root)])
  monkeypatch.setattr(compile_cache, "_PROGRAMS", {})
  monkeypatch.setattr(compile_cache, "_UNEXPORTABLE", set())
  monkeypatch.setattr(compile_cache, "STATS", collections.Counter())
  return root


@pytest.mark.fast
def test_off_leaves_jax_alone_and_an_unwritable_folder_warns(monkeypatch, tmp_path):
  monkeypatch.setattr(compile_cache, "_ROOT", [])
  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("JAXCAM_CACHE_DIR", "OFF")
  assert compile_cache.enable() is None
  assert compile_cache.root() is None
  assert jax.config.jax_compilation_cache_dir == before
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  monkeypatch.setenv("JAXCAM_CACHE_DIR", str(blocker / "cache"))
  with pytest.warns(UserWarning, match="JAXCAM_CACHE_DIR"):
    assert compile_cache.enable() is None
  assert compile_cache.root() is None
  assert jax.config.jax_compilation_cache_dir == before
  if before:  # a JAX cache folder set by the user (here: the suite's) stays; jaxcam's own parts go to its folder
    monkeypatch.setenv("JAXCAM_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compile_cache.enable() == str(tmp_path / "elsewhere")
    assert jax.config.jax_compilation_cache_dir == before
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["programs", "shapes", "xla"]


@pytest.fixture(scope="module")
def shipped():
  """A small ResNet of jaxcam's own class (so its programs can be named) with random weights, its tap and images."""
  module = ResNet(layers=(1, 1, 1, 1), num_classes=10, input_size=32)
  x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
  variables = jax.jit(module.init)(jax.random.key(0), x[:1])
  return jaxcam.linen_tap(module, variables, "layer3"), x


def _programs(root) -> list[str]:
  return sorted(os.listdir(root / "programs"))


def test_a_program_is_stored_then_loaded_and_matches_tracing_it(shipped, cache_on, monkeypatch):
  tap, x = shipped
  monkeypatch.setattr(compile_cache, "_ROOT", [])
  reference = jaxcam.explain("gradcam", tap, x)  # the caches off: traced and compiled as usual
  assert compile_cache.STATS == {}
  monkeypatch.setattr(compile_cache, "_ROOT", [str(cache_on)])

  first = jaxcam.explain("gradcam", tap, x)
  assert compile_cache.STATS == {"stored": 1}
  assert len(_programs(cache_on)) == 1
  np.testing.assert_allclose(first.maps, reference.maps, rtol=1e-5, atol=1e-6)  # another program, same formula
  np.testing.assert_allclose(first.logits, reference.logits, rtol=1e-5, atol=1e-5)
  assert first.target.tolist() == reference.target.tolist()
  assert (first.method, first.layer, first.feature_sizes) == (
    reference.method,
    reference.layer,
    reference.feature_sizes,
  )

  compile_cache._PROGRAMS.clear()  # as in a fresh process: read from disk
  second = jaxcam.explain("gradcam", tap, x)
  assert compile_cache.STATS == {"stored": 1, "loaded": 1}
  np.testing.assert_array_equal(second.maps, first.maps)  # the same program run twice
  jaxcam.explain("gradcam", tap, x)
  assert compile_cache.STATS["reused"] == 1

  jaxcam.explain("gradcam", tap, x[:1])  # another shape: another program
  jaxcam.explain("gradcam", tap, x, normalize=False)  # another flag: another program
  assert len(_programs(cache_on)) == 3

  out = list(jaxcam.explain_batches("gradcam", tap, [np.asarray(x)]))  # the batch path stores its own
  assert len(_programs(cache_on)) == 4
  np.testing.assert_allclose(out[0].maps, reference.maps, rtol=1e-5, atol=1e-6)


def test_cached_programs_follow_the_layer_the_target_and_explain_many(shipped, cache_on, monkeypatch):
  tap, x = shipped
  other = jaxcam.linen_tap(tap.module, tap.variables, "layer2")
  monkeypatch.setattr(compile_cache, "_ROOT", [])
  expected = {
    "layer2": jaxcam.explain("gradcam", other, x).maps,
    "class 3": jaxcam.explain("gradcam", tap, x, target=3).maps,  # a Python int: a weakly typed leaf
    "many": jaxcam.explain_many(["gradcam", "layercam"], tap, x),
  }
  monkeypatch.setattr(compile_cache, "_ROOT", [str(cache_on)])
  for _ in range(2):  # stored, then (as in a fresh process) read back
    compile_cache._PROGRAMS.clear()
    got = {
      "layer2": jaxcam.explain("gradcam", other, x).maps,
      "class 3": jaxcam.explain("gradcam", tap, x, target=3).maps,
      "many": jaxcam.explain_many(["gradcam", "layercam"], tap, x),
    }
    np.testing.assert_allclose(got["layer2"], expected["layer2"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["class 3"], expected["class 3"], rtol=1e-5, atol=1e-6)
    for name in ("gradcam", "layercam"):
      np.testing.assert_allclose(got["many"][name].maps, expected["many"][name].maps, rtol=1e-5, atol=1e-6)
  assert not np.allclose(expected["layer2"], expected["class 3"])  # the programs differ, and so do their maps
  assert compile_cache.STATS == {"stored": 3, "loaded": 3}
  assert len(_programs(cache_on)) == 3


def test_what_cannot_be_named_is_traced_as_usual(shipped, cache_on, small_linen):
  tap, x = shipped
  module, variables, xs = small_linen
  jaxcam.explain("gradcam", jaxcam.linen_tap(module, variables, "body_1"), xs)  # the user's model
  jaxcam.explain("gradcam", tap, x, progress=True)  # host callbacks
  jax.jit(lambda x: jaxcam.explain("gradcam", tap, x).maps)(x)  # under the user's jit
  jaxcam.explain("gradcam", tap, x, target=lambda logits: logits[:, 0] - logits[:, 1])  # a score function
  row = jaxcam.MethodSpec("my_gradcam_copy", jaxcam.get_method("gradcam").fn, "channel", needs=("grads",))
  jaxcam.explain(row, tap, x)  # a row of the user's
  with jax.default_device(jax.devices()[0]):  # JAX not as it runs by default
    jaxcam.explain("gradcam", tap, x)
  with pytest.MonkeyPatch.context() as mp:  # a built-in provider replaced by the user's: built-in rows use it
    mp.setitem(providers.PROVIDERS, "grads", dataclasses.replace(providers.PROVIDERS["grads"]))
    jaxcam.explain("gradcam", tap, x)
  assert _programs(cache_on) == []
  assert compile_cache.STATS == {}
  assert compile_cache.shipped_module(nets.ConvNet()) is False
  assert compile_cache.shipped_module(tap.module) is True


def test_a_damaged_program_file_is_replaced(shipped, cache_on):
  tap, x = shipped
  first = jaxcam.explain("gradcam", tap, x)
  (name,) = _programs(cache_on)
  (cache_on / "programs" / name).write_bytes(b"not a program")
  compile_cache._PROGRAMS.clear()
  again = jaxcam.explain("gradcam", tap, x)
  assert compile_cache.STATS == {"stored": 2, "failed": 1}
  np.testing.assert_allclose(again.maps, first.maps, rtol=1e-5, atol=1e-6)
  assert (cache_on / "programs" / name).read_bytes() != b"not a program"


def test_another_jaxcam_source_names_other_programs(shipped, cache_on, monkeypatch):
  tap, x = shipped
  jaxcam.explain("gradcam", tap, x)
  monkeypatch.setattr(compile_cache, "_DIGEST", ["a jaxcam with other code"])
  compile_cache._PROGRAMS.clear()
  jaxcam.explain("gradcam", tap, x)
  assert compile_cache.STATS == {"stored": 2}
  assert len(_programs(cache_on)) == 2


@pytest.mark.fast
def test_converting_weights_reads_the_variable_shapes_from_the_cache(cache_on, monkeypatch):
  module = ResNet(layers=(1, 1, 1, 1), num_classes=10)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  state = seeded_state_dict(_torch_keys(shapes), seed=3)
  first = jaxcam.models.convert_resnet(state, module)
  assert len(os.listdir(cache_on / "shapes")) == 1

  def no_tracing(*args, **kwargs):
    raise AssertionError("traced the model although its shapes are cached")

  monkeypatch.setattr(convert_lib.jax, "eval_shape", no_tracing)
  second = jaxcam.models.convert_resnet(state, module)
  flat1, flat2 = jax.tree_util.tree_leaves_with_path(first), jax.tree_util.tree_leaves_with_path(second)
  assert [p for p, _ in flat1] == [p for p, _ in flat2]
  for (_, a), (_, b) in zip(flat1, flat2):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.map(lambda v: v.shape, first) == jax.tree.map(lambda s: s.shape, shapes)
  with pytest.raises(AssertionError, match="traced the model"):  # another configuration: its own entry
    jaxcam.models.convert_resnet(state, ResNet(layers=(1, 1, 1, 1), num_classes=11))


_TORCH_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
                ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}  # fmt: skip


def _torch_keys(shapes) -> list[tuple[str, tuple[int, ...]]]:
  """torchvision-style names and torch-layout shapes of a ResNet's variables (the inverse of convert_resnet's
  mapping, written out here: conv (kh, kw, I, O) -> (O, I, kh, kw), Dense (in, out) -> (out, in))."""
  out = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
    names = [p.key for p in path]
    shape = tuple(leaf.shape)
    if len(shape) == 4:
      shape = (shape[3], shape[2], shape[0], shape[1])
    elif len(shape) == 2:
      shape = shape[::-1]
    out.append((".".join(names[1:-1] + [_TORCH_NAMES[names[0], names[-1]]]), shape))
  return out


def test_a_shipped_module_in_explain_model_uses_its_default_layer_and_cached_output_shape(shipped, cache_on):
  from jaxcam.adapters import as_model

  tap, x = shipped
  m = as_model((tap.module, tap.variables))
  assert m.default_layer == "layer4" and "default layer" in m.default_reason
  struct, traced = m.output_struct(x), jax.eval_shape(m.forward, x)
  assert (struct.shape, struct.dtype) == (traced.shape, traced.dtype) == ((2, 10), jnp.float32)
  assert len(os.listdir(cache_on / "shapes")) == 1
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(jax, "eval_shape", lambda *a, **k: pytest.fail("traced the forward pass although it is cached"))
    assert m.output_struct(x).shape == (2, 10)  # read back
  called = as_model((tap.module, tap.variables), model_method=lambda module, x: module(x))
  assert called.default_layer is None and called.output_struct is None  # another call: found as for any model
