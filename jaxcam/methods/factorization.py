"""Factorization methods: maps from the first principal component of the activations (SVD on device)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcam import _spatial

__all__ = ["first_component_projection", "eigencam_map", "eigengradcam_map"]


def first_component_projection(features: jax.Array, /) -> jax.Array:
  """Projection of each position on the first principal component of the channels.

  ``X = features`` reshaped to ``(hw, C)`` and centered over positions; ``map = X v1`` with ``v1`` the first
  right singular vector. ``(..., h, w, C) -> (..., h, w)``.

  Sign rule: an SVD's singular vectors have arbitrary sign, which would invert maps at random. We flip
  ``v1`` so that the projection correlates non-negatively with the channel sum of the uncentered features
  (the "energy" map); this is deterministic and puts the salient region on top. pytorch-grad-cam leaves the
  sign to LAPACK (compare after aligning the sign). NaNs in the features are zeroed first, as there.
  """
  x = jnp.nan_to_num(features)
  flat = _spatial.flatten_positions(x)  # (..., n, C)
  centered = flat - jnp.mean(flat, axis=-2, keepdims=True)
  _, _, vt = jnp.linalg.svd(centered, full_matrices=False)
  v1 = vt[..., 0, :]  # (..., C)
  proj = jnp.einsum("...nc,...c->...n", centered, v1, precision=jax.lax.Precision.HIGHEST)
  energy = jnp.sum(flat, axis=-1)
  energy = energy - jnp.mean(energy, axis=-1, keepdims=True)
  sign = jnp.where(jnp.sum(proj * energy, axis=-1, keepdims=True) < 0, -1.0, 1.0).astype(proj.dtype)
  return (proj * sign).reshape(x.shape[:-1])


def eigencam_map(activations: jax.Array, grads: jax.Array | None = None, /) -> jax.Array:
  """Eigen-CAM: first principal component of the activations. ``(..., h, w, C) -> (..., h, w)``.

  Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components", arXiv 2008.00299.
  Class-agnostic (no gradients). Matches pytorch-grad-cam's ``EigenCAM`` up to the sign rule. Not
  differentiable in a useful sense (SVD derivatives are unstable at degenerate singular values).
  """
  del grads
  return first_component_projection(activations)


def eigengradcam_map(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """EigenGrad-CAM: first principal component of ``g * A``. ``(..., h, w, C) -> (..., h, w)``.

  pytorch-grad-cam's ``EigenGradCAM`` (class-discriminative Eigen-CAM), matched up to the sign rule.
  """
  return first_component_projection(grads * activations)
