"""Factorization methods: maps from the first principal component of the activations (SVD on device)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcam import _spatial

__all__ = [
  "KERNELS",
  "eigencam_map",
  "eigengradcam_map",
  "first_component_projection",
  "kpcacam_map",
  "segeigencam_map",
]

SIGN_RULES = ("energy", "extreme")


def one_matrix_at_a_time(fn, x: jax.Array):
  """`fn` (a LAPACK decomposition) over the leading axes of ``x`` ``(..., n, m)``, one matrix per call (`lax.map`).

  jaxlib's CPU kernels split a large *batched* decomposition over XLA's intra-op thread pool and block their
  worker until the pieces finish; two such decompositions running at once in one program (explain_many's Eigen
  rows beside KPCA-CAM) can then hold every worker of a 2-core pool while their pieces wait in its queue: a
  deadlock (seen on this project's 2-core machine). One matrix per call never splits, so it never waits on the
  pool. The per-image cost is the same; the batch runs serially, which is what a 2-core pool does anyway.
  """
  lead = x.shape[:-2]
  flat = x.reshape((-1,) + x.shape[-2:])
  out = jax.lax.map(fn, flat)
  return jax.tree.map(lambda v: v.reshape(lead + v.shape[1:]), out)


def first_component_projection(features: jax.Array, /, *, sign: str = "energy") -> jax.Array:
  """Projection of each position on the first principal component of the channels.

  ``X = features`` reshaped to ``(hw, C)`` and centered over positions; ``map = X v1`` with ``v1`` the first
  right singular vector. ``(B, K, *spatial, C) -> (B, K, *spatial)``.

  Sign rule: an SVD's singular vectors have arbitrary sign, which would invert maps at random. We flip
  ``v1`` so that the projection correlates non-negatively with the channel sum of the uncentered features
  (the "energy" map); this is deterministic and puts the salient region on top. pytorch-grad-cam leaves the
  sign to LAPACK (compare after aligning the sign). ``sign="extreme"`` is Seg-Eigen-CAM's rule instead: flip
  when ``|min| > |max|``. NaNs in the features are zeroed first, as there.
  """
  if sign not in SIGN_RULES:
    raise ValueError(f"Expected `sign` to be one of {SIGN_RULES}, got {sign!r}.")
  x = jnp.nan_to_num(features)
  flat = _spatial.flatten_positions(x, _spatial.of_rows(x))  # (B, K, n, C)
  centered = flat - jnp.mean(flat, axis=-2, keepdims=True)
  _, _, vt = one_matrix_at_a_time(functools.partial(jnp.linalg.svd, full_matrices=False), centered)
  v1 = vt[..., 0, :]  # (..., C)
  proj = jnp.einsum("...nc,...c->...n", centered, v1, precision=jax.lax.Precision.HIGHEST)
  if sign == "extreme":
    flip = jnp.abs(jnp.min(proj, axis=-1, keepdims=True)) > jnp.abs(jnp.max(proj, axis=-1, keepdims=True))
  else:
    energy = jnp.sum(flat, axis=-1)
    energy = energy - jnp.mean(energy, axis=-1, keepdims=True)
    flip = jnp.sum(proj * energy, axis=-1, keepdims=True) < 0
  return (proj * jnp.where(flip, -1.0, 1.0).astype(proj.dtype)).reshape(x.shape[:-1])


def eigencam_map(activations: jax.Array, grads: jax.Array | None = None, /) -> jax.Array:
  """Eigen-CAM: first principal component of the activations. ``(B, K, *spatial, C) -> (B, K, *spatial)``.

  Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", arXiv 2008.00299.
  Class-agnostic (no gradients). Matches pytorch-grad-cam's ``EigenCAM`` up to the sign rule. Not
  differentiable in a useful sense (SVD derivatives are unstable at degenerate singular values).
  """
  del grads
  return first_component_projection(activations)


def eigengradcam_map(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """EigenGrad-CAM: first principal component of ``g * A``. ``(B, K, *spatial, C) -> (B, K, *spatial)``.

  pytorch-grad-cam's ``EigenGradCAM`` (class-discriminative Eigen-CAM), matched up to the sign rule.
  """
  return first_component_projection(grads * activations)


def segeigencam_map(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """Seg-Eigen-CAM: first principal component of ``|g| * A``, sign fixed so that ``|max| >= |min|``.

  ``(B, K, *spatial, C) -> (B, K, *spatial)``. Chung & Ying, "Seg-Eigen-CAM: Eigen-Value-Based Visual Explanations for
  Semantic Segmentation Models", Appl. Sci. 15(13) 7562, 2025. Matches pytorch-grad-cam's ``SegEigenCAM`` (its
  sign correction is deterministic, so maps agree without sign alignment unless the extremes tie).
  """
  return first_component_projection(jnp.abs(grads) * activations, sign="extreme")


KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _gram(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.einsum("...nc,...mc->...nm", x, y, precision=jax.lax.Precision.HIGHEST)


def _kernel_matrix(x: jax.Array, kernel: str, gamma: float, coef0: float, degree: int) -> jax.Array:
  """scikit-learn's ``pairwise_kernels(x, x, metric=kernel)`` for positions ``(..., n, C)`` -> ``(..., n, n)``."""
  if kernel == "linear":
    return _gram(x, x)
  if kernel == "cosine":
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    unit = x / jnp.where(norm == 0, 1.0, norm)
    return _gram(unit, unit)
  if kernel == "rbf":
    sq = jnp.sum(x * x, axis=-1)
    d2 = jnp.maximum(sq[..., :, None] + sq[..., None, :] - 2 * _gram(x, x), 0.0)
    return jnp.exp(-gamma * d2)
  if kernel == "poly":
    return (gamma * _gram(x, x) + coef0) ** degree
  return jnp.tanh(gamma * _gram(x, x) + coef0)  # sigmoid


def kpcacam_map(
  activations: jax.Array,
  grads: jax.Array | None = None,
  /,
  *,
  kernel: str = "sigmoid",
  gamma: float | None = None,
  coef0: float = 1.0,
  degree: int = 3,
) -> jax.Array:
  """KPCA-CAM: projection of each position on the first kernel principal component of the channels.

  Positions ``X`` ``(hw, C)`` are centered; ``K = k(X, X)`` (scikit-learn's kernels: sigmoid
  ``tanh(gamma x.y + coef0)``, rbf, poly, linear, cosine; ``gamma`` None means ``1 / C``) is double-centered;
  with ``(lambda, v)`` its top eigenpair (``eigh`` on device) the map is ``v sqrt(max(lambda, 0))``, the sign of
  ``v`` chosen so that its largest-magnitude entry is positive (scikit-learn's ``svd_flip``).
  ``(B, K, *spatial, C) -> (B, K, *spatial)``. Class-agnostic.

  Karmani et al., "KPCA-CAM: Visual Explainability of Deep Computer Vision Models using Kernel PCA",
  arXiv 2410.00267. Matches pytorch-grad-cam's ``KPCA_CAM`` (sklearn's ``KernelPCA(n_components=1)``, including
  its deterministic sign). Memory and time grow as ``(hw)^2`` and ``(hw)^3``: a late, small layer is the intended
  use.
  """
  del grads
  if kernel not in KERNELS:
    raise ValueError(f"Expected `kernel` to be one of {KERNELS}, got {kernel!r}.")
  x = _spatial.flatten_positions(jnp.nan_to_num(activations), _spatial.of_rows(activations))
  x = x - jnp.mean(x, axis=-2, keepdims=True)
  g = 1.0 / x.shape[-1] if gamma is None else gamma
  k = _kernel_matrix(x, kernel, g, coef0, degree)
  col = jnp.mean(k, axis=-2, keepdims=True)
  row = jnp.mean(k, axis=-1, keepdims=True)
  k = k - col - row + jnp.mean(col, axis=-1, keepdims=True)
  k = 0.5 * (k + jnp.swapaxes(k, -1, -2))
  evals, evecs = one_matrix_at_a_time(jnp.linalg.eigh, k)
  lam, v = evals[..., -1], evecs[..., :, -1]
  pivot = jnp.take_along_axis(v, jnp.argmax(jnp.abs(v), axis=-1, keepdims=True), axis=-1)
  v = v * jnp.where(pivot < 0, -1.0, 1.0).astype(v.dtype)
  proj = v * jnp.sqrt(jnp.maximum(lam, 0.0))[..., None]
  return proj.reshape(activations.shape[:-1])
