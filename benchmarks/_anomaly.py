"""The study's anomaly experiment: data (MVTec-AD layout, or a synthetic stand-in built from scikit-image's
textures), CutPaste self-supervision (Li et al. 2021, arXiv 2104.04015), a detector fine-tuned from ImageNet
EfficientNet-Lite0 with optax, Gaussian density estimation on its penultimate features, and the CAM evaluation.

Used by `benchmarks/anomaly.py` (the command) and `notebooks/anomaly_cutpaste.ipynb`. Everything random takes a
PRNG key or a numpy seed: a run is deterministic given its seed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxcam
from jaxcam.models.efficientnet_lite import ConvBNAct, MBConv, block_specs

TEXTURES = {"brick": (1.0, 0.72, 0.6), "grass": (0.7, 1.0, 0.6), "gravel": (0.9, 0.9, 0.95)}  # name -> RGB tint
DEFECTS = ("paste", "scratch", "stain", "hole")
CLASSES = ("normal", "cutpaste", "scar")


# ------------------------------------------------------------------------------------------------ data


@dataclasses.dataclass
class Category:
  """One MVTec-AD category: train images (normal only), test images with labels (0 good, 1 defective), defect
  kinds and pixel masks (bool, False for good images). Images are uint8 RGB at one size."""

  name: str
  train: np.ndarray
  test: np.ndarray
  labels: np.ndarray
  kinds: list[str]
  masks: np.ndarray


def _read(path: str, size: int, *, mask: bool = False) -> np.ndarray:
  from PIL import Image

  with Image.open(path) as im:
    if mask:
      return np.asarray(im.convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
    return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def load_mvtec(root: str, size: int) -> Category:
  """A category folder in MVTec-AD's layout: ``train/good/*.png``, ``test/<kind>/*.png`` (``good`` for normal
  images) and ``ground_truth/<kind>/<stem>_mask.png``; images resized to ``size x size`` (masks by nearest)."""

  def pngs(d: str) -> list[str]:
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.lower().endswith((".png", ".jpg", ".jpeg")))

  train_dir = os.path.join(root, "train", "good")
  if not os.path.isdir(train_dir) or not os.path.isdir(os.path.join(root, "test")):
    raise FileNotFoundError(f"Expected an MVTec-AD category folder with train/good and test/, got {root!r}.")
  train = np.stack([_read(p, size) for p in pngs(train_dir)])
  test, labels, kinds, masks = [], [], [], []
  for kind in sorted(os.listdir(os.path.join(root, "test"))):
    for p in pngs(os.path.join(root, "test", kind)):
      test.append(_read(p, size))
      labels.append(int(kind != "good"))
      kinds.append(kind)
      stem = os.path.splitext(os.path.basename(p))[0]
      mpath = os.path.join(root, "ground_truth", kind, f"{stem}_mask.png")
      masks.append(_read(mpath, size, mask=True) if kind != "good" else np.zeros((size, size), bool))
  return Category(os.path.basename(os.path.normpath(root)), train, np.stack(test), np.array(labels), kinds,
                  np.stack(masks))  # fmt: skip


def _texture(name: str) -> np.ndarray:
  import skimage.data

  gray = getattr(skimage.data, name)().astype(np.float32) / 255.0
  return np.clip(gray[..., None] * np.asarray(TEXTURES[name], np.float32), 0, 1)


def _crop(tex: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A random crop of side 1.5 * size (rotated by a multiple of 90 degrees, maybe flipped) resized to size."""
  from PIL import Image

  side = min(int(size * 1.5), tex.shape[0])
  y, x = rng.integers(0, tex.shape[0] - side + 1), rng.integers(0, tex.shape[1] - side + 1)
  c = np.rot90(tex[y : y + side, x : x + side], k=int(rng.integers(4)))
  c = c[:, ::-1] if rng.random() < 0.5 else c
  img = Image.fromarray(np.round(c * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(img)


def _defect(img: np.ndarray, kind: str, donor: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(image with a defect of `kind`, its exact mask)."""
  s = img.shape[0]
  yy, xx = np.mgrid[0:s, 0:s]
  out = img.astype(np.float32)
  if kind == "paste":  # a rectangle from another texture (donor), 3-10 % of the image
    h, w = (int(s * rng.uniform(0.18, 0.32)) for _ in range(2))
    y, x = rng.integers(0, s - h), rng.integers(0, s - w)
    mask = (yy >= y) & (yy < y + h) & (xx >= x) & (xx < x + w)
    out[mask] = donor[mask]
  elif kind == "scratch":  # a thin line at a random angle, dark or bright
    cy, cx, ang = rng.uniform(0.3 * s, 0.7 * s), rng.uniform(0.3 * s, 0.7 * s), rng.uniform(0, np.pi)
    length, width = rng.uniform(0.3 * s, 0.6 * s), max(1.5, s / 64)
    u = (yy - cy) * np.cos(ang) + (xx - cx) * np.sin(ang)
    v = -(yy - cy) * np.sin(ang) + (xx - cx) * np.cos(ang)
    mask = (np.abs(u) <= length / 2) & (np.abs(v) <= width)
    out[mask] = 255.0 * (0.05 if rng.random() < 0.5 else 0.95)
  elif kind == "stain":  # an ellipse whose colour is shifted
    cy, cx = rng.uniform(0.2 * s, 0.8 * s), rng.uniform(0.2 * s, 0.8 * s)
    ry, rx = rng.uniform(0.08 * s, 0.16 * s), rng.uniform(0.08 * s, 0.16 * s)
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    shift = rng.choice([-1, 1]) * np.array([60.0, -40.0, 50.0]) * rng.uniform(0.8, 1.2)
    out[mask] = out[mask] + shift
  elif kind == "hole":  # a dark disc
    cy, cx, r = rng.uniform(0.2 * s, 0.8 * s), rng.uniform(0.2 * s, 0.8 * s), rng.uniform(0.06 * s, 0.12 * s)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    out[mask] = 10.0
  else:
    raise ValueError(f"Expected a defect kind in {DEFECTS}, got {kind!r}.")
  return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


def write_synthetic(root: str, *, size: int, n_train: int, n_good: int, n_defect: int, seed: int = 0,
                    textures: Sequence[str] = tuple(TEXTURES)) -> list[str]:  # fmt: skip
  """Write the synthetic stand-in, one MVTec-AD category folder per texture, under `root`; returns the folders.
  Normal images are random crops/rotations/flips of a tinted scikit-image texture; test defects of every kind in
  `DEFECTS` with exact masks. Deterministic given `seed`."""
  from PIL import Image

  folders = []
  for t, name in enumerate(textures):
    rng = np.random.default_rng([seed, t])
    tex = _texture(name)
    donors = [_texture(o) for o in TEXTURES if o != name]
    folder = os.path.join(root, name)
    folders.append(folder)

    def save(rel: str, arr: np.ndarray, folder: str = folder) -> None:
      os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
      Image.fromarray(arr).save(os.path.join(folder, rel), optimize=False)

    for i in range(n_train):
      save(f"train/good/{i:03d}.png", _crop(tex, size, rng))
    for i in range(n_good):
      save(f"test/good/{i:03d}.png", _crop(tex, size, rng))
    for kind in DEFECTS:
      for i in range(n_defect):
        donor = _crop(donors[int(rng.integers(len(donors)))], size, rng)
        img, mask = _defect(_crop(tex, size, rng), kind, donor, rng)
        save(f"test/{kind}/{i:03d}.png", img)
        save(f"ground_truth/{kind}/{i:03d}_mask.png", mask.astype(np.uint8) * 255)
  return folders


# ------------------------------------------------------------------------------------------------ CutPaste


def color_jitter(key: jax.Array, img: jax.Array, amount: float = 0.1) -> jax.Array:
  """torchvision's ``ColorJitter(0.1, 0.1, 0.1, 0.1)`` as the paper's code uses it: brightness, contrast and
  saturation factors in [1 - a, 1 + a], a hue rotation of up to a * 360 degrees (in YIQ space), on [0, 1] RGB."""
  kb, kc, ks, kh = jax.random.split(key, 4)
  u = lambda k: jax.random.uniform(k, (), minval=1 - amount, maxval=1 + amount)
  img = img * u(kb)
  gray = jnp.mean(img @ jnp.array([0.299, 0.587, 0.114]))
  img = gray + (img - gray) * u(kc)
  lum = (img @ jnp.array([0.299, 0.587, 0.114]))[..., None]
  img = lum + (img - lum) * u(ks)
  theta = jax.random.uniform(kh, (), minval=-amount, maxval=amount) * 2 * jnp.pi
  to_yiq = jnp.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
  rot = jnp.array([[1, 0, 0], [0, jnp.cos(theta), -jnp.sin(theta)], [0, jnp.sin(theta), jnp.cos(theta)]])
  img = img @ (jnp.linalg.inv(to_yiq) @ rot @ to_yiq).T
  return jnp.clip(img, 0.0, 1.0)


def _paste(key: jax.Array, img: jax.Array, scar: bool) -> jax.Array:
  """One CutPaste (a rectangle of 2-15 % of the area, aspect ratio in [0.3, 3.3]) or CutPaste-Scar (a 2-16 px
  wide, 10-25 px long rectangle rotated by up to 45 degrees; sizes scaled to the image from the paper's 256 px)
  cut from `img`, colour-jittered and pasted at another random location. Nearest-neighbour sampling."""
  s = img.shape[0]
  k = jax.random.split(key, 8)
  if scar:
    scale = s / 256
    w = jax.random.uniform(k[0], (), minval=2, maxval=16) * scale
    h = jax.random.uniform(k[1], (), minval=10, maxval=25) * scale
    ang = jax.random.uniform(k[2], (), minval=-jnp.pi / 4, maxval=jnp.pi / 4)
  else:
    area = jax.random.uniform(k[0], (), minval=0.02, maxval=0.15) * s * s
    ratio = jnp.exp(jax.random.uniform(k[1], (), minval=jnp.log(0.3), maxval=jnp.log(1 / 0.3)))
    h, w = jnp.minimum(jnp.sqrt(area * ratio), s - 2), jnp.minimum(jnp.sqrt(area / ratio), s - 2)
    ang = jnp.zeros(())
  half = jnp.sqrt(h * h + w * w) / 2  # keep the rotated patch inside the image
  src = jax.random.uniform(k[3], (2,), minval=half, maxval=s - half)
  dst = jax.random.uniform(k[4], (2,), minval=half, maxval=s - half)
  yy, xx = jnp.mgrid[0:s, 0:s]
  dy, dx = yy + 0.5 - dst[0], xx + 0.5 - dst[1]
  u = dy * jnp.cos(ang) + dx * jnp.sin(ang)
  v = -dy * jnp.sin(ang) + dx * jnp.cos(ang)
  inside = (jnp.abs(u) <= h / 2) & (jnp.abs(v) <= w / 2)
  sy = jnp.clip(jnp.floor(src[0] + u).astype(jnp.int32), 0, s - 1)
  sx = jnp.clip(jnp.floor(src[1] + v).astype(jnp.int32), 0, s - 1)
  patch = color_jitter(k[5], img)[sy, sx]
  return jnp.where(inside[..., None], patch, img)


@jax.jit
def cutpaste_batch(key: jax.Array, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The 3-way batch of the paper: each image as is (label 0), with a CutPaste (1) and with a scar (2)."""
  keys = jax.random.split(key, 2 * images.shape[0]).reshape(2, images.shape[0])
  cut = jax.vmap(lambda k, im: _paste(k, im, False))(keys[0], images)
  scar = jax.vmap(lambda k, im: _paste(k, im, True))(keys[1], images)
  x = jnp.concatenate([images, cut, scar])
  y = jnp.repeat(jnp.arange(3), images.shape[0])
  return x, y


# ------------------------------------------------------------------------------------------------ detector


class Detector(nn.Module):
  """EfficientNet-Lite0 (the same submodule names, so ImageNet weights load) with a 3-way head; returns the
  logits and the penultimate features (the global average of `head`, 1280-d) that the density estimate reads.
  BatchNorm keeps ImageNet's running statistics (fine-tuning in inference mode: stable with small batches). The
  stem and blocks before `trainable_from` are frozen: on 2 CPU cores the backward pass through the early
  depthwise convolutions (large maps) was 6.9 s per step of 48 images at 128 px, most of the training time. The
  stop_gradient changes no forward value, so explanations (which differentiate from `head` on) are unaffected."""

  num_classes: int = 3
  trainable_from: int = 10  # blocks before this one are frozen (stop_gradient): see `train`
  default_layer = "head"
  fc_layer = "fc"
  input_mean = (0.5, 0.5, 0.5)

  @nn.compact
  def __call__(self, x):
    x = (x - 0.5) / 0.5
    x = ConvBNAct(32, 3, 2, name="stem")(x)
    for i, (cin, cout, k, s, e) in enumerate(block_specs(1.0, 1.0)):
      if i == self.trainable_from:
        x = jax.lax.stop_gradient(x)  # no backward pass through the frozen stem and early blocks
      x = MBConv(cin, cout, k, s, e, name=f"blocks_{i}")(x)
    x = ConvBNAct(1280, name="head")(x)
    features = jnp.mean(x, axis=(1, 2))
    return {"logits": nn.Dense(self.num_classes, name="fc")(features), "features": features}


DETECTOR = Detector()  # one instance: taps on it compare equal across categories (nothing recompiles)


def pretrained_detector(key: jax.Array, size: int) -> tuple[Detector, Any]:
  """The detector with EfficientNet-Lite0's ImageNet weights and a fresh 3-way `fc`."""
  base, base_vars = jaxcam.models.efficientnet_lite0(pretrained=True)
  del base
  module = DETECTOR
  fresh = module.init(key, jnp.zeros((1, size, size, 3)))
  params = dict(base_vars["params"])
  params["fc"] = fresh["params"]["fc"]
  return module, {"params": params, "batch_stats": base_vars["batch_stats"]}


def train(module, variables, images: np.ndarray, *, key: jax.Array, steps: int, batch: int = 16, lr: float = 1e-4,
          progress: Callable[[int], None] | None = None) -> tuple[Any, list[float]]:  # fmt: skip
  """Fine-tune on the 3-way CutPaste task with Adam (optax); `images` uint8 normals. Returns (variables, losses)."""
  import optax

  opt = optax.adam(lr)
  params, stats = variables["params"], variables["batch_stats"]
  state = opt.init(params)

  @jax.jit
  def step(params, state, key, idx):
    kb, kf = jax.random.split(key)
    clean = jnp.asarray(images)[idx].astype(jnp.float32) / 255.0
    clean = jnp.where(jax.random.bernoulli(kf, 0.5, (idx.shape[0], 1, 1, 1)), clean[:, :, ::-1], clean)
    x, y = cutpaste_batch(kb, clean)

    def loss_fn(p):
      logits = module.apply({"params": p, "batch_stats": stats}, x)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for i in range(steps):
    k = jax.random.fold_in(key, i)
    idx = jax.random.choice(jax.random.fold_in(k, 1), images.shape[0], (batch,), replace=False)
    params, state, loss = step(params, state, k, idx)
    losses.append(float(loss))
    if progress:
      progress(1)
  return {"params": params, "batch_stats": stats}, losses


# ------------------------------------------------------------------------------------------------ density


@dataclasses.dataclass(frozen=True)
class Gaussian:
  """Gaussian density estimate of normal features: mean ``(D,)`` and precision ``(D, D)`` (Ledoit-Wolf shrunk
  covariance, as the paper's code uses scikit-learn's ``LedoitWolf``)."""

  mean: np.ndarray
  precision: np.ndarray

  def score(self, features: jax.Array) -> jax.Array:
    """Mahalanobis distance of each row of `features` ``(B, D)`` -> ``(B,)`` (the anomaly score)."""
    d = features - jnp.asarray(self.mean, features.dtype)[None, :]
    q = jnp.einsum("bi,ij,bj->b", d, jnp.asarray(self.precision, features.dtype), d)
    return jnp.sqrt(jnp.maximum(q, 0.0))


def ledoit_wolf(x: np.ndarray) -> np.ndarray:
  """Ledoit-Wolf shrunk covariance of rows `x` ``(n, d)`` (the formula of scikit-learn's ``ledoit_wolf``)."""
  x = x - x.mean(0)
  n, d = x.shape
  emp = x.T @ x / n
  mu = np.trace(emp) / d
  x2 = x**2
  beta_ = np.sum(x2.T @ x2) / n - np.sum(emp**2)
  delta = np.sum((emp - mu * np.eye(d)) ** 2)
  beta = min(beta_ / (n * delta), 1.0) if delta > 0 else 0.0
  shrink = beta
  return (1 - shrink) * emp + shrink * mu * np.eye(d)


def fit_gaussian(features: np.ndarray) -> Gaussian:
  cov = ledoit_wolf(np.asarray(features, np.float64))
  return Gaussian(np.asarray(features, np.float64).mean(0), np.linalg.inv(cov))


def features_of(module, variables, images: np.ndarray, batch: int = 32) -> np.ndarray:
  f = jax.jit(lambda v, x: module.apply(v, x)["features"])
  out = [f(variables, jnp.asarray(images[i : i + batch], jnp.float32) / 255.0) for i in range(0, len(images), batch)]
  return np.concatenate([np.asarray(o) for o in out])


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for binary `labels` (Mann-Whitney with average ranks)."""
  return float(jaxcam.metrics.auroc(jnp.asarray(scores, jnp.float32), jnp.asarray(labels, bool)))


# ------------------------------------------------------------------------------------------------ targets


def defect_score(out: Any) -> jax.Array:
  """The classifier's defect log-odds: ``logsumexp(cutpaste, scar) - normal``."""
  logits = out["logits"]
  return jax.nn.logsumexp(logits[:, 1:], axis=-1) - logits[:, 0]


@functools.partial(jax.tree_util.register_dataclass, data_fields=["mean", "precision"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class GdeScore:
  """The GDE anomaly score (Mahalanobis distance of the penultimate features) as a jaxcam target: any object with
  ``evaluate(output) -> (ids, scores (B, K), multi)``. A pytree, so a new category's Gaussian never recompiles."""

  mean: jax.Array
  precision: jax.Array

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    d = output["features"] - self.mean.astype(output["features"].dtype)[None, :]
    q = jnp.einsum("bi,ij,bj->b", d, self.precision.astype(d.dtype), d)
    return None, jnp.sqrt(jnp.maximum(q, 1e-12))[:, None], False


def gde_target(gauss: Gaussian) -> GdeScore:
  return GdeScore(jnp.asarray(gauss.mean, jnp.float32), jnp.asarray(gauss.precision, jnp.float32))


def best_threshold_iou(maps: np.ndarray, masks: np.ndarray) -> float:
  """Mean IoU of ``map >= t`` at the threshold t (one for all images) that maximizes it."""
  loc = jaxcam.metrics.localization(jnp.asarray(maps), jnp.asarray(masks))
  return float(np.nanmax(np.nanmean(np.asarray(loc.iou), axis=0)))


def localization_scores(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
  """Pixel AUROC (mean over images), pointing game (hit rate) and IoU at the best threshold."""
  loc = jaxcam.metrics.localization(jnp.asarray(maps), jnp.asarray(masks))
  hits = jaxcam.metrics.pointing_game(jnp.asarray(maps), jnp.asarray(masks), tolerance=0).hits
  return {
    "pixel_auroc": float(np.nanmean(np.asarray(loc.auroc))),
    "pointing": float(np.mean(np.asarray(hits))),
    "iou": best_threshold_iou(maps, masks),
  }


def method_options(name: str, key: jax.Array) -> dict[str, Any]:
  """Options that keep the many-copy rows affordable on CPU (Faster-Score-CAM's top_n, fewer samples)."""
  spec = jaxcam.get_method(name)
  d = spec.defaults()
  opts: dict[str, Any] = {}
  if "key" in d:
    opts["key"] = key
  if "top_n" in d:
    opts["top_n"] = 64
  if "num_samples" in d and name in ("sscam", "iscam"):
    opts["num_samples"] = 4
  return opts
