"""Every notebook under notebooks/ executes cleanly (small-size switch on)."""

from __future__ import annotations

import glob
import os

import pytest

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), os.pardir, "notebooks", "*.ipynb")))
# derivative_study trains small networks (~100 s on 2 cores); quickstart compiles the real Lite0 a dozen times
# (~75 s); vit, anomaly_cutpaste and transformers train small networks; model_zoo compiles a Keras ConvNeXt:
# .ci/run's slow tier runs them
SLOW = {
  "derivative_study.ipynb",
  "quickstart.ipynb",
  "vit.ipynb",
  "anomaly_cutpaste.ipynb",
  "transformers.ipynb",
  "model_zoo.ipynb",
}


@pytest.mark.parametrize(
  "path",
  [pytest.param(p, marks=pytest.mark.slow) if os.path.basename(p) in SLOW else p for p in NOTEBOOKS],
  ids=[os.path.basename(p) for p in NOTEBOOKS],
)
def test_notebook_executes(path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("JAXCAM_NOTEBOOK_SMALL", "1")
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path)}}
  )
  client.execute()  # raises CellExecutionError on the first failing cell
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)
