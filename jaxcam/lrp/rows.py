"""The rows ``"attnlrp"`` (input relevance, an "input_map") and ``"lrp_cam"`` (relevance at the tapped layer, a
"map"), and the provider of their shared need ``lrp``.

Both come from one forward and one modified backward pass of the tap's model function
(``tap(x, delta) -> output``, the target's scores on it): the input ``x`` and the tapped layers' perturbations
``delta`` (zero) are the function's arguments, so the relevance of the input is ``x * g_x`` and that of a tapped
layer's output ``A`` is ``A * g_delta``. ``"attnlrp"`` explains the input whatever layer the tap names (the tap
supplies the model function and the layout); ``"lrp_cam"`` sums the layer's relevance over channels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcam import targets as targets_lib
from jaxcam.lrp import core
from jaxcam.lrp import rules as R

__all__ = ["lrp_provider", "attnlrp_map", "lrp_cam_map"]


def lrp_provider(tap, x, fwd, *, composite: R.Composite | None = None) -> tuple:
  """The ``lrp`` need: per tapped layer, ``(input relevance (B, K, *size), layer relevance (B, K, *spatial))``,
  each summed over channels, for the target's class ids fixed by the shared pass. One forward and one modified
  backward pass (K seeds batched with `jax.vmap`).

  Args:
    tap: a jaxcam tap (its forward pass ``tap(x, delta)`` is the function explained).
    x: images ``(B, H, W, C)`` (``(B, *size, C)``).
    fwd: the shared `jaxcam.core.Forward` (its activations, target and class ids).
    composite: the rules (`jaxcam.lrp.Composite`, hashable); None: AttnLRP's (`jaxcam.lrp.attnlrp()`).

  Returns:
    A tuple with one ``(input relevance (B, K, *size), layer relevance (B, K, *spatial))`` pair per tapped layer.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from jaxcam.core import forward_only
    >>> from jaxcam.lrp.rows import lrp_provider
    >>> w = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # layer A = x @ w, logits = the spatial sum of A
    >>> tap = jaxcam.function_tap(lambda p, x: x @ p, lambda p, x, a: a.sum((1, 2)), w)
    >>> x = jnp.ones((1, 2, 2, 2))
    >>> ((input_map, layer_map),) = lrp_provider(tap, x, forward_only(tap, x, jnp.array([1])))  # one layer
    >>> input_map.shape, layer_map.shape  # class 1's score 8 = 2 per position, at the pixels and at the layer
    ((1, 1, 2, 2), (1, 1, 2, 2))
    >>> bool(jnp.allclose(input_map, 2.0, atol=1e-4)), bool(jnp.allclose(layer_map, 2.0, atol=1e-4))
    (True, True)
  """
  fixed = targets_lib.with_ids(fwd.target, fwd.ids)
  deltas = tuple(jnp.zeros(a.shape, a.dtype) for a in fwd.activations)

  def scores(xx, ds):
    out, _ = tap(xx, ds if tap.multi else ds[0])
    return fixed.evaluate(out)[1]  # (B, K)

  out, grad_fn = core.modified_vjp(scores, x, deltas, composite=composite)
  k = out.shape[1]
  seeds = jax.nn.one_hot(jnp.arange(k), k, dtype=out.dtype)[:, None, :] * jnp.ones_like(out)[None]  # (K, B, K)
  g_x, g_a = jax.vmap(grad_fn)(seeds)  # (K, B, *size, C), per layer (K, B, *spatial, C)
  channel_sum = lambda v, g: jnp.moveaxis(jnp.sum(v[None] * g, axis=-1), 0, 1)  # (B, K, ...)
  maps_x = channel_sum(x, g_x)
  return tuple((maps_x, channel_sum(a, g)) for a, g in zip(fwd.activations, g_a))


def attnlrp_map(activations: jax.Array, lrp: tuple, /) -> jax.Array:
  """AttnLRP's row function: the input's relevance summed over channels ``(B, K, H, W)`` (output "input_map"); the
  activations are not read (the whole model is explained, down to the pixels).

  Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024, arXiv
  2402.05602; LRP-ε on linear layers (Bach et al. 2015). Matches lxt 2.1's explicit AttnLRP on a small ViT and
  zennit 1.0's ε composite on a small convnet (tests/test_lrp.py).

  Args:
    activations: the tapped layer's output (unused).
    lrp: one layer's pair from the ``lrp`` need (`lrp_provider`).

  Returns:
    ``(B, K, H, W)``: the input's relevance summed over channels.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp.rows import attnlrp_map
    >>> input_map, layer_map = jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 2, 2))
    >>> attnlrp_map(jnp.ones((1, 2, 2, 3)), (input_map, layer_map)).shape
    (1, 1, 4, 4)
  """
  del activations
  return lrp[0]


def lrp_cam_map(activations: jax.Array, lrp: tuple, /) -> jax.Array:
  """LRP-CAM's row function: the tapped layer's relevance ``A * g`` summed over channels ``(B, K, *spatial)``
  (output "map"), with the same rules as ``"attnlrp"``.

  Args:
    activations: the tapped layer's output (unused).
    lrp: one layer's pair from the ``lrp`` need (`lrp_provider`).

  Returns:
    ``(B, K, h, w)``: the layer's relevance summed over channels.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp.rows import lrp_cam_map
    >>> input_map, layer_map = jnp.ones((1, 1, 4, 4)), jnp.ones((1, 1, 2, 2))
    >>> lrp_cam_map(jnp.ones((1, 2, 2, 3)), (input_map, layer_map)).shape
    (1, 1, 2, 2)
  """
  del activations
  return lrp[1]
