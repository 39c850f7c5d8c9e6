"""Helpers shared by the CLI and streaming tests."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jaxcam import stream


def image_files(d, n, seed=0):
  rng = np.random.default_rng(seed)
  d.mkdir(exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / f"img{i}.png")
  return sorted(str(p) for p in d.iterdir())


def run_cli(convnet_b2, files, out, **kw):
  _, _, tap, _ = convnet_b2
  common = dict(tap=tap, model="convnet", root=os.path.dirname(files[0]), shard_size=2, batch_size=2, input_size=12)
  return stream.explain_files(files, str(out), **{"method": "gradcam", **common, **kw})
