"""Gradient-family weight functions: pure functions of activations A and gradients g = dS/dA.

All take arrays ``(B, K, *spatial, C)`` as a method row receives them (batch, targets, spatial axes, channels
last; the number of spatial axes is read from the rank) and return channel weights ``(B, K, C)`` or spatial weights
``(B, K, *spatial, C)``; the map is then ``sum_k w_k * A_k`` (see `postprocess`).
Defaults follow pytorch-grad-cam (package ``grad-cam``) so that maps agree with it one to one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _spatial

__all__ = [
  "gradcam_weights",
  "gradcam_pp_weights",
  "smooth_gradcam_pp_weights",
  "xgradcam_weights",
  "layercam_weights",
  "hirescam_weights",
  "gradcam_elementwise_weights",
  "shapleycam_weights",
  "gradcam_pp_alpha",
  "gradcam_pp_derivative_terms",
  "layercam_fusion_rescale",
  "safe_divide",
]


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
  """``num / den`` with 0 where ``den == 0`` (and a NaN-free gradient there)."""
  zero = den == 0
  return jnp.where(zero, 0.0, num / jnp.where(zero, 1.0, den))


def gradcam_weights(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """Grad-CAM channel weights: the spatial mean of the gradient.

  ``w_k = (1/hw) sum_ij dS/dA_kij``. ``(B, K, *spatial, C) -> (B, K, C)``.

  Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
  arXiv 1610.02391. Matches pytorch-grad-cam's ``GradCAM`` and torchcam's ``GradCAM``.

  >>> import jax.numpy as jnp
  >>> g = jnp.array([[1.0, 2.0], [3.0, 6.0]]).reshape(1, 1, 2, 2, 1)  # (B, K, h, w, C)
  >>> gradcam_weights(jnp.ones_like(g), g)
  Array([[[3.]]], dtype=float32)
  """
  del activations
  return _spatial.feature_mean(grads, _spatial.of_rows(grads), keepdims=False)


def gradcam_pp_alpha(
  activations: jax.Array, grads: jax.Array, second: jax.Array, third: jax.Array, /, *, eps: float = 1e-6
) -> jax.Array:
  """Grad-CAM++'s pixel coefficients ``alpha = D2 / (2 D2 + (sum_ab A_kab) D3 + eps)``, 0 where ``g == 0``.

  `second` and `third` are ``D2 = Y_2/Y`` and ``D3 = Y_3/Y`` (Y_n: n-th derivative; see
  `gradcam_pp_derivative_terms`); a zero denominator gives 0, never NaN.
  ``(B, K, *spatial, C) -> (B, K, *spatial, C)``.
  """
  sum_a = _spatial.feature_sum(activations, _spatial.of_rows(activations))
  alpha = safe_divide(second, 2.0 * second + sum_a * third + eps)
  return jnp.where(grads != 0, alpha, 0.0)


def gradcam_pp_weights(
  activations: jax.Array,
  grads: jax.Array,
  diagonals: Any = None,
  /,
  *,
  eps: float = 1e-6,
  convention: str = "exp",
  second: jax.Array | None = None,
  third: jax.Array | None = None,
) -> jax.Array:
  """Grad-CAM++ channel weights (Eq. 19 of the paper, with pytorch-grad-cam's conventions).

  ``alpha_kij = D2 / (2 D2 + (sum_ab A_kab) D3 + eps)``, 0 where ``g == 0``;
  ``w_k = sum_ij relu(g_kij) alpha_kij``. Without `diagonals`, ``D2 = g**2`` and ``D3 = g**3``: the paper's
  approximation for Y = exp(S) through a piecewise-linear head. With the exact diagonals h = d2S, t = d3S
  (a `jaxcam.derivatives.Diagonals`, or an ``(h, t)`` pair) the terms follow `convention` (see
  `gradcam_pp_derivative_terms`): exact Grad-CAM++. `second`/`third` pass ``D2``/``D3`` directly. A zero
  denominator gives alpha = 0 (documented; never NaN). ``(B, K, *spatial, C) -> (B, K, C)``.

  Chattopadhyay et al., "Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks",
  arXiv 1710.11063. Matches pytorch-grad-cam's ``GradCAMPlusPlus`` (eps 1e-6, alpha = 0 where g = 0).
  torchcam's ``GradCAMpp`` diverges: it computes alpha but applies it through a boolean-mask copy that is
  never written back, so its weights are ``sum relu(g) * alpha`` only up to that bug (see
  tests/methods/test_gradient.py).

  >>> import jax.numpy as jnp
  >>> a, g = jnp.ones((1, 1, 2, 2, 1)), jnp.full((1, 1, 2, 2, 1), 0.5)  # (B, K, h, w, C)
  >>> gradcam_pp_weights(a, g)  # alpha = 0.25 / (0.5 + 4 * 0.125) = 0.25 at 4 positions, times relu(g) = 0.5
  Array([[[0.49999952]]], dtype=float32)
  """
  if second is None or third is None:
    if diagonals is None:
      if convention == "exp":
        second, third = grads * grads, grads * grads * grads
      else:
        zeros = jnp.zeros_like(grads)
        second, third = gradcam_pp_derivative_terms(grads, zeros, zeros, convention=convention)
    else:
      h, t = (diagonals.second, diagonals.third) if hasattr(diagonals, "second") else diagonals
      second, third = gradcam_pp_derivative_terms(grads, h, t, convention=convention)
  alpha = gradcam_pp_alpha(activations, grads, second, third, eps=eps)
  return _spatial.feature_sum(jax.nn.relu(grads) * alpha, _spatial.of_rows(grads), keepdims=False)


def xgradcam_weights(activations: jax.Array, grads: jax.Array, /, *, eps: float = 1e-7) -> jax.Array:
  """XGrad-CAM channel weights: gradients weighted by the normalized activations.

  ``w_k = sum_ij g_kij A_kij / (sum_ab A_kab + eps)``. ``(B, K, *spatial, C) -> (B, K, C)``.

  Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
  arXiv 2008.02312. Matches pytorch-grad-cam's ``XGradCAM`` (eps 1e-7) and torchcam's ``XGradCAM``.
  """
  n = _spatial.of_rows(activations)
  sum_a = _spatial.feature_sum(activations, n)
  return _spatial.feature_sum(grads * activations / (sum_a + eps), n, keepdims=False)


def layercam_weights(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """LayerCAM spatial weights: ``relu(g)`` per position. ``(B, K, *spatial, C) -> (B, K, *spatial, C)``.

  Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP 2021.
  Matches pytorch-grad-cam's ``LayerCAM`` and torchcam's ``LayerCAM``.
  """
  del activations
  return jax.nn.relu(grads)


def layercam_fusion_rescale(maps: jax.Array, *, fusion: str, n_layers: int) -> jax.Array:
  """LayerCAM's per-layer hook: torchcam's ``tanh(2 * cam)`` rescale of normalized maps before max fusion.

  Applied at layer resolution, as torchcam does, only when several layers are fused with ``fusion="max"``.
  """
  if n_layers > 1 and fusion == "max":
    return jnp.tanh(2.0 * maps)
  return maps


def hirescam_weights(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """HiResCAM spatial weights: the raw gradient ``g`` per position (map = sum_k g_k A_k).

  Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional neural
  networks", arXiv 2011.08891. Matches pytorch-grad-cam's ``HiResCAM``.
  """
  del activations
  return grads


def gradcam_elementwise_weights(activations: jax.Array, grads: jax.Array, /) -> jax.Array:
  """Grad-CAM element-wise spatial weights: ``g`` where ``g*A > 0``, else 0 (map = sum_k relu(g_k A_k)).

  pytorch-grad-cam's ``GradCAMElementWise`` (its own variant, no paper).
  """
  return jnp.where(grads * activations > 0, grads, jnp.zeros_like(grads))


def gradcam_pp_derivative_terms(grads, second, third, *, convention: str = "exp"):
  """The ``(D2, D3)`` that Grad-CAM++'s alpha uses, from g and the exact diagonals h = d2S, t = d3S.

  convention "exp" (the paper's Y = exp(S)): ``D2 = Y_2/Y = g^2 + h``, ``D3 = Y_3/Y = g^3 + 3 g h + t``
  (Y_n: n-th derivative; e^S cancels in alpha, so logits of 1000 never overflow). convention "literal"
  (Y = S): ``D2 = h``, ``D3 = t``. With h = t = 0 (a piecewise-linear head) "exp" reduces exactly to Eq. 19's
  ``g^2, g^3``.
  """
  if convention == "exp":
    return grads * grads + second, grads**3 + 3.0 * grads * second + third
  if convention == "literal":
    return second, third
  raise ValueError(f"Expected `convention` to be 'exp' or 'literal', got {convention!r}.")


def shapleycam_weights(activations: jax.Array, grads: jax.Array, hvp: jax.Array, /) -> jax.Array:
  """Shapley-CAM channel weights: the spatial mean of ``g - 1/2 H A`` (H A: exact Hessian-vector product).

  ``(B, K, *spatial, C) -> (B, K, C)``. Cai et al., "CAMs as Shapley Value-based Explainers", arXiv 2501.06261.
  Matches pytorch-grad-cam's ``ShapleyCAM`` (which gets H A by double backward); jaxcam's HVP is
  forward-over-reverse (`jaxcam.derivatives.hvp`).
  """
  del activations
  return _spatial.feature_mean(grads - 0.5 * hvp, _spatial.of_rows(grads), keepdims=False)


def smooth_gradcam_pp_weights(activations: jax.Array, moments: Any, /, *, eps: float = 1e-8) -> jax.Array:
  """Smooth Grad-CAM++ channel weights from gradient moments averaged over noisy copies of the input.

  With ``(m1, m2, m3)`` the means of ``g, g^2, g^3`` over the copies and A the clean activations:
  ``alpha = m2 / (2 m2 + (sum_ab A_kab) m3 + eps)``, ``w_k = sum_ij alpha_kij relu(m1_kij)``.
  ``(B, K, *spatial, C) -> (B, K, C)``.

  Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization Technique for Deep Convolutional
  Neural Network Models", arXiv 1908.01224, as torchcam 0.5.0's ``SmoothGradCAMpp`` defines it (num_samples 4,
  std 0.3, eps 1e-8, its alpha numerator m2 rather than the paper's m1). torchcam's code then weights the *last*
  noisy copy's ``relu(g)`` and sums the *last* copy's activations (its hooks keep the last pass); jaxcam uses the
  intended ``relu(m1)`` and the clean A, and the paper's ``(sum_ab A_kab) m3_kij`` in alpha where torchcam's
  code sums ``sum_ab A_kab m3_kab`` (tests/methods/test_gradient.py reproduces torchcam's actual output from its
  fixture).
  """
  m1, m2, m3 = moments
  n = _spatial.of_rows(activations)
  sum_a = _spatial.feature_sum(activations, n)
  alpha = m2 / (2.0 * m2 + sum_a * m3 + eps)
  return _spatial.feature_sum(alpha * jax.nn.relu(m1), n, keepdims=False)
