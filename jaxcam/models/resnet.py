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
  """torchvision ResNet (v1.5: stride on the 3x3 conv of bottlenecks); default layer "layer4".

  Input: float ``(B, H, W, 3)`` in [0, 1] (ImageNet mean/std normalization is inside); output: logits
  ``(B, num_classes)``. Class attributes: ``default_layer`` ("layer4"), ``fc_layer`` ("fc", for classic CAM),
  ``head_structure`` ("gap_dense") and ``input_mean`` (what normalization maps to 0: the fill of masked pixels).

  Args:
    block: the residual block, ``jaxcam.models.resnet.BasicBlock`` (ResNet-18/34) or ``Bottleneck`` (ResNet-50
      and deeper, 4x channel expansion).
    layers: the number of blocks in each of the four stages ``layer1`` ... ``layer4`` (ResNet-18: (2, 2, 2, 2),
      ResNet-50: (3, 4, 6, 3)).
    num_classes: the outputs of the final Dense layer ``fc``.
    input_size: the square input size the weights were trained at (informative: any size runs).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam.models import ResNet
    >>> net = ResNet(layers=(1, 1, 1, 1), num_classes=3)  # BasicBlock, one per stage
    >>> x = jnp.zeros((1, 32, 32, 3))
    >>> variables = jax.eval_shape(net.init, jax.random.key(0), x)  # the shapes only: nothing is computed
    >>> jax.eval_shape(net.apply, variables, x).shape, variables["params"]["fc"]["kernel"].shape
    ((1, 3), (512, 3))
  """

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
  """torch's AdaptiveAvgPool2d on (B, H, W, C): bin i spans [floor(i H / n), ceil((i + 1) H / n)).

  Args:
    x: feature maps ``(B, H, W, C)``.
    size: the output size ``(h, w)``.

  Returns:
    ``(B, h, w, C)``, each cell the mean of its bin (bins may overlap when ``h`` does not divide ``H``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.models.resnet import adaptive_avg_pool
    >>> x = jnp.arange(4.0).reshape(1, 2, 2, 1)
    >>> adaptive_avg_pool(x, (1, 1)).ravel().tolist(), adaptive_avg_pool(x, (3, 3)).shape
    ([1.5], (1, 3, 3, 1))
  """

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

  Input: float ``(B, H, W, 3)`` in [0, 1] (ImageNet mean/std normalization is inside); output: logits
  ``(B, num_classes)``. Submodules are named as torchvision's indices: conv + ReLU ``features_<i>`` (the path
  "features/28" matches linen's "features_28"), Dense layers ``classifier_0``, ``classifier_3``, ``classifier_6``.

  Args:
    cfg: the feature extractor: an int is a 3x3 conv + ReLU with that many channels, "M" a 2x2 max pool
      (default: VGG-16's 13 convolutions and 5 pools).
    num_classes: the outputs of the last Dense layer.
    input_size: the square input size the weights were trained at (informative: any size runs).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam.models import VGG
    >>> net = VGG(cfg=(8, "M", 16, "M"), num_classes=3)  # two conv + ReLU blocks, then VGG's head
    >>> x = jnp.zeros((1, 16, 16, 3))
    >>> variables = jax.eval_shape(net.init, jax.random.key(0), x)  # the shapes only: nothing is computed
    >>> sorted(variables["params"]), jax.eval_shape(net.apply, variables, x).shape
    (['classifier_0', 'classifier_3', 'classifier_6', 'features_0', 'features_3'], (1, 3))
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
  """Flax variables from a torchvision ResNet state dict (every key and shape checked).

  Conv weights go from torch's ``(O, I, kh, kw)`` to ``(kh, kw, I, O)``, Linear weights are transposed, BatchNorm's
  weight/bias/running_mean/running_var become ``params`` scale/bias and ``batch_stats`` mean/var;
  ``num_batches_tracked`` is ignored.

  Args:
    state_dict: ``{torchvision key: numpy array}``, e.g. from `jaxcam.io.load_state_dict`.
    module: the `ResNet` the weights are for (its blocks and stages must match the checkpoint's).
    input_size: the side of the dummy input whose abstract ``init`` gives the expected shapes (nothing is
      computed; any size the network accepts).

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``module.apply``.

  Raises:
    ValueError: a key the module has no variable for, a variable the state dict leaves without weights, or a
      shape that does not match (the keys named).

  Examples:
    >>> import numpy as np
    >>> from jaxcam.models import ResNet, convert_resnet
    >>> stem = ResNet(layers=(0, 0, 0, 0), num_classes=2)  # no blocks: conv1, bn1 and fc only
    >>> sd = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.weight": np.zeros((2, 64), np.float32)}
    >>> sd |= {"fc.bias": np.zeros(2, np.float32), "bn1.num_batches_tracked": np.array(0)}
    >>> sd |= {f"bn1.{k}": np.ones(64, np.float32) for k in ("weight", "bias", "running_mean", "running_var")}
    >>> variables = convert_resnet(sd, stem)
    >>> variables["params"]["conv1"]["kernel"].shape, sorted(variables["batch_stats"]["bn1"])
    ((7, 7, 3, 64), ['mean', 'var'])
    >>> convert_resnet({k: v for k, v in sd.items() if k != "fc.bias"}, stem)
    Traceback (most recent call last):
    ...
    ValueError: ResNet: Flax variables left without weights: ['params/fc/bias'].
  """
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
  """Flax variables from a torchvision VGG state dict (every key and shape checked).

  ``features.<i>.weight`` / ``bias`` go to the conv of ``features_<i>`` (torch's ``(O, I, kh, kw)`` to
  ``(kh, kw, I, O)``), ``classifier.<i>.*`` to the Dense layer ``classifier_<i>`` (transposed).

  Args:
    state_dict: ``{torchvision key: numpy array}``, e.g. from `jaxcam.io.load_state_dict`.
    module: the `VGG` the weights are for (its ``cfg`` must match the checkpoint's).
    input_size: the side of the dummy input whose abstract ``init`` gives the expected shapes (nothing is
      computed; at least 2^(number of pools)).

  Returns:
    ``{"params": ...}`` for ``module.apply``.

  Raises:
    ValueError: a key the module has no variable for, a variable the state dict leaves without weights, or a
      shape that does not match (the keys named).

  Examples:
    >>> import numpy as np
    >>> from jaxcam.models import VGG, convert_vgg
    >>> net = VGG(cfg=(4, "M"), num_classes=2)  # one conv + ReLU, a pool, VGG's head
    >>> shapes = {"features.0": (4, 3, 3, 3), "classifier.0": (4096, 4 * 7 * 7), "classifier.3": (4096, 4096)}
    >>> shapes["classifier.6"] = (2, 4096)
    >>> sd = {f"{k}.{leaf}": np.zeros(s if leaf == "weight" else s[:1], np.float32)
    ...       for k, s in shapes.items() for leaf in ("weight", "bias")}
    >>> variables = convert_vgg(sd, net)
    >>> params = variables["params"]
    >>> params["features_0"]["conv"]["kernel"].shape, params["classifier_6"]["kernel"].shape
    ((3, 3, 3, 4), (4096, 2))
  """
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
  """``(module, variables)``; `weights`: a torchvision resnet18 checkpoint path or state dict.

  ResNet-18 (`ResNet` with BasicBlock, (2, 2, 2, 2)). No package ships its weights and jaxcam never downloads:
  for ImageNet weights, pass the torchvision checkpoint you downloaded,
  ``resnet18(weights="resnet18-<hash>.pth")`` (read by `jaxcam.io.load_state_dict`, without torch).

  Args:
    pretrained: True requires `weights` (there are no packaged weights); False with no `weights`: random weights.
    weights: a checkpoint path (.pth/.pt/.bin, .safetensors, .npz) or a torchvision state dict
      ``{key: numpy array}``; None: random weights.
    key: the PRNG key of the random weights (default ``jax.random.key(0)``); unused with `weights`.
    num_classes: the outputs of the last Dense layer (a checkpoint's must match).

  Returns:
    ``(module, variables)``: the flax.linen module and its variables for ``module.apply``.

  Raises:
    ValueError: ``pretrained=True`` without `weights`, or weights whose keys or shapes do not match the model.
    TypeError: `pretrained` is not a bool.
    FileNotFoundError: a `weights` path that does not exist.
    jaxcam.io.CheckpointError: a `weights` file that cannot be read (corrupt, truncated, over its byte budget).
    jaxcam.io.UnsafeCheckpointError: a `weights` pickle that asks for anything but tensors (nothing is run).

  Examples:
    >>> import jax
    >>> from jaxcam.models import resnet18
    >>> variables = jax.eval_shape(lambda: resnet18(num_classes=10)[1])  # random weights, as shapes (nothing run)
    >>> variables["params"]["fc"]["kernel"].shape
    (512, 10)
    >>> resnet18(pretrained=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: No package ships resnet18 weights, and jaxcam never downloads. ...
  """
  _no_packaged_weights("resnet18", pretrained, weights)
  return _build(ResNet(BasicBlock, (2, 2, 2, 2), num_classes), convert_resnet, weights, key)


def resnet50(*, pretrained: bool = False, weights: Any = None, key: jax.Array | None = None, num_classes: int = 1000):
  """``(module, variables)``; `weights`: a torchvision resnet50 checkpoint path or state dict.

  ResNet-50 (`ResNet` with Bottleneck, (3, 4, 6, 3)). No package ships its weights and jaxcam never downloads:
  for ImageNet weights, pass the torchvision checkpoint you downloaded,
  ``resnet50(weights="resnet50-<hash>.pth")`` (read by `jaxcam.io.load_state_dict`, without torch).

  Args:
    pretrained: True requires `weights` (there are no packaged weights); False with no `weights`: random weights.
    weights: a checkpoint path (.pth/.pt/.bin, .safetensors, .npz) or a torchvision state dict
      ``{key: numpy array}``; None: random weights.
    key: the PRNG key of the random weights (default ``jax.random.key(0)``); unused with `weights`.
    num_classes: the outputs of the last Dense layer (a checkpoint's must match).

  Returns:
    ``(module, variables)``: the flax.linen module and its variables for ``module.apply``.

  Raises:
    ValueError: ``pretrained=True`` without `weights`, or weights whose keys or shapes do not match the model.
    TypeError: `pretrained` is not a bool.
    FileNotFoundError: a `weights` path that does not exist.
    jaxcam.io.CheckpointError: a `weights` file that cannot be read (corrupt, truncated, over its byte budget).
    jaxcam.io.UnsafeCheckpointError: a `weights` pickle that asks for anything but tensors (nothing is run).

  Examples:
    >>> import jax
    >>> from jaxcam.models import resnet50
    >>> variables = jax.eval_shape(lambda: resnet50(num_classes=10)[1])  # random weights, as shapes (nothing run)
    >>> variables["params"]["fc"]["kernel"].shape
    (2048, 10)
    >>> resnet50(pretrained=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: No package ships resnet50 weights, and jaxcam never downloads. ...
  """
  _no_packaged_weights("resnet50", pretrained, weights)
  return _build(ResNet(Bottleneck, (3, 4, 6, 3), num_classes), convert_resnet, weights, key)


def vgg16(*, pretrained: bool = False, weights: Any = None, key: jax.Array | None = None, num_classes: int = 1000):
  """``(module, variables)``; `weights`: a torchvision vgg16 checkpoint path or state dict.

  VGG-16 (`VGG`). No package ships its weights and jaxcam never downloads:
  for ImageNet weights, pass the torchvision checkpoint you downloaded,
  ``vgg16(weights="vgg16-<hash>.pth")`` (read by `jaxcam.io.load_state_dict`, without torch).

  Args:
    pretrained: True requires `weights` (there are no packaged weights); False with no `weights`: random weights.
    weights: a checkpoint path (.pth/.pt/.bin, .safetensors, .npz) or a torchvision state dict
      ``{key: numpy array}``; None: random weights.
    key: the PRNG key of the random weights (default ``jax.random.key(0)``); unused with `weights`.
    num_classes: the outputs of the last Dense layer (a checkpoint's must match).

  Returns:
    ``(module, variables)``: the flax.linen module and its variables for ``module.apply``.

  Raises:
    ValueError: ``pretrained=True`` without `weights`, or weights whose keys or shapes do not match the model.
    TypeError: `pretrained` is not a bool.
    FileNotFoundError: a `weights` path that does not exist.
    jaxcam.io.CheckpointError: a `weights` file that cannot be read (corrupt, truncated, over its byte budget).
    jaxcam.io.UnsafeCheckpointError: a `weights` pickle that asks for anything but tensors (nothing is run).

  Examples:
    >>> import jax
    >>> from jaxcam.models import vgg16
    >>> variables = jax.eval_shape(lambda: vgg16(num_classes=10)[1])  # random weights, as shapes (nothing run)
    >>> variables["params"]["classifier_6"]["kernel"].shape
    (4096, 10)
    >>> vgg16(pretrained=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: No package ships vgg16 weights, and jaxcam never downloads. ...
  """
  _no_packaged_weights("vgg16", pretrained, weights)
  return _build(VGG(num_classes=num_classes), convert_vgg, weights, key)
