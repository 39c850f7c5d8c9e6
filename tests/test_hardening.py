"""Bad input, by class: every public option validated, inputs never silently misread, degenerate results named,
errors from deep inside Flax translated, runs never silently mixed (the hostile-file loader tests are in test_io)."""

from __future__ import annotations

import functools
import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxcam
from jaxcam import cli, models, stream, targets


@pytest.fixture(scope="module")
def small(small_linen):
  module, variables, x = small_linen
  return module, variables, jaxcam.linen_tap(module, variables, "body_2"), x


# ------------------------------------------------------------------------------------ options, one layer


@pytest.mark.parametrize(
  "kwargs,error,message",
  [
    ({"relu": None}, TypeError, "`relu` to be True or False, got None"),
    ({"normalize": "no"}, TypeError, "`normalize` to be True or False, got 'no'"),
    ({"upsample": "false"}, TypeError, "`upsample` to be True or False, got 'false'"),
    ({"upsample": 1}, TypeError, "`upsample` to be True or False, got 1"),
    ({"fusion": "avg"}, ValueError, "`fusion` to be one of ('mean', 'max'), got 'avg'"),
    ({"progress": "yes"}, TypeError, "`progress` to be None (automatic), True or False"),
    ({"eps": -1}, ValueError, "`eps` to be a finite number > 0, got -1"),
    ({"eps": float("nan")}, ValueError, "`eps` to be a finite number > 0, got nan"),
    ({"eps": "abc"}, TypeError, "`eps` to be a number, got 'abc'"),
    ({"epss": 1e-3}, TypeError, "unexpected option(s) ['epss']"),
  ],
)
def test_every_option_is_validated_and_named(small, kwargs, error, message):
  _, _, tap, x = small
  with pytest.raises(error, match=re_escape(message)):
    jaxcam.gradcam_pp(tap, x, **kwargs)


def re_escape(text: str) -> str:
  import re

  return re.escape(text)


@pytest.mark.parametrize(
  "method,kwargs,message",
  [
    ("scorecam", {"chunk_size": 0}, "`chunk_size` to be a positive int, got 0"),
    ("scorecam", {"chunk_size": 2.0}, "`chunk_size` to be a positive int, got 2.0"),
    ("scorecam", {"top_n": True}, "`top_n` to be a positive int or None, got True"),
    ("iscam", {"num_samples": 0}, "`num_samples` to be a positive int, got 0"),
    ("sscam", {"std": -0.5, "key": jax.random.key(0)}, "`std` to be a finite number >= 0, got -0.5"),
  ],
)
def test_counts_are_positive_ints_never_clamped(small, method, kwargs, message):
  _, _, tap, x = small
  with pytest.raises((ValueError, TypeError), match=re_escape(message)):
    jaxcam.explain(method, tap, x, **kwargs)


def test_jit_without_partial_explains_the_rule(small):
  _, _, tap, x = small
  with pytest.raises(TypeError, match="`normalize` is a Python option, but it arrived traced.*functools.partial"):
    jax.jit(jaxcam.gradcam)(tap, x, normalize=False)
  with pytest.raises(TypeError, match="`chunk_size` is a Python option, but it arrived traced"):
    jax.jit(jaxcam.scorecam)(tap, x, chunk_size=4)
  f = jax.jit(functools.partial(jaxcam.gradcam, normalize=False))  # the documented way works
  assert f(tap, x).shape == x.shape[:3]


def test_batches_and_builders_validate_too(small):
  _, _, tap, x = small
  xs = np.asarray(x)
  with pytest.raises(ValueError, match="`batch_size` to be a positive int or None, got 0"):
    list(jaxcam.explain_batches("gradcam", tap, [xs], batch_size=0))
  with pytest.raises(ValueError, match="`prefetch` to be a positive int, got 0"):
    list(jaxcam.explain_batches("gradcam", tap, [xs], prefetch=0))
  with pytest.raises(TypeError, match="`relu` to be True or False"):
    list(jaxcam.explain_batches("gradcam", tap, [xs], relu="yes"))
  with pytest.raises(TypeError, match="`pretrained` to be True or False, got 'no'"):
    models.efficientnet_lite0(pretrained="no")
  with pytest.raises(TypeError, match="`pretrained` to be True or False"):
    models.resnet18(pretrained=0)


# ------------------------------------------------------------------------------------ out-of-range ids


def test_out_of_range_ids_raise_in_every_eager_entry_point(small):
  _, _, tap, x = small
  bad = jnp.array([1, 2, 50])
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*got \[50\]"):
    jaxcam.gradcam(tap, x, target=bad)
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*got \[50\]"):
    list(jaxcam.explain_batches("gradcam", tap, [(np.asarray(x), np.asarray(bad))]))
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*got \[-1\]"):
    jaxcam.derivatives.diagonals(tap, x, jnp.array([0, -1, 0]))
  # under the user's jit the ids are not known: those maps are NaN (documented), the others are not
  maps = jax.jit(jaxcam.gradcam)(tap, x, target=bad)
  assert np.isnan(maps[2]).all() and np.isfinite(maps[:2]).all()


def test_class_names_as_targets_and_int_scores_refused(small):
  _, _, tap, x = small
  assert int(targets.as_target("Egyptian cat").classes) == 285
  np.testing.assert_array_equal(targets.as_target(["tabby", "Egyptian cat"]).classes, [281, 285])
  with pytest.raises(KeyError, match="Closest: 'Egyptian cat'"):
    targets.as_target("egyptian kat")
  with pytest.raises(TypeError, match="return float scores, got int32 .*argmax"):
    jaxcam.gradcam(tap, x, target=lambda out: jnp.argmax(out, -1))


# ------------------------------------------------------------------------------------ inputs


def test_pixel_rule_by_bit_depth_and_float_range():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
  np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(np.uint16) * 257), img)  # 16-bit: scaled
  np.testing.assert_array_equal(models.to_uint8_rgb(img / 255.0), img)  # [0, 1]
  np.testing.assert_array_equal(
    models.to_uint8_rgb(np.minimum(img / 255.0 * 1.03, 1.03)), np.minimum(np.round(img * 1.03), 255)
  )
  np.testing.assert_array_equal(models.to_uint8_rgb(img[..., :1]), np.repeat(img[..., :1], 3, -1))  # (H, W, 1)
  with pytest.warns(UserWarning, match=r"read as 0-255"):
    np.testing.assert_array_equal(models.to_uint8_rgb(img.astype(np.float32)), img)
  with pytest.raises(ValueError, match=r"Ambiguous float pixel range .*\(image 3\)"):
    models.to_uint8_rgb(img / 255.0 * 1.5, index=3)
  with pytest.raises(ValueError, match=r"looks normalized already"):
    models.to_uint8_rgb(img / 255.0 - 0.5)
  with pytest.raises(ValueError, match=r"finite pixel values, got NaN or Inf \(image 1\)"):
    models.preprocess([img, np.full((4, 4, 3), np.nan)], 8)
  with pytest.raises(ValueError, match="at least one image"):
    models.preprocess([], 8)
  with pytest.raises(ValueError, match=r"shape \(H, W, 3\).*got \(4, 4, 5\)"):
    models.preprocess(np.zeros((4, 4, 5), np.uint8), 8)
  # jax arrays are accepted like numpy arrays
  np.testing.assert_array_equal(models.preprocess(jnp.asarray(img)[None], 8), models.preprocess(img[None], 8))


def test_16_bit_png_decodes_by_depth(tmp_path):
  gray = np.linspace(0, 255, 40 * 30).reshape(30, 40).astype(np.uint8)
  Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "g16.png")
  assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # a real 16-bit file
  decoded = stream.decode_image(str(tmp_path / "g16.png"))
  assert decoded.dtype == np.uint8 and decoded.shape == (30, 40, 3)
  np.testing.assert_array_equal(decoded[..., 0], gray)  # not clipped to white


def test_nan_images_are_refused_by_index(small):
  _, _, tap, x = small
  with pytest.raises(ValueError, match=r"NaN or Inf in image\(s\) \[1\]"):
    jaxcam.gradcam(tap, x.at[1, 0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match=r"NaN or Inf in image\(s\) \[0, 2\]"):
    jaxcam.explain_many(["gradcam"], tap, x.at[0].set(jnp.inf).at[2, 3].set(jnp.nan))


def test_0_255_floats_into_a_model_that_takes_0_1_warn(small):
  from tests import models as test_models

  class Shipped(test_models.ConvNet):  # declares its input mean, as jaxcam's shipped models do: it takes [0, 1]
    input_mean = (0.5, 0.5, 0.5)

  module, variables, _, x = small
  tap = jaxcam.linen_tap(Shipped(), variables, "body_2")
  img = jax.nn.sigmoid(x)
  with pytest.warns(UserWarning, match=r"pixel values up to 2\d\d.*takes images in \[0, 1\].*divide by 255"):
    jaxcam.gradcam(tap, img * 255)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jaxcam.gradcam(tap, img)
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "body_2"), img * 255)  # a user's model: any range


# ------------------------------------------------------------------------------------ degenerate results


def test_a_one_by_one_layer_warns(small):
  _, _, tap, x = small
  with pytest.warns(UserWarning, match=r"feature map of size \(1, 1\).*constant"):
    jaxcam.gradcam(tap, x[:, :2, :2])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jaxcam.gradcam(tap, x)  # a 6x6 layer: no warning


# ------------------------------------------------------------------------------------ deep errors


def test_flax_parameter_errors_are_translated(small):
  module, variables, tap, x = small
  for channels in (1, 4):
    xc = jnp.concatenate([x] * 2, axis=-1)[..., :channels]
    with pytest.raises(ValueError, match=rf"do not fit `x` of shape \(3, 12, 12, {channels}\).*RGB: 3"):
      jaxcam.gradcam(tap, xc)
  other = {"params": {k: v for k, v in variables["params"].items() if k != "body_0"}}  # another model's tree
  with pytest.raises(ValueError, match="variables do not belong to its module"):
    jaxcam.gradcam(jaxcam.linen_tap(module, other, "body_2"), x)


# ------------------------------------------------------------------------------------ runs are never mixed


def _files(d, n, seed=0):
  rng = np.random.default_rng(seed)
  d.mkdir(exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"img{i}.png")
  return sorted(str(p) for p in d.iterdir())


def _run(small, files, out, **kw):
  _, _, tap, _ = small
  common = dict(tap=tap, model="convnet", root=os.path.dirname(files[0]), shard_size=2, batch_size=2, input_size=12)
  return stream.explain_files(files, str(out), **{"method": "gradcam", **common, **kw})


def test_resume_verifies_the_run(small, tmp_path):
  files = _files(tmp_path / "in", 3)
  out = tmp_path / "out"
  first = _run(small, files, out)
  assert first["fingerprint"] == json.loads((out / "run.json").read_text())["sha256"]
  assert _run(small, files, out)["entries"] == first["entries"]  # identical run: resumed
  with pytest.raises(stream.RunMismatchError, match=r"different run \(changed: method \('gradcam' -> 'layercam'\)"):
    _run(small, files, out, method="layercam")
  extra = tmp_path / "in" / "img9.png"
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(extra)
  with pytest.raises(stream.RunMismatchError, match=r"inputs \(1 added, 0 removed, 0 changed\).*--overwrite"):
    _run(small, files + [str(extra)], out)
  with pytest.raises(stream.RunMismatchError, match=r"options"):
    _run(small, files, out, options={"eps": 1e-3}, method="gradcam")
  replaced = _run(small, files, out, method="layercam", overwrite=True)
  assert replaced["method"] == "layercam" and len(replaced["entries"]) == 3
  # shards without run.json (not ours, or an older run): refused, never reused
  os.remove(out / "run.json")
  with pytest.raises(stream.RunMismatchError, match="without a run.json"):
    _run(small, files, out, method="layercam")


def test_merge_refuses_truncated_and_foreign_manifests(small, tmp_path, capsys):
  files = _files(tmp_path / "in", 4)
  out = tmp_path / "out"
  _run(small, files, out)
  shard = out / "shards" / "manifest-00001.json"
  good = shard.read_text()
  shard.write_text(good[: len(good) // 2])
  assert cli.main(["merge-manifests", str(out)]) == 2
  err = capsys.readouterr().err
  assert "jaxcam: error: Cannot read shard manifest" in err and "Traceback" not in err
  shard.write_text(good.replace(json.loads(good)["fingerprint"], "0" * 64))
  assert cli.main(["merge-manifests", str(out)]) == 2
  assert "belongs to a different run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ CLI user errors


@pytest.mark.parametrize(
  "case,message",
  [
    ("out_is_a_file", "exists and is not a folder"),
    ("missing_weights", "cannot load --weights"),
    ("garbage_weights", "cannot load --weights"),
    ("evil_weights", "cannot load --weights"),
    ("weights_for_packaged", "loads its packaged ImageNet weights"),
    ("negative_shard_size", "--shard-size must be positive"),
    ("bad_option", "--option expects NAME=VALUE"),
  ],
)
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, capsys, case, message):
  img = tmp_path / "a.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
  args = ["explain", str(img), "--out", str(tmp_path / "out")]
  weights = tmp_path / "w.pth"
  if case == "out_is_a_file":
    (tmp_path / "file").write_text("x")
    args[-1] = str(tmp_path / "file")
  elif case == "missing_weights":
    args += ["--model", "resnet18", "--weights", str(tmp_path / "nope.pth")]
  elif case == "garbage_weights":
    weights.write_bytes(b"\x80\x02garbage")
    args += ["--model", "resnet18", "--weights", str(weights)]
  elif case == "evil_weights":
    weights.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.")
    args += ["--model", "resnet18", "--weights", str(weights)]
  elif case == "weights_for_packaged":
    args += ["--weights", str(weights)]
  elif case == "negative_shard_size":
    args += ["--shard-size", "-2"]
  elif case == "bad_option":
    args += ["--option", "eps"]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxcam: error: ") and message in err and "Traceback" not in err
  assert err.count("\n") == 1, err
