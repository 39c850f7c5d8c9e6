"""Separable Gaussian filtering shared by SESS's final blur, the RISE blur baseline and SSIM's window."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["gaussian_kernel", "separable_filter"]


def gaussian_kernel(size: int = 11, sigma: float = 5.0) -> np.ndarray:
  """``cv2.getGaussianKernel(size, sigma)``: normalized ``exp(-(i - c)^2 / (2 sigma^2))``."""
  i = np.arange(size) - (size - 1) / 2
  k = np.exp(-(i**2) / (2 * sigma**2))
  return k / k.sum()


def separable_filter(x: jax.Array, kernel: np.ndarray, *, axes: Sequence[int], mode: str) -> jax.Array:
  """Correlate `x` with the 1-D `kernel` along each of `axes` in turn; ``mode="reflect"`` keeps the size (borders
  reflected without repeating the edge: cv2's BORDER_REFLECT_101), ``mode="valid"`` keeps the positions where the
  kernel fits."""
  if mode not in ("reflect", "valid"):
    raise ValueError(f"Expected `mode` 'reflect' or 'valid', got {mode!r}.")
  k = jnp.asarray(kernel, x.dtype)
  n = len(kernel)
  axes = [a % x.ndim for a in axes]
  if mode == "reflect":
    pad = [(0, 0)] * x.ndim
    for a in axes:
      pad[a] = ((n - 1) // 2, n // 2)
    x = jnp.pad(x, pad, mode="reflect")
  for a in axes:
    length = x.shape[a] - n + 1
    acc = jnp.zeros(x.shape[:a] + (length,) + x.shape[a + 1 :], x.dtype)
    for i in range(n):
      acc = acc + k[i] * jax.lax.slice_in_dim(x, i, i + length, axis=a)
    x = acc
  return x
