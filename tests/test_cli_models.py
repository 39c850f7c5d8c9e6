"""`jaxcam layers` and `jaxcam evaluate` take ``--model package.module:attribute`` like `explain` (issue 27 item 6):
an object or a function of no arguments returning one, ``--size`` where the model declares no input size."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jaxcam import cli

MODULE = (
  "import jax\n"
  "from tests import nets\n"
  "def build():\n"
  "  module = nets.ConvNet()\n"
  "  return module, module.init(jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)))\n"
  "not_a_model = 3\n"
)


@pytest.fixture
def my_cnn(tmp_path, monkeypatch):
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  (pkg / "my_cnn_cli.py").write_text(MODULE)
  monkeypatch.syspath_prepend(str(pkg))
  return "my_cnn_cli:build"


def test_layers_lists_an_imported_model(my_cnn, capsys):
  from tests import nets

  assert cli.main(["layers", "--model", my_cnn, "--size", "32"]) == 0
  printed = capsys.readouterr().out
  module = nets.ConvNet()
  names = [n for n in module.init(__import__("jax").random.key(0), np.zeros((1, 32, 32, 3), np.float32))["params"]]
  assert names and all(n in printed for n in names), (names, printed)  # every submodule with parameters is listed
  assert "input size: 32 x 32 (--size" in printed
  assert cli.main(["layers", "--model", "my_cnn_cli:not_a_model"]) == 2
  assert "--model my_cnn_cli:not_a_model" in capsys.readouterr().err
  assert cli.main(["layers", "--model", "resnet_51"]) == 2
  assert "package.module:attribute" in capsys.readouterr().err


def test_evaluate_an_imported_model_finds_its_layer(my_cnn, tmp_path, capsys):
  d = tmp_path / "imgs"
  d.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(d / f"p{i}.png")
  out = tmp_path / "ev"
  args = ["evaluate", str(d), "--model", my_cnn, "--size", "32", "--methods", "gradcam", "--metrics", "avg_drop"]
  assert cli.main([*args, "--out", str(out)]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["layer"] == "body_2" and summary["model"] == my_cnn
  assert "layer 'body_2'" in capsys.readouterr().err
  drop = summary["methods"]["gradcam"]["avg_drop"]
  assert drop["n"] == 2 and 0.0 <= drop["mean"] <= 100.0
