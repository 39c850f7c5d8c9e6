"""A drop-in 2-D convolution for the shipped models, lowered the way each case runs fastest.

XLA's CPU backend is slow on two kinds of convolution that these convnets are made of (measured on this
project's 2-core x86 machine, batch 16, `benchmarks/convs.py`):

- depthwise (``feature_group_count == channels``, EfficientNet's MBConv): 7-32x slower than the same
  arithmetic written as k*k shifted, channel-broadcast multiply-adds, which XLA fuses into one loop;
- 1x1 (ResNet's bottlenecks): up to 3x slower than the same contraction written as a matrix product
  (`lax.dot_general`), which XLA hands to its GEMM kernels.

`Conv` computes the same function as ``flax.linen.Conv`` (same parameter names, shapes and initializers, so
checkpoints and paths are unchanged) and picks the lowering:

- 1x1 convolutions are dot products on every platform (a strided 1x1 convolution samples first);
- depthwise convolutions are shifted multiply-adds on CPU only (`jax.lax.platform_dependent`), and XLA's
  grouped convolution elsewhere (cuDNN / TPU convolutions are already fast);
- everything else is ``lax.conv_general_dilated``.

Only the order of float32 additions differs (results agree with ``nn.Conv`` to ~1e-6 relative); no
precision is lowered. Everything is traceable and differentiable to any order (`jax.grad`, `jax.jvp`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["Conv", "same_padding", "depthwise_shifted", "conv2d"]

_DIMS = ("NHWC", "HWIO", "NHWC")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow "SAME" padding ``(before, after)`` of one spatial axis (the extra pixel goes after)."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _pads(x_shape, kernel: int, stride: int, padding) -> tuple[tuple[int, int], tuple[int, int]]:
  if padding == "SAME":
    return same_padding(x_shape[1], kernel, stride), same_padding(x_shape[2], kernel, stride)
  if isinstance(padding, int):
    return (padding, padding), (padding, padding)
  (a, b), (c, d) = padding
  return (a, b), (c, d)


def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int, pads) -> jax.Array:
  """Depthwise convolution as a sum of k*k shifted slices times per-channel weights.

  `x` ``(B, H, W, C)``, `kernel` ``(k, k, 1, C)``; `pads` ``((top, bottom), (left, right))``.
  Returns ``(B, Ho, Wo, C)``, equal to ``lax.conv_general_dilated(..., feature_group_count=C)``.
  """
  b, _, _, c = x.shape
  kh, kw = kernel.shape[:2]
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  ho = (xp.shape[1] - kh) // stride + 1
  wo = (xp.shape[2] - kw) // stride + 1
  out: jax.Array | None = None
  for i in range(kh):
    for j in range(kw):
      tap = lax.slice(
        xp, (0, i, j, 0), (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c), (1, stride, stride, 1)
      )
      term = tap * kernel[i, j].reshape(1, 1, 1, c)
      out = term if out is None else out + term
  assert out is not None  # kh, kw >= 1
  return out


def _xla_conv(x, kernel, stride, pads, groups):
  return lax.conv_general_dilated(
    x, kernel, (stride, stride), pads, dimension_numbers=_DIMS, feature_group_count=groups
  )


def conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: Any = "SAME", groups: int = 1) -> jax.Array:
  """Channels-last 2-D convolution with the fastest lowering per case (see the module docstring).

  `x` ``(B, H, W, Cin)``, `kernel` ``(kh, kw, Cin // groups, Cout)``; `padding` "SAME" (TensorFlow's), an int
  (symmetric) or ``((top, bottom), (left, right))``.
  """
  kh, kw, cin_g, cout = kernel.shape
  if kh != kw:
    raise ValueError(f"Expected `kernel` to be square, got spatial shape {(kh, kw)}.")
  pads = _pads(x.shape, kh, stride, padding)
  dtype = jnp.result_type(x, kernel)  # flax's promotion: a bfloat16 input with float32 weights runs in float32
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if kh == 1 and groups == 1 and pads == ((0, 0), (0, 0)):
    if stride > 1:
      x = x[:, ::stride, ::stride]
    return lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())))
  if groups > 1 and groups == x.shape[-1] and cin_g == 1 and cout == groups:
    return lax.platform_dependent(
      x,
      kernel,
      cpu=lambda x, k: depthwise_shifted(x, k, stride, pads),
      default=lambda x, k: _xla_conv(x, k, stride, pads, groups),
    )
  return _xla_conv(x, kernel, stride, pads, groups)


class Conv(nn.Module):
  """``nn.Conv`` for square kernels with the same parameters ("kernel" ``(k, k, Cin // groups, Cout)``,
  optional "bias"), lowered by `conv2d`."""

  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: Any = "SAME"
  feature_group_count: int = 1
  use_bias: bool = False

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    if cin % self.feature_group_count:
      raise ValueError(
        f"Expected the input channels ({cin}) to be divisible by `feature_group_count`, got {self.feature_group_count}."
      )
    kernel = self.param(
      "kernel",
      nn.initializers.lecun_normal(),
      (self.kernel_size, self.kernel_size, cin // self.feature_group_count, self.features),
      jnp.float32,
    )
    y = conv2d(x, kernel, stride=self.strides, padding=self.padding, groups=self.feature_group_count)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32).reshape(1, 1, 1, -1)
    return y
