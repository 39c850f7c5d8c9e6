"""Gradient-free methods: weights from scores of masked inputs, ablated channels or masked positions.

The row functions here are pure functions of arrays (the scores come from providers in `jaxcam.providers`, which
run the masked forward passes `chunk_size` copies at a time). The helpers that build one masked copy are pure
too, and are what the providers map over:

- Score-CAM (Wang et al. 2020, arXiv 1910.01279): channel k's upsampled, min-maxed map masks the input;
  ``w = softmax_k(S(x * M_k))``.
- SS-CAM (Wang et al. 2020, arXiv 2006.14255) and IS-CAM (Naidu et al. 2020, arXiv 2010.03023): Score-CAM with
  the target scores averaged over noisy masks ``x * (M_k + std * z)`` or over scaled masks ``c_s * x * M_k``.
- Ablation-CAM (Desai & Ramaswamy, WACV 2020): ``w_k = (S - S_k) / S`` with channel k ablated, through the head
  only.
- Recipro-CAM (Byun & Lee 2022, arXiv 2209.14074): the map is the target's probability when the feature map keeps
  only a 3x3 Gaussian-weighted copy of the feature vector at each position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import _spatial, postprocess
from jaxcam.methods.gradient import safe_divide

__all__ = [
  "SCORECAM_CONVENTIONS",
  "ablation_value",
  "ablationcam_weights",
  "iscam_coefficients",
  "iscam_weights",
  "reciprocam_features",
  "reciprocam_map",
  "score_mask",
  "scorecam_weights",
  "sscam_noise",
  "sscam_weights",
  "upsample_align_corners",
]

SCORECAM_CONVENTIONS = ("pgc", "torchcam")
MASK_EPS = 1e-8  # both peers' min-max epsilon for Score-CAM masks
RECIPRO_KERNEL_1D = np.array([1.0, 2.0, 1.0]) / 4.0  # Recipro-CAM's 3x3 kernel is its outer product


def _corner_matrix(n_in: int, n_out: int) -> np.ndarray:
  """``(n_out, n_in)`` weights of 1-D linear interpolation with aligned corners (torch align_corners=True)."""
  if n_out == 1 or n_in == 1:
    mat = np.zeros((n_out, n_in))
    mat[:, 0] = 1.0
    return mat
  src = np.arange(n_out) * (n_in - 1) / (n_out - 1)
  lo = np.minimum(np.floor(src).astype(int), n_in - 2)
  t = src - lo
  mat = np.zeros((n_out, n_in))
  mat[np.arange(n_out), lo] = 1 - t
  mat[np.arange(n_out), lo + 1] += t
  return mat


def upsample_align_corners(maps: jax.Array, size: tuple[int, ...]) -> jax.Array:
  """Bilinear (trilinear for volumes) resize of ``(..., *spatial)`` with aligned corners:
  ``torch.nn.UpsamplingBilinear2d`` (pytorch-grad-cam's Score-CAM masks), unlike `jaxcam.postprocess.upsample`
  (half-pixel centres) used for maps. One interpolation matrix per spatial axis."""
  lead = maps.ndim - len(size)
  for axis, n_out in enumerate(size):
    mat = jnp.asarray(_corner_matrix(maps.shape[lead + axis], n_out), maps.dtype)  # (n_out, n_in)
    moved = jnp.moveaxis(maps, lead + axis, -1)
    maps = jnp.moveaxis(jnp.matmul(moved, mat.T, precision=jax.lax.Precision.HIGHEST), -1, lead + axis)
  return maps


def _min_max(m: jax.Array, eps: float) -> jax.Array:
  """Min-max over all of one channel's axes ``(*spatial)``."""
  lo, hi = _spatial.map_min_max(m, m.ndim)
  return (m - lo) / (hi - lo + eps)


def score_mask(channel: jax.Array, size: tuple[int, ...], *, convention: str = "pgc") -> jax.Array:
  """Score-CAM's mask in [0, 1] from one channel ``(*spatial)`` at input size ``size`` (``(H, W)``, ``(D, H, W)``).

  "pgc" (pytorch-grad-cam 1.5.7 ``ScoreCAM``): upsample with aligned corners, then ``(u - min) / (max - min +
  1e-8)``. "torchcam" (torchcam 0.5.0 ``ScoreCAM``): the same min-max at layer resolution, then half-pixel bilinear
  upsampling. A constant channel gives an all-zero mask (never NaN).
  """
  if convention == "pgc":
    return _min_max(upsample_align_corners(channel, size), MASK_EPS)
  if convention == "torchcam":
    return postprocess.upsample(_min_max(channel, MASK_EPS), size)
  raise ValueError(f"Expected `convention` to be one of {SCORECAM_CONVENTIONS}, got {convention!r}.")


def scorecam_weights(activations: jax.Array, masked_scores: jax.Array, /) -> jax.Array:
  """Score-CAM channel weights: softmax over channels of the target scores of the masked inputs.

  masked_scores ``(B, K, C)``: ``S(x * M_k)``, ``-inf`` for channels that were not scored (Faster-Score-CAM's
  ``top_n``, constant channels), which get weight 0. torchcam subtracts the clean input's score first, a constant
  per image that the softmax removes. ``-> (B, K, C)``.

  >>> import jax.numpy as jnp
  >>> scorecam_weights(None, jnp.array([[[0.0, jnp.log(3.0), -jnp.inf]]])).round(4)
  Array([[[0.25, 0.75, 0.  ]]], dtype=float32)
  """
  del activations
  scored = jnp.isfinite(masked_scores).any(axis=-1, keepdims=True)  # all constant: every weight 0, never NaN
  weights = jax.nn.softmax(jnp.where(scored, masked_scores, 0.0), axis=-1)
  return jnp.where(scored, weights, 0.0)


def gscorecam_weights(activations: jax.Array, gradient_masked_scores: jax.Array, /) -> jax.Array:
  """gScoreCAM channel weights: Score-CAM's softmax over the target scores of the masked inputs of the `k`
  channels (default 300) with the largest spatial mean gradient; the other channels weigh 0. ``-> (B, K, C)``.

  Chen et al., "gScoreCAM: What objects is CLIP looking at?", ACCV 2022 (made for CLIP: about a tenth of the
  channels, 8-10x faster than Score-CAM for a similar map). As the authors' code, channels are ranked by their
  signed mean gradient and masked with Score-CAM's aligned-corner upsampling; it then puts the chosen scores into a
  vector of zeros before the softmax, so every channel it did not score still weighs ``e^0 / Z``; jaxcam gives those
  channels weight 0, Score-CAM over the chosen channels as the paper describes.
  """
  return scorecam_weights(activations, gradient_masked_scores)


def sscam_noise(key: jax.Array, sample: jax.Array, channel: jax.Array, size: tuple[int, ...], dtype) -> jax.Array:
  """SS-CAM's standard normal noise ``(H, W)`` for one sample and one layer channel:
  ``jax.random.normal(fold_in(fold_in(key, sample), channel), size)``. It does not depend on the image, so an image
  gets the same draws alone or in any batch (torchcam draws from the global RNG per sample, image and channel)."""
  return jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, sample), channel), size, dtype)


def sscam_weights(activations: jax.Array, noisy_masked_scores: jax.Array, /) -> jax.Array:
  """SS-CAM channel weights: softmax over channels of the target scores averaged over noisy masks.

  Wang et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization", arXiv 2006.14255. As
  torchcam 0.5.0's ``SSCAM`` (defaults num_samples 35, std 2.0, its mask convention): ``w = softmax_k(mean_s
  S(x * (M_k + std * z_sk)))`` with M_k min-maxed at layer resolution, upsampled (half-pixel), and standard
  normal noise z at input resolution drawn from an explicit key (`sscam_noise`), or passed in as ``noise``. The
  clean score torchcam subtracts is a constant per image, which the softmax removes. A constant channel gets
  weight 0 (torchcam scores its noise-only mask). ``noisy_masked_scores (B, K, C) -> (B, K, C)``.
  """
  return scorecam_weights(activations, noisy_masked_scores)


def iscam_coefficients(num_samples: int) -> np.ndarray:
  """IS-CAM's input scales ``c_s = sum_{j<=s} j / N = s (s + 1) / (2 N)`` for s = 1..N, as torchcam 0.5.0's
  ``ISCAM`` accumulates them (``coeff += (s + 1) / N``), not the paper's ``s / N``: the last copy is the input
  scaled by (N + 1) / 2.

  >>> iscam_coefficients(4).tolist()
  [0.25, 0.75, 1.5, 2.5]
  """
  s = np.arange(1, num_samples + 1, dtype=np.float64)
  return s * (s + 1) / (2 * num_samples)


def iscam_weights(activations: jax.Array, integrated_masked_scores: jax.Array, /) -> jax.Array:
  """IS-CAM channel weights: softmax over channels of the target scores averaged over scaled masked inputs.

  Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based explanations", arXiv 2010.03023. As torchcam
  0.5.0's ``ISCAM`` (default num_samples 10, its mask convention): ``w = softmax_k(mean_s S(c_s * x * M_k))`` with
  the cumulative coefficients of `iscam_coefficients`. A constant channel gets weight 0.
  ``integrated_masked_scores (B, K, C) -> (B, K, C)``.
  """
  return scorecam_weights(activations, integrated_masked_scores)


def ablation_value(activations: jax.Array) -> jax.Array:
  """The value an ablated channel takes for one image ``(h, w, C)``: 0 when the image's activations have minimum
  0 (after a ReLU), else that minimum minus 1e7 (pytorch-grad-cam's rule). pytorch-grad-cam re-reads the minimum
  after each write, so its i-th copy in a batch gets ``min - (i + 1) * 1e7``; jaxcam uses ``min - 1e7`` for all."""
  lo = jnp.min(activations)
  return jnp.where(lo == 0, jnp.zeros_like(lo), lo - 1e7)


def ablationcam_weights(activations: jax.Array, ablated_scores: jax.Array, scores: jax.Array, /) -> jax.Array:
  """Ablation-CAM channel weights ``w_k = (S - S_k) / S``; 0 where ``S == 0`` (never a division by zero).

  ablated_scores ``(B, K, C)``: the target score with channel k ablated; scores ``(B, K)``: the clean score.
  Matches pytorch-grad-cam's ``AblationCAM`` (which re-runs the whole network per ablated copy; jaxcam runs only
  the head, from the layer on).

  >>> import jax.numpy as jnp
  >>> ablationcam_weights(None, jnp.array([[[1.0, 2.0]]]), jnp.array([[2.0]]))
  Array([[[0.5, 0. ]]], dtype=float32)
  """
  del activations
  s = scores[..., None]
  return safe_divide(s - ablated_scores, jnp.broadcast_to(s, ablated_scores.shape))


def reciprocam_features(activations: jax.Array, position: jax.Array) -> jax.Array:
  """Recipro-CAM's feature map for one image ``(*spatial, C)`` and one flat position: zero except the 3x3 (3x3x3
  for volumes) neighbourhood of that position, which holds the *centre* feature vector times the Gaussian kernel
  ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16`` (the outer product of ``[1, 2, 1] / 4`` per axis; clipped at the
  borders), as the authors' code does."""
  size = activations.shape[:-1]
  centre = jnp.unravel_index(position, size)
  taps_1d = jnp.asarray(RECIPRO_KERNEL_1D, activations.dtype)
  weight = jnp.ones((), activations.dtype)
  for axis, (n, c) in enumerate(zip(size, centre)):
    d = jnp.arange(n) - c
    along = jnp.where(jnp.abs(d) <= 1, taps_1d[jnp.clip(d + 1, 0, 2)], 0.0)  # (n,)
    shape = [1] * len(size)
    shape[axis] = n
    weight = weight * along.reshape(shape)
  return weight[..., None] * activations[centre][(None,) * len(size)]


def reciprocam_map(activations: jax.Array, position_scores: jax.Array, /) -> jax.Array:
  """Recipro-CAM map: the target's score (softmax probability for class ids) per position, ``(B, K, h, w)``.

  Byun & Lee, "Recipro-CAM: Fast gradient-free visual explanations for convolutional neural networks",
  arXiv 2209.14074 (no peer library has it; tested against a numpy reference written from the paper).
  """
  del activations
  return position_scores
