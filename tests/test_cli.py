"""The jaxcam command end to end (in process) and the viz helpers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxcam import cli, models, viz


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("imgs")
  photos = models.sample_images(["chelsea", "coffee", "motorcycle"])
  for name, arr in photos.items():
    Image.fromarray(arr).save(d / f"{name}.png")
  return d, photos


def test_explain_end_to_end(image_dir, tmp_path, capsys):
  d, photos = image_dir
  out = tmp_path / "out"
  rc = cli.main(["explain", str(d), "--method", "gradcam++", "--out", str(out), "--batch-size", "2"])
  assert rc == 0
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary["images"]) == {"chelsea", "coffee", "motorcycle"}
  cat = summary["images"]["chelsea"]
  assert cat["target"] == {"id": 285, "name": "Egyptian cat"} and cat["method"] == "gradcam_pp"
  assert cat["top5"][0]["id"] == 285 and len(cat["top5"]) == 5 and cat["layer"] == "head"
  r, c = cat["peak"]
  assert 40 <= r <= 260 and 120 <= c <= 400  # the cat's face in the 300x451 photo
  with np.load(out / "maps.npz") as maps:
    assert set(maps.files) == set(summary["images"])
    for m in maps.values():
      assert m.shape == (224, 224) and 0 <= m.min() and m.max() <= 1
  for name, arr in photos.items():
    png = np.asarray(Image.open(out / f"{name}_gradcam_pp.png"))
    assert png.shape == arr.shape and png.dtype == np.uint8
  # rerun: byte-identical outputs
  first = {p: (out / p).read_bytes() for p in os.listdir(out)}
  assert cli.main(["explain", str(d), "--method", "gradcam++", "--out", str(out), "--batch-size", "2"]) == 0
  assert {p: (out / p).read_bytes() for p in os.listdir(out)} == first


def test_explain_with_target_name_and_layer(image_dir, tmp_path):
  d, _ = image_dir
  out = tmp_path / "o2"
  rc = cli.main(["explain", str(d / "coffee.png"), "--target", "Egyptian cat", "--layer", "blocks/15",
                 "--out", str(out), "--batch-size", "1"])
  assert rc == 0
  info = json.loads((out / "summary.json").read_text())["images"]["coffee"]
  assert info["target"]["id"] == 285 and info["layer"] == "blocks/15"


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


def test_unreadable_image_is_a_clear_error(tmp_path, capsys):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not a png")
  assert cli.main(["explain", str(bad), "--out", str(tmp_path / "o")]) == 2
  err = capsys.readouterr().err
  assert "cannot read image" in err and "broken.png" in err


def test_layers_command(capsys):
  assert cli.main(["layers", "--model", "efficientnet_lite0"]) == 0
  out = capsys.readouterr().out
  assert "head " in out and "(1, 7, 7, 1280)" in out and "default layer: head" in out


def test_overlay_and_grid(tmp_path):
  img = np.zeros((30, 40, 3), np.uint8)
  cam = np.zeros((7, 7), np.float32)
  cam[0, 0] = 1.0
  out = viz.overlay(img, cam, alpha=1.0)
  assert out.shape == (30, 40, 3) and out.dtype == np.uint8
  # jet: the hot corner is red-ish, the cold far corner is blue-ish
  assert out[0, 0, 0] > 100 and out[0, 0, 2] < 100 and out[-1, -1, 2] > 100 and out[-1, -1, 0] < 50
  assert viz.peak(cam, (30, 40)) == (2, 2)
  fig = viz.grid([img, img], {"a": [cam, cam], "b": [cam, cam]}, ["x", "y"], path=tmp_path / "g.png")
  assert (tmp_path / "g.png").exists() and len(fig.axes) == 6
  with pytest.raises(ValueError, match="one per image"):
    viz.grid([img], {"a": [cam, cam]})
