"""The jaxcam command end to end (in process) and the viz helpers."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcam import cli, models
from tests.helpers.cli import image_files, run_cli
from tests.helpers.fifo import fifo


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("imgs")
  photos = models.sample_images(["chelsea", "coffee", "motorcycle"])
  for name, arr in photos.items():
    Image.fromarray(arr).save(d / f"{name}.png")
  return d, photos


def _tree(out):
  return {
    os.path.relpath(os.path.join(b, n), out): open(os.path.join(b, n), "rb").read()
    for b, _, names in os.walk(out)
    for n in names
  }


def test_explain_end_to_end(image_dir, tmp_path, capsys):
  """The default mode is a one-shard streaming run: manifest.json, shards/, overlays/ (one output format)."""
  d, photos = image_dir
  out = tmp_path / "out"
  rc = cli.main(["explain", str(d), "--method", "gradcam++", "--out", str(out), "--batch-size", "2"])
  assert rc == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert set(manifest["entries"]) == {"chelsea.png", "coffee.png", "motorcycle.png"} and manifest["shards"] == 1
  assert manifest["method"] == "gradcam_pp" and manifest["layer"] == "head" and manifest["skipped"] == []
  cat = manifest["entries"]["chelsea.png"]
  assert cat["target"] == {"id": 285, "name": "Egyptian cat"}
  assert cat["top5"][0]["id"] == 285 and len(cat["top5"]) == 5 and cat["size"] == [300, 451]
  r, c = cat["peak"]
  assert 40 <= r <= 260 and 120 <= c <= 400  # the cat's face in the 300x451 photo
  with np.load(out / "shards" / "maps-00000.npz") as maps:
    assert sorted(maps.files) == sorted(e["index"] for e in manifest["entries"].values())
    for m in maps.values():
      assert m.shape == (224, 224) and 0 <= m.min() and m.max() <= 1
  for name, arr in photos.items():
    entry = manifest["entries"][f"{name}.png"]
    png = np.asarray(Image.open(out / entry["overlay"]))
    assert entry["overlay"] == f"overlays/{name}.png.png" and png.shape == arr.shape and png.dtype == np.uint8
  # rerun: byte-identical outputs
  first = _tree(out)
  assert cli.main(["explain", str(d), "--method", "gradcam++", "--out", str(out), "--batch-size", "2"]) == 0
  assert _tree(out) == first


def test_explain_with_target_name_and_layer(image_dir, tmp_path):
  d, _ = image_dir
  out = tmp_path / "o2"
  rc = cli.main(
    [
      "explain",
      str(d / "coffee.png"),
      "--target",
      "Egyptian cat",
      "--layer",
      "blocks/15",
      "--out",
      str(out),
      "--batch-size",
      "1",
    ]
  )
  assert rc == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["entries"]["coffee.png"]["target"]["id"] == 285 and manifest["layer"] == "blocks/15"


def test_gradient_free_method_from_the_command_line(image_dir, tmp_path):
  d, _ = image_dir
  out = tmp_path / "abl"
  assert (
    cli.main(["explain", str(d / "chelsea.png"), "--method", "ablation-cam", "--out", str(out), "--batch-size", "1"])
    == 0
  )
  manifest = json.loads((out / "manifest.json").read_text())
  cat = manifest["entries"]["chelsea.png"]
  assert manifest["method"] == "ablationcam" and cat["target"]["id"] == 285
  r, c = cat["peak"]
  assert 40 <= r <= 260 and 120 <= c <= 400  # on the cat's face, as Grad-CAM++'s


def test_same_stem_inputs_keep_separate_outputs(tmp_path):
  photo = models.sample_images(["coffee"])["coffee"]
  for sub, ext in (("x", "png"), ("y", "png"), ("x", "jpg")):
    (tmp_path / "in" / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo).save(tmp_path / "in" / sub / f"cup.{ext}")
  out = tmp_path / "out"
  assert cli.main(["explain", str(tmp_path / "in"), "--out", str(out), "--batch-size", "3"]) == 0
  entries = json.loads((out / "manifest.json").read_text())["entries"]
  assert sorted(entries) == ["x/cup.jpg", "x/cup.png", "y/cup.png"]
  assert len({e["overlay"] for e in entries.values()}) == 3 and len({e["index"] for e in entries.values()}) == 3


@pytest.mark.fast
@pytest.mark.parametrize(
  "args,message",
  [
    (["--method", "gradcamm"], "Closest: 'gradcam'"),
    (["--model", "resnet05"], "Closest: 'resnet50'"),
    (["--layer", "blocks/66"], "Closest: 'blocks_6'"),
    (["--target", "egyptian kat"], "Closest: 'Egyptian cat'"),
  ],
)
def test_explain_errors_have_suggestions(image_dir, tmp_path, capsys, args, message):
  d, _ = image_dir
  rc = cli.main(["explain", str(d / "coffee.png"), "--out", str(tmp_path / "x"), "--batch-size", "1"] + args)
  assert rc == 2
  assert message in capsys.readouterr().err


@pytest.mark.fast
@pytest.mark.parametrize(
  "args,message",
  [
    (["--option", "top_n"], "--option expects NAME=VALUE"),
    (["--option", "topn=3"], "unexpected option(s) ['topn']"),
    (["--option", "top_n=5000"], "`top_n` to be None (every channel) or an int in [1, 1280]"),
    (["--option", "chunk_size=0"], "`chunk_size` to be a positive int, got 0"),
  ],
)
def test_method_option_errors(image_dir, tmp_path, capsys, args, message):
  d, _ = image_dir
  out = ["--out", str(tmp_path / "x"), "--batch-size", "1", "--method", "scorecam"]
  assert cli.main(["explain", str(d / "coffee.png")] + out + args) == 2
  assert message in capsys.readouterr().err


@pytest.mark.fast
def test_method_options_are_literals_and_noise_gets_a_seeded_key():
  import jax

  import jaxcam

  opts = cli.method_options(jaxcam.get_method("sscam"), ["num_samples=2", "convention=pgc", "std=0.5"], 7)
  assert opts["num_samples"] == 2 and opts["convention"] == "pgc" and opts["std"] == 0.5
  assert (jax.random.key_data(opts["key"]) == jax.random.key_data(jax.random.key(7))).all()
  assert "key" not in cli.method_options(jaxcam.get_method("scorecam"), ["top_n=4"], 7)


@pytest.mark.slow
def test_sscam_with_options_end_to_end(image_dir, tmp_path):
  d, _ = image_dir
  out = tmp_path / "ss"
  args = ["--method", "ss-cam", "--option", "top_n=8", "--option", "num_samples=2", "--seed", "3"]
  assert cli.main(["explain", str(d / "chelsea.png"), "--out", str(out), "--batch-size", "1"] + args) == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["method"] == "sscam" and manifest["entries"]["chelsea.png"]["target"]["id"] == 285
  maps = np.load(out / "shards" / "maps-00000.npz")
  assert len(maps.files) == 1 and np.isfinite(maps[maps.files[0]]).all() and maps[maps.files[0]].max() > 0


@pytest.mark.fast
def test_unreadable_image_is_a_clear_error(tmp_path, capsys):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a png")
  assert cli.main(["explain", str(bad), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "cannot read image" in err and "broken.png" in err and "UnidentifiedImageError" in err


@pytest.mark.fast
def test_layers_command(capsys):
  assert cli.main(["layers", "--model", "efficientnet_lite0"]) == 0
  out = capsys.readouterr().out
  assert "head " in out and "(1, 7, 7, 1280)" in out and "default layer: head" in out


@pytest.mark.slow
def test_demo_draws_every_cheap_row_and_exact_gradcam_pp(tmp_path, capsys):
  """`jaxcam demo`: every table row whose cost is a fixed number of passes (Shapley-CAM included) plus exact
  Grad-CAM++, one overlay per photo and method, the grid and summary.json."""
  out = tmp_path / "demo"
  assert cli.main(["demo", "--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  import jaxcam
  from jaxcam import providers
  from jaxcam.methods import attention

  def reads_vits_only(name):  # LeGrad, the rollouts: transformer blocks only, the demo's CNN has none
    return any(providers.get_provider(n).applies is attention.reads_attention for n in jaxcam.get_method(name).needs)

  expected = [m for m in cli.demo_methods() if not reads_vits_only(m)] + ["gradcam_pp_exact"]
  assert summary["methods"] == expected and "shapleycam" in expected and "scorecam" not in expected
  n = len(summary["images"])
  assert len(list(out.glob("*_gradcam_pp_exact.png"))) == n
  assert len(list(out.glob("*.png"))) == n * len(expected) + 1  # + grid.png
  exact = {k: v["peak"]["gradcam_pp_exact"] for k, v in summary["images"].items()}
  assert all(0 <= r and 0 <= c for r, c in exact.values())


def test_eigen_and_aug_smooth_flags(image_dir, tmp_path, capsys):
  """The flags reach explain_batches and the run's fingerprint; eigen smoothing of a map method is refused."""
  d, _ = image_dir
  out = tmp_path / "aug"
  args = ["explain", str(d / "coffee.png"), "--out", str(out), "--batch-size", "1", "--aug-smooth", "--eigen-smooth"]
  assert cli.main(args) == 0
  run = json.loads((out / "run.json").read_text())
  assert run["aug_smooth"] is True and run["eigen_smooth"] is True
  maps = np.load(out / "shards" / "maps-00000.npz")
  m = maps[maps.files[0]]
  # the math is checked in tests/test_wrappers.py
  assert m.shape == (224, 224) and np.isfinite(m).all() and 0 <= m.min() and m.max() <= 1
  assert cli.main(["explain", str(d / "coffee.png"), "--method", "eigencam", "--eigen-smooth", "--out", str(out)]) == 2
  assert "no --eigen-smooth for eigencam" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_writes_results_and_prints_the_table(tmp_path, capsys):
  out = tmp_path / "eval"
  args = ["evaluate", "--methods", "gradcam,gradcam_pp_exact", "--steps", "2", "--out", str(out)]
  assert cli.main(args) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert list(summary["methods"]) == ["gradcam", "gradcam_pp_exact"] and summary["score"] == "probability"
  rows = (out / "results.csv").read_text().splitlines()
  assert rows[0] == "method,image,avg_drop,increase,deletion,insertion,road"
  assert len(rows) == 1 + 2 * len(summary["images"])
  for vals in summary["methods"].values():
    assert 0 <= vals["avg_drop"]["mean"] <= 100 and 0 <= vals["deletion"]["mean"] <= 1
    assert -1 < vals["road"]["mean"] < 1 and vals["road"]["n"] == len(summary["images"])
  printed = capsys.readouterr().out
  assert "| gradcam_pp_exact |" in printed and "avg_drop ↓" in printed and "road ↑" in printed
  assert cli.main(["evaluate", "--metrics", "nope", "--out", str(out)]) == 2
  assert "--metrics: unknown ['nope']" in capsys.readouterr().err
  assert cli.main(["evaluate", "--metrics", "pointing", "--out", str(out)]) == 2
  assert "need regions: pass --boxes" in capsys.readouterr().err
  # localization from a boxes file: two of the photos have a box, the others are left out of the means
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({"chelsea": [[100, 50, 300, 250]], "coffee.png": [[0, 0, 400, 400], [10, 10, 20, 20]]}))
  loc = tmp_path / "loc"
  assert cli.main(["evaluate", "--methods", "gradcam", "--boxes", str(boxes), "--out", str(loc)]) == 0
  summary = json.loads((loc / "summary.json").read_text())
  assert summary["metrics"][-4:] == ["pointing", "energy", "auroc", "iou"]
  stats = summary["methods"]["gradcam"]
  assert stats["pointing"]["n"] == 2 and 0 <= stats["energy"]["mean"] <= 1 and 0 <= stats["auroc"]["mean"] <= 1


@pytest.mark.fast
def test_regions_from_boxes_and_masks(tmp_path):
  photos = {"imgs/a.png": np.zeros((10, 20, 3), np.uint8), "b.jpg": np.zeros((8, 8, 3), np.uint8)}
  names = list(photos)
  boxes = tmp_path / "boxes.json"
  boxes.write_text(json.dumps({"a.jpeg": [[0, 0, 10, 5]]}))  # by stem on both sides; b has no entry
  masks, present = cli.load_regions(str(boxes), None, names, photos, 4)
  # resized pixel centres fall on source rows 1, 3, 6, 8 and columns 2, 7, 12, 17: inside rows 0-1, columns 0-1
  expected = np.zeros((4, 4), bool)
  expected[:2, :2] = True
  np.testing.assert_array_equal(masks[0], expected)
  assert present.tolist() == [True, False] and not masks[1].any()
  folder = tmp_path / "masks"
  folder.mkdir()
  m = np.zeros((8, 8), np.uint8)
  m[4:, 4:] = 255  # the bottom-right quarter
  Image.fromarray(m).save(folder / "b.png")
  masks, present = cli.load_regions(None, str(folder), names, photos, 4)
  assert present.tolist() == [False, True]
  np.testing.assert_array_equal(masks[1], np.kron(np.array([[0, 0], [0, 1]], bool), np.ones((2, 2), bool)))
  Image.fromarray(np.zeros((5, 5), np.uint8)).save(folder / "b.png")
  with pytest.raises(cli.CliError, match="is 5x5, its image 'b.jpg' is 8x8"):
    cli.load_regions(None, str(folder), names, photos, 4)
  boxes.write_text(json.dumps({"zzz": [[0, 0, 1, 1]]}))
  with pytest.raises(cli.CliError, match="no region for any image"):
    cli.load_regions(str(boxes), None, names, photos, 4)
  boxes.write_text("[1, 2]")
  with pytest.raises(cli.CliError, match="expected a JSON object"):
    cli.load_regions(str(boxes), None, names, photos, 4)


def test_explain_an_imported_model_with_auto_detected_layer(image_dir, tmp_path, monkeypatch, capsys):
  """--model package.module:attribute: a function returning (linen module, variables); the layer is found."""
  d, photos = image_dir
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  (pkg / "my_cnn.py").write_text(
    "import jax\n"
    "from tests import nets\n"
    "def build():\n"
    "  module = nets.ConvNet()\n"
    "  return module, module.init(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)))\n"
  )
  monkeypatch.syspath_prepend(str(pkg))
  out = tmp_path / "imported"
  rc = cli.main(["explain", str(d), "--model", "my_cnn:build", "--size", "32", "--out", str(out)])  # no --batch-size
  assert rc == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["layer"] == "body_2" and manifest["model"] == "my_cnn:build"
  n_dev = len(jax.local_devices())
  assert manifest["shard_size"] == -(-3 // n_dev) * n_dev  # three images: one batch of three, not padded to 8
  assert "layer 'body_2': the last layer whose output is a spatial grid" in capsys.readouterr().err
  entry = manifest["entries"]["chelsea.png"]
  assert entry["size"] == list(photos["chelsea"].shape[:2]) and entry["top5"][0]["name"] is None
  with np.load(out / "shards" / "maps-00000.npz") as maps:
    assert all(m.shape == (32, 32) for m in maps.values())
  with pytest.raises(cli.CliError, match="cannot import --model 'my_cnn:nope'"):
    cli.cmd_explain(cli.build_parser().parse_args(["explain", str(d), "--model", "my_cnn:nope", "--out", str(out)]))


@pytest.mark.fast
def test_merge_refuses_truncated_and_foreign_manifests(convnet_b2, tmp_path, capsys):
  files = image_files(tmp_path / "in", 4)
  out = tmp_path / "out"
  run_cli(convnet_b2, files, out)
  shard = out / "shards" / "manifest-00001.json"
  good = shard.read_text()
  shard.write_text(good[: len(good) // 2])
  assert cli.main(["merge-manifests", str(out)]) == 2
  err = capsys.readouterr().err
  assert "jaxcam: error: Cannot read shard manifest" in err and "Traceback" not in err
  shard.write_text(good.replace(json.loads(good)["fingerprint"], "0" * 64))
  assert cli.main(["merge-manifests", str(out)]) == 2
  assert "belongs to a different run" in capsys.readouterr().err


@pytest.mark.fast
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


def _photos(d, n=2):
  rng = np.random.default_rng(0)
  d.mkdir(parents=True, exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / f"img{i}.png")
  return d


@pytest.mark.parametrize("where", ["inside", "equal"])
def test_out_inside_or_equal_to_the_input_folder_keeps_the_inputs_and_the_users_files(tmp_path, where):
  """The run's outputs are never inputs (first run and reruns alike); --overwrite removes only jaxcam's files."""
  d = _photos(tmp_path / "photos")
  (d / "overlays").mkdir()
  Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(d / "overlays" / "holiday.png")  # the user's photo
  (d / "shards").mkdir()
  (d / "shards" / "notes.txt").write_text("the user's notes")
  keep = {p: p.read_bytes() for p in [d / "overlays" / "holiday.png", d / "shards" / "notes.txt"]}
  out = d / "out" if where == "inside" else d
  args = ["explain", str(d), "--out", str(out), "--batch-size", "1"]
  inputs = ["img0.png", "img1.png", "overlays/holiday.png"]
  assert cli.main(args) == 0
  assert sorted(json.loads((out / "manifest.json").read_text())["entries"]) == inputs
  assert cli.main(args) == 0  # a rerun: the same inputs (its overlays are not new inputs), resumed
  assert cli.main(args + ["--method", "layercam", "--overwrite"]) == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert sorted(manifest["entries"]) == inputs and manifest["method"] == "layercam"
  for p, data in keep.items():
    assert p.read_bytes() == data, p


def test_a_fifo_in_an_input_folder_is_skipped_with_one_line(tmp_path, capsys):
  d = _photos(tmp_path / "photos", 1)
  with fifo(d / "pipe.png") as state:
    rc = cli.main(["explain", str(d), "--out", str(tmp_path / "out"), "--batch-size", "1"])
  assert not state["released"]  # never opened: no hang
  assert rc == cli.EXIT_PARTIAL
  err = [line for line in capsys.readouterr().err.splitlines() if "pipe.png" in line]
  assert len(err) == 1 and "skipped unreadable image 'pipe.png'" in err[0] and "FIFO" in err[0], err


def _main_catching_ctrl_c(args):
  """`cli.main(args)`; a KeyboardInterrupt that escapes it fails the test (instead of stopping pytest)."""
  try:
    return cli.main(args)
  except KeyboardInterrupt:
    pytest.fail("KeyboardInterrupt escaped jaxcam.cli.main")


@pytest.mark.fast
def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
  def interrupted(args):
    raise KeyboardInterrupt

  monkeypatch.setattr(cli, "cmd_layers", interrupted)
  rc = _main_catching_ctrl_c(["layers"])
  err = capsys.readouterr().err
  assert rc == 130 and err.startswith("jaxcam: interrupted") and err.count("\n") == 1, err


def test_ctrl_c_mid_run_leaves_a_run_that_resumes_to_the_same_outputs(tmp_path, monkeypatch, capsys):
  from jaxcam import stream

  d = _photos(tmp_path / "photos", 4)
  common = ["explain", str(d), "--batch-size", "1", "--shard-size", "2", "--overlays"]
  assert cli.main(common + ["--out", str(tmp_path / "full")]) == 0
  calls, top5 = [], stream.top5

  def interrupt_at_the_third_image(*args, **kw):
    calls.append(1)
    if len(calls) == 3:  # in shard 1, after shard 0 is complete
      raise KeyboardInterrupt
    return top5(*args, **kw)

  monkeypatch.setattr(stream, "top5", interrupt_at_the_third_image)
  out = tmp_path / "resumed"
  capsys.readouterr()
  assert _main_catching_ctrl_c(common + ["--out", str(out)]) == 130
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith("jaxcam: interrupted")
  assert (out / "shards" / "manifest-00000.json").exists() and not (out / "manifest.json").exists()
  monkeypatch.setattr(stream, "top5", top5)
  assert cli.main(common + ["--out", str(out)]) == 0
  assert _tree(out) == _tree(tmp_path / "full")


@pytest.mark.slow
def test_fullgrad_and_sess_rows_from_the_command_line_and_explain_model(image_dir, tmp_path, monkeypatch):
  """``--method fullgrad`` and ``--method sess`` (SESS around Grad-CAM) run like any row: the manifest names the
  row, and the maps equal ``explain_model(method=...)``'s on the same images (the same row through another door)."""
  import jaxcam

  d, photos = image_dir
  spec = _tiny_model_module(tmp_path, monkeypatch)  # a conv net with global pooling: any input size
  import tiny_cnn

  model = tiny_cnn.build()
  for method, name in (("fullgrad", "fullgrad"), ("sess", "sess(gradcam)")):
    out = tmp_path / method
    args = ["explain", str(d / "chelsea.png"), "--model", spec, "--size", "32", "--out", str(out)]
    assert cli.main(args + ["--method", method, "--batch-size", "1"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == name
    with np.load(out / "shards" / "maps-00000.npz") as maps:
      (cli_map,) = list(maps.values())
    ex = jaxcam.explain_model(model, [photos["chelsea"]], method=method, size=32)
    assert ex.method == name
    np.testing.assert_allclose(cli_map, np.asarray(ex.maps)[0], atol=1e-4)


def _tiny_model_module(tmp_path, monkeypatch) -> str:
  """`--model tiny_cnn:build`: a small conv net (no download, compiles in a moment)."""
  pkg = tmp_path / "pkg"
  pkg.mkdir(exist_ok=True)
  (pkg / "tiny_cnn.py").write_text(
    "import jax\n"
    "from tests import nets\n"
    "def build():\n"
    "  module = nets.ConvNet()\n"
    "  return module, module.init(jax.random.key(0), jax.numpy.zeros((1, 12, 12, 3)))\n"
  )
  monkeypatch.syspath_prepend(str(pkg))
  return "tiny_cnn:build"


def _refuse_model_loading(monkeypatch):
  from jaxcam.cli import evaluate

  def load(*_):
    raise AssertionError("the model was loaded before the arguments were checked")

  monkeypatch.setattr(evaluate, "_load_model", load)


@pytest.mark.parametrize(
  "case,message",
  [
    ("option_of_wrong_type", "--option: "),
    ("option_bad_value", "--option: Expected `convention`"),
    ("size_0", "--size must be at least 1, got 0"),
    ("chunk_size_0", "--chunk-size must be at least 1, got 0"),
    ("negative_tolerance", "--tolerance must be >= 0, got -3"),
    ("boxes_not_numbers", "--boxes: expected a list of [x0, y0, x1, y1] for 'a', got 'abc'"),
    ("boxes_a_number", "--boxes: expected a list of [x0, y0, x1, y1] for 'a', got 5"),
    ("boxes_three_numbers", "--boxes: expected a list of [x0, y0, x1, y1] for 'a', got [[1, 2, 3]]"),
    ("no_methods", "--methods: expected at least one method"),
    ("foreign_manifest", "not a shard manifest of jaxcam"),
    ("foreign_entries", "not a shard manifest of jaxcam"),
  ],
)
def test_more_user_errors_are_one_line_with_status_2_before_any_work(tmp_path, monkeypatch, capsys, case, message):
  img = tmp_path / "a.png"
  Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(img)
  out = tmp_path / "out"
  boxes = tmp_path / "boxes.json"
  evaluate = ["evaluate", str(img), "--methods", "gradcam", "--out", str(out)]
  if case.startswith("option") or case == "size_0":
    model = _tiny_model_module(tmp_path, monkeypatch)
    args = ["explain", str(img), "--model", model, "--layer", "body_2", "--size", "12", "--out", str(out)]
    args += {
      "option_of_wrong_type": ["--method", "kpcacam", "--option", "coef0=abc"],
      "option_bad_value": ["--method", "scorecam", "--option", "convention=abc"],
      "size_0": ["--size", "0"],
    }[case]
  elif case in ("chunk_size_0", "negative_tolerance", "no_methods") or case.startswith("boxes"):
    _refuse_model_loading(monkeypatch)
    args = (
      evaluate
      + {
        "chunk_size_0": ["--chunk-size", "0"],
        "negative_tolerance": ["--tolerance", "-3"],
        "no_methods": ["--methods", ","],
        "boxes_not_numbers": ["--boxes", str(boxes)],
        "boxes_a_number": ["--boxes", str(boxes)],
        "boxes_three_numbers": ["--boxes", str(boxes)],
      }[case]
    )
    entry = {"boxes_not_numbers": "abc", "boxes_a_number": 5, "boxes_three_numbers": [[1, 2, 3]]}.get(case)
    boxes.write_text(json.dumps({"a": entry}))
  else:
    (out / "shards").mkdir(parents=True)
    foreign = "5" if case == "foreign_manifest" else json.dumps({"fingerprint": "x", "entries": [1, 2]})
    (out / "shards" / "manifest-00000.json").write_text(foreign)
    args = ["merge-manifests", str(out)]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxcam: error: ") and message in err and "Traceback" not in err, err
  assert err.count("\n") == 1, err
  if case != "foreign_manifest" and case != "foreign_entries":
    assert not out.exists()  # refused before any work: nothing written


@pytest.mark.fast
def test_boxes_that_are_a_fifo_are_refused_without_hanging(tmp_path, monkeypatch, capsys):
  img = tmp_path / "a.png"
  Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(img)
  _refuse_model_loading(monkeypatch)
  with fifo(tmp_path / "boxes.json") as state:
    rc = cli.main(["evaluate", str(img), "--boxes", str(tmp_path / "boxes.json"), "--out", str(tmp_path / "out")])
  assert not state["released"] and rc == 2
  err = capsys.readouterr().err
  assert "--boxes" in err and "FIFO" in err and err.count("\n") == 1, err


@pytest.mark.fast
@pytest.mark.parametrize(
  "args,message",
  [
    (["explain", "a.png", "--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
    (["evaluate", "--chunk-size", "1.5"], "argument --chunk-size: invalid int value: '1.5'"),
    (["explain"], "the following arguments are required: IMAGE_OR_DIR"),
    (["explainn"], "invalid choice: 'explainn'"),
  ],
)
def test_malformed_arguments_are_one_line_with_status_2(capsys, args, message):
  with pytest.raises(SystemExit) as info:
    cli.main(args)
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert message in err and err.startswith("jaxcam") and err.count("\n") == 1, err


@pytest.mark.fast
def test_default_batch_size_is_eight_or_the_images_rounded_up_to_the_devices():
  from jaxcam.cli.explain import _default_batch_size

  def args(shard_size=0, devices=0):
    return cli.build_parser().parse_args(
      ["explain", "x.png", "--shard-size", str(shard_size), "--devices", str(devices)]
    )

  n_dev = len(jax.local_devices())
  assert _default_batch_size(3, args()) == min(8, -(-3 // n_dev) * n_dev)
  assert _default_batch_size(100, args()) == 8
  assert _default_batch_size(3, args(shard_size=16, devices=1)) == 8  # shards: the fixed size, every shard alike
  assert _default_batch_size(3, args(devices=2)) == 4  # a multiple of the devices used
  assert _default_batch_size(100, args(devices=3)) == _default_batch_size(1, args(shard_size=9, devices=3)) == 9


def test_the_command_flushes_its_output_and_keeps_its_exit_status(tmp_path, capsys):
  """`jaxcam` (`cli.run`) ends its process without Python's teardown: nothing printed may be lost, and the exit
  status is `main`'s."""
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAXCAM_CACHE_DIR="off", PYTHONPATH=root)
  command = [sys.executable, "-m", "jaxcam.cli"]
  listed = subprocess.run(command + ["layers"], capture_output=True, text=True, cwd=root, env=env, timeout=300)
  assert listed.returncode == 0, listed.stderr[-2000:]
  assert cli.main(["layers"]) == 0
  assert listed.stdout == capsys.readouterr().out and len(listed.stdout.splitlines()) > 50  # a pipe: block-buffered
  missing = [str(tmp_path / "none.png"), "--out", str(tmp_path / "out")]
  refused = subprocess.run(command + ["explain"] + missing, capture_output=True, text=True, cwd=root, env=env)
  assert refused.returncode == 2 and "no such file or directory" in refused.stderr
