"""ResNet-18/50 and VGG-16 (torchvision layouts) in Flax linen, with converters from torchvision state dicts.

Paths mirror torchvision's module names: ``layer4``, ``layer4/1``, ``layer4/1/conv2``; VGG's ``features/28``
(conv + ReLU wrapped together, so the map is post-activation). Weights: load a torchvision checkpoint you
downloaded with `jaxcam.io.load_state_dict` and pass it as ``weights=`` (a path or a state dict); no network.
Inputs: float (B, H, W, 3) in [0, 1]; ImageNet mean/std normalization is inside the models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcam._constants import IMAGENET_MEAN, IMAGENET_STD
from jaxcam.models import convert
from jaxcam.models.layers import Conv

__all__ = ["ResNet", "VGG", "resnet18", "resnet50", "vgg16", "convert_resnet", "convert_vgg", "adaptive_avg_pool"]


def _normalize(x):
  mean = jnp.asarray(IMAGENET_MEAN, x.dtype).reshape(1, 1, 1, 3)
  std = jnp.asarray(IMAGENET_STD, x.dtype).reshape(1, 1, 1, 3)
  return (x - mean) / std


def _conv(features, kernel, strides=1, name=None, bias=False):
  pad = kernel // 2
  return Conv(features, kernel, strides, pad, use_bias=bias, name=name)


def _bn(name):
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
  features: int
  strides: int = 1
  downsample: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_bn("bn1")(_conv(self.features, 3, self.strides, "conv1")(x)))
    y = _bn("bn2")(_conv(self.features, 3, 1, "conv2")(y))
    if self.downsample:
      x = DownSample(self.features, self.strides, name="downsample")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  features: int
  strides: int = 1
  downsample: bool = False
  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_bn("bn1")(_conv(self.features, 1, 1, "conv1")(x)))
    y = nn.relu(_bn("bn2")(_conv(self.features, 3, self.strides, "conv2")(y)))
    y = _bn("bn3")(_conv(self.features * 4, 1, 1, "conv3")(y))
    if self.downsample:
      x = DownSample(self.features * 4, self.strides, name="downsample")(x)
    return nn.relu(x + y)


class DownSample(nn.Module):
  features: int
  strides: int

  @nn.compact
  def __call__(self, x):
    return _bn("1")(_conv(self.features, 1, self.strides, "0")(x))


class Stage(nn.Module):
  block: Any
  features: int
  blocks: int
  strides: int
  cin: int

  @nn.compact
  def __call__(self, x):
    for i in range(self.blocks):
      s = self.strides if i == 0 else 1
      down = i == 0 and (s != 1 or self.cin != self.features * self.block.expansion)
      x = self.block(self.features, s, down, name=str(i))(x)
    return x


class ResNet(nn.Module):
  """torchvision ResNet (v1.5: stride on the 3x3 conv of bottlenecks); default layer "layer4"."""

  block: Any = BasicBlock
  layers: Sequence[int] = (2, 2, 2, 2)
  num_classes: int = 1000
  input_size: int = 224

  default_layer = "layer4"
  fc_layer = "fc"
  head_structure = "gap_dense"
  input_mean = IMAGENET_MEAN  # what normalization maps to 0: the fill of masked pixels (Score-CAM family)

  @nn.compact
  def __call__(self, x):
    x = _normalize(x)
    x = nn.relu(_bn("bn1")(_conv(64, 7, 2, "conv1")(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    cin = 64
    for i, (n, f) in enumerate(zip(self.layers, (64, 128, 256, 512))):
      x = Stage(self.block, f, n, 1 if i == 0 else 2, cin, name=f"layer{i + 1}")(x)
      cin = f * self.block.expansion
    return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


def adaptive_avg_pool(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torch's AdaptiveAvgPool2d on (B, H, W, C): bin i spans [floor(i H / n), ceil((i + 1) H / n))."""

  def matrix(n_in, n_out):
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
      lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
      m[i, lo:hi] = 1.0 / (hi - lo)
    return jnp.asarray(m, x.dtype)

  return jnp.einsum(
    "Hh,bhwc,Ww->bHWc", matrix(x.shape[1], size[0]), x, matrix(x.shape[2], size[1]), precision=jax.lax.Precision.HIGHEST
  )


class ConvReLU(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(_conv(self.features, 3, 1, "conv", bias=True)(x))


_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
  """torchvision VGG-16 (no BN); default layer "features/28" (conv5_3 + ReLU, the Grad-CAM paper's layer).

  The head (adaptive pooling, flatten, three Dense layers) is not global pooling + Dense: classic CAM refuses
  it, the gradient methods work.
  """

  cfg: Sequence[Any] = _VGG16
  num_classes: int = 1000
  input_size: int = 224

  default_layer = "features/28"
  head_structure = "generic"
  input_mean = IMAGENET_MEAN

  @nn.compact
  def __call__(self, x):
    x = _normalize(x)
    idx = 0
    for v in self.cfg:
      if v == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        idx += 1
      else:
        x = ConvReLU(v, name=f"features_{idx}")(x)
        idx += 2
    x = adaptive_avg_pool(x, (7, 7))
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch flattens (C, H, W)
    x = nn.relu(nn.Dense(4096, name="classifier_0")(x))
    x = nn.relu(nn.Dense(4096, name="classifier_3")(x))
    return nn.Dense(self.num_classes, name="classifier_6")(x)


_BN = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


def convert_resnet(state_dict: dict[str, np.ndarray], module: ResNet, input_size: int = 64) -> dict[str, Any]:
  """Flax variables from a torchvision ResNet state dict (every key and shape checked)."""
  mapping = {}
  for key in state_dict:
    if key.endswith("num_batches_tracked"):
      continue
    *mods, leaf = key.split(".")
    path = tuple(mods)
    is_bn = any(m.startswith("bn") for m in mods[-1:]) or (
      len(mods) >= 2 and mods[-2] == "downsample" and mods[-1] == "1"
    )
    if is_bn:
      coll, name = _BN[leaf]
      mapping[key] = (coll, path + (name,))
    else:
      mapping[key] = ("params", path + ({"weight": "kernel", "bias": "bias"}[leaf],))
  return convert.convert_state_dict(state_dict, module, mapping, (1, input_size, input_size, 3), model_name="ResNet")


def convert_vgg(state_dict: dict[str, np.ndarray], module: VGG, input_size: int = 32) -> dict[str, Any]:
  """Flax variables from a torchvision VGG state dict (every key and shape checked)."""
  mapping = {}
  for key in state_dict:
    part, idx, leaf = key.split(".")
    sub = ("conv",) if part == "features" else ()
    mapping[key] = ("params", (f"{part}_{idx}",) + sub + ({"weight": "kernel", "bias": "bias"}[leaf],))
  return convert.convert_state_dict(state_dict, module, mapping, (1, input_size, input_size, 3), model_name="VGG")


def _build(module, converter, weights, key):
  from jaxcam import io

  if weights is None:
    key = jax.random.key(0) if key is None else key
    return module, jax.jit(module.init)(key, jnp.zeros((1, 64, 64, 3), jnp.float32))
  state = io.load_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else weights
  return module, converter(state, module)


def _no_packaged_weights(name: str, pretrained: bool, weights: Any) -> None:
  from jaxcam._checks import check_bool

  check_bool("pretrained", pretrained)
  if pretrained and weights is None:
    raise ValueError(
      f"No package ships {name} weights, and jaxcam never downloads. Pass `weights=` a torchvision checkpoint "
      f"you downloaded (e.g. weights='{name}-*.pth'), or pretrained=False for random weights."
    )


def resnet18(*, pretrained: bool = False, weights: Any = None, key: jax.Array | None = None, num_classes: int = 1000):
  """``(module, variables)``; `weights`: a torchvision resnet18 checkpoint path or state dict."""
  _no_packaged_weights("resnet18", pretrained, weights)
  return _build(ResNet(BasicBlock, (2, 2, 2, 2), num_classes), convert_resnet, weights, key)


def resnet50(*, pretrained: bool = False, weights: Any = None, key: jax.Array | None = None, num_classes: int = 1000):
  """``(module, variables)``; `weights`: a torchvision resnet50 checkpoint path or state dict."""
  _no_packaged_weights("resnet50", pretrained, weights)
  return _build(ResNet(Bottleneck, (3, 4, 6, 3), num_classes), convert_resnet, weights, key)


def vgg16(*, pretrained: bool = False, weights: Any = None, key: jax.Array | None = None, num_classes: int = 1000):
  """``(module, variables)``; `weights`: a torchvision vgg16 checkpoint path or state dict."""
  _no_packaged_weights("vgg16", pretrained, weights)
  return _build(VGG(num_classes=num_classes), convert_vgg, weights, key)
