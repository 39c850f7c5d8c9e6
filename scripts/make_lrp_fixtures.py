"""Produce tests/fixtures/lrp.npz: relevance from the PyTorch LRP peers for `jaxcam.lrp` (needs torch; not run in CI).

Run in a separate environment, never the project's (zennit 1.0.0 needs Python >= 3.11.11):

    python3.12 -m venv /tmp/jaxcam-lrp-peers && /tmp/jaxcam-lrp-peers/bin/pip install torch==2.14.1
    /tmp/jaxcam-lrp-peers/bin/pip install lxt==2.1 zennit==1.0.0 numpy
    /tmp/jaxcam-lrp-peers/bin/python scripts/make_lrp_fixtures.py

Both models are built from numpy-seeded weights that are stored in the fixture, so the tests rebuild the identical
Flax models without torch:

- ``vit/...``: tests/nets.py's TinyViT (16x16 images, 4x4 patches, CLS token, two pre-norm blocks with two heads,
  tanh-GELU MLPs, CLS head) written out in torch with lxt 2.1's *explicit* AttnLRP rules (relevance tensors flow
  backwards, not gradients): ``linear_epsilon`` on every linear map (the patch embedding too), ``matmul`` (uniform +
  ε) on ``q k^T`` and ``P v``, ``softmax`` (AttnLRP's rule, with the 1/sqrt(d) scale as its temperature),
  ``layer_norm`` (std detached), ``add2`` on the residuals and the position embedding, ``identity`` on GELU. Stored:
  the weights in flax layout (``vit/w/<path>``), the images, the class ids, the logits and the input relevance
  ``(B, H, W, C)`` with the target's logit as the output relevance.
- ``cnn/...``: scripts/make_fixtures.py's SmallCNN (conv-relu x3, adaptive average pooling, Linear) with zennit's
  ``LayerMapComposite`` of ``Epsilon(0.25)`` on convolutions and Linear layers plus zennit's base map (``Pass`` on
  ReLU, ``Norm`` on average pooling); the output relevance is the target's logit. Stored: the torch state dict
  (``cnn/w/<key>``), the images (NHWC), class ids, logits and the input relevance (NHWC).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from lxt.explicit import functional as lf
from lxt.explicit.rules import identity
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite, layer_map_base
from zennit.rules import Epsilon
from zennit.types import Convolution, Linear

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, os.pardir, "tests", "fixtures", "lrp.npz")
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)
VIT_EPS = 1e-6
CNN_EPS = 0.25


# ---------------------------------------------------------------------------------------------------------- ViT


def vit_weights(seed: int = 0) -> dict[str, np.ndarray]:
  """TinyViT's parameters in flax layout, keyed by their path; biases and norms far from 0/1 so that they matter."""
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: (rng.standard_normal(shape) * scale).astype(np.float32)
  w = {
    "embed/kernel": normal((4, 4, 3, 16), 1 / math.sqrt(48)),
    "embed/bias": normal((16,), 0.1),
    "cls": normal((1, 1, 16), 0.5),
    "pos": normal((1, 17, 16), 0.2),
    "norm/scale": 1 + normal((16,), 0.2),
    "norm/bias": normal((16,), 0.1),
    "head/kernel": normal((16, 5), 0.5),
    "head/bias": normal((5,), 0.1),
  }
  for i in range(2):
    b = f"block{i}"
    for ln in ("LayerNorm_0", "LayerNorm_1"):
      w[f"{b}/{ln}/scale"] = 1 + normal((16,), 0.2)
      w[f"{b}/{ln}/bias"] = normal((16,), 0.1)
    for n in ("query", "key", "value"):
      w[f"{b}/MultiHeadDotProductAttention_0/{n}/kernel"] = normal((16, 2, 8), 0.5)
      w[f"{b}/MultiHeadDotProductAttention_0/{n}/bias"] = normal((2, 8), 0.1)
    w[f"{b}/MultiHeadDotProductAttention_0/out/kernel"] = normal((2, 8, 16), 0.25)
    w[f"{b}/MultiHeadDotProductAttention_0/out/bias"] = normal((16,), 0.1)
    w[f"{b}/Dense_1/kernel"] = normal((16, 32), 0.25)
    w[f"{b}/Dense_1/bias"] = normal((32,), 0.1)
    w[f"{b}/Dense_0/kernel"] = normal((32, 16), 0.18)
    w[f"{b}/Dense_0/bias"] = normal((16,), 0.1)
  return w


def _linear(x, kernel, bias):
  """flax Dense / DenseGeneral as lxt's linear_epsilon: kernel (in..., out...) flattened to torch's (out, in)."""
  k = torch.from_numpy(kernel)
  n_in = x.shape[-1]
  k = k.reshape(n_in, -1)
  return lf.linear_epsilon(x, k.T.contiguous(), torch.from_numpy(bias).reshape(-1), epsilon=VIT_EPS)


def _ln(x, w, name):
  return lf.layer_norm(x, torch.from_numpy(w[f"{name}/scale"]), torch.from_numpy(w[f"{name}/bias"]), 1e-6)


def _attention(y, w, name):
  b, n, _ = y.shape
  heads = lambda t: t.reshape(b, n, 2, 8).permute(0, 2, 1, 3)  # (B, H, N, D)
  q, k, v = (heads(_linear(y, w[f"{name}/{p}/kernel"], w[f"{name}/{p}/bias"])) for p in ("query", "key", "value"))
  logits = lf.matmul(q, k.transpose(-1, -2), epsilon=VIT_EPS)
  probs = lf.softmax(logits, -1, temperature=math.sqrt(8.0))
  o = lf.matmul(probs, v, epsilon=VIT_EPS).permute(0, 2, 1, 3).reshape(b, n, 16)
  return _linear(o, w[f"{name}/out/kernel"], w[f"{name}/out/bias"])


def vit_forward(x_nhwc: torch.Tensor, w: dict[str, np.ndarray]) -> torch.Tensor:
  """TinyViT with lxt's explicit rules; the patches are cut by reshapes (relevance passes them unchanged)."""
  b = x_nhwc.shape[0]
  patches = x_nhwc.reshape(b, 4, 4, 4, 4, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, 16, 48)
  t = _linear(patches, w["embed/kernel"], w["embed/bias"])
  t = torch.cat([torch.from_numpy(w["cls"]).expand(b, 1, 16), t], dim=1)
  t = lf.add2(t, torch.from_numpy(w["pos"]).expand(b, 17, 16), epsilon=VIT_EPS)
  for i in range(2):
    blk = f"block{i}"
    t = lf.add2(t, _attention(_ln(t, w, f"{blk}/LayerNorm_0"), w, f"{blk}/MultiHeadDotProductAttention_0"))
    h = _linear(_ln(t, w, f"{blk}/LayerNorm_1"), w[f"{blk}/Dense_1/kernel"], w[f"{blk}/Dense_1/bias"])
    h = identity(lambda u: F.gelu(u, approximate="tanh"), h)
    t = lf.add2(t, _linear(h, w[f"{blk}/Dense_0/kernel"], w[f"{blk}/Dense_0/bias"]), epsilon=VIT_EPS)
  t = _ln(t, w, "norm")
  return _linear(t[:, 0], w["head/kernel"], w["head/bias"])


def make_vit() -> dict[str, np.ndarray]:
  w = vit_weights()
  x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_(True)
  logits = vit_forward(xt, w)
  ids = np.array([1, 3])
  seed = torch.zeros_like(logits)
  seed[torch.arange(2), torch.from_numpy(ids)] = 1.0
  logits.backward(seed * logits.detach())  # lxt explicit: what flows backwards is relevance, starting at the logit
  out = {f"vit/w/{k}": v for k, v in w.items()}
  out.update({"vit/x": x, "vit/ids": ids, "vit/logits": logits.detach().numpy()})
  out["vit/relevance"] = xt.grad.numpy()
  return out


# ---------------------------------------------------------------------------------------------------------- CNN


class SmallCNN(nn.Module):
  """conv-relu (block1) -> strided conv-relu (block2) -> conv-relu (block3) -> GAP -> fc (make_fixtures.py's)."""

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


def cnn_weights(seed: int = 2) -> dict[str, np.ndarray]:
  """He-scaled weights in torch layout, biases of scale 0.1 (so LRP-ε's bias term matters)."""
  rng = np.random.default_rng(seed)
  shapes = {
    "block1.0.weight": (8, 3, 3, 3),
    "block1.0.bias": (8,),
    "block2.0.weight": (16, 8, 3, 3),
    "block2.0.bias": (16,),
    "block3.0.weight": (16, 16, 3, 3),
    "block3.0.bias": (16,),
    "fc.weight": (10, 16),
    "fc.bias": (10,),
  }
  out = {}
  for k, s in shapes.items():
    scale = np.sqrt(2.0 / np.prod(s[1:])) if len(s) > 1 else 0.1
    out[k] = (rng.standard_normal(s) * scale).astype(np.float32)
  return out


def make_cnn() -> dict[str, np.ndarray]:
  w = cnn_weights()
  model = SmallCNN().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
  x = np.random.default_rng(3).standard_normal((2, 12, 12, 3)).astype(np.float32)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  ids = np.array([4, 7])
  composite = LayerMapComposite(
    layer_map=layer_map_base() + [(Convolution, Epsilon(epsilon=CNN_EPS)), (Linear, Epsilon(epsilon=CNN_EPS))]
  )
  onehot = torch.zeros(2, 10)
  onehot[torch.arange(2), torch.from_numpy(ids)] = 1.0
  with Gradient(model=model, composite=composite) as attributor:
    logits, rel = attributor(xt, lambda out: out * onehot)
  out = {f"cnn/w/{k}": v for k, v in w.items()}
  out.update(
    {
      "cnn/x": x,
      "cnn/ids": ids,
      "cnn/logits": logits.detach().numpy(),
      "cnn/relevance": rel.detach().numpy().transpose(0, 2, 3, 1),
      "cnn/eps": np.float32(CNN_EPS),
    }
  )
  return out


def main() -> None:
  data = {**make_vit(), **make_cnn()}
  np.savez_compressed(OUT, **data)
  print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT) // 1024} KB)")
  for name in ("vit", "cnn"):
    r, logits, ids = data[f"{name}/relevance"], data[f"{name}/logits"], data[f"{name}/ids"]
    print(f"{name}: relevance sums {r.sum((1, 2, 3))}, target logits {logits[np.arange(2), ids]}")


if __name__ == "__main__":
  main()
