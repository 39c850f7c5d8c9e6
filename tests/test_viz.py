"""`jaxcam.viz`: overlays and grids."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcam import viz


@pytest.mark.fast
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
