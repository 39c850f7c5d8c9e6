"""Accuracy studies of Grad-CAM++'s derivative approximation (exact vs squared/cubed gradients).

`compare_derivatives` computes, per image, how far the usual approximation (h = t = 0, i.e. ``g^2`` and ``g^3``)
is from the exact second and third derivatives, and what that does to alpha, to the channel weights and to the
final map. Everything runs on device in one compiled function.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import _spatial, core, derivatives, postprocess
from jaxcam import targets as targets_lib
from jaxcam.methods import gradient

__all__ = ["DerivativeReport", "compare_derivatives", "relative_l2", "spearman"]


_PER_IMAGE = (  # the per-image error fields of DerivativeReport, in order
  "second_rel_err",
  "third_rel_err",
  "alpha_rel_err",
  "weights_rel_err",
  "map_rel_l2",
  "map_one_minus_cos",
  "map_spearman",
)


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=[*_PER_IMAGE, "argmax_moved", "maps_exact", "maps_approx"],
  meta_fields=["convention", "strategy", "layer"],
)
@dataclasses.dataclass(frozen=True)
class DerivativeReport:
  """Per-image comparison, each field ``(B,)`` (``(B, K)`` for K targets), maps ``(B, H, W)``.

  second_rel_err: ``||g^2 - (g^2 + h)|| / ||g^2 + h||`` (exp) or ``||0 - h|| / ||h||`` (literal), over the
  image's feature map; third_rel_err: the same for ``g^3`` vs ``g^3 + 3 g h + t``; alpha_rel_err,
  weights_rel_err: relative L2 of alpha and of the channel weights; map_rel_l2, map_one_minus_cos,
  map_spearman: exact vs approximate normalized maps (Spearman on ranks without tie averaging);
  argmax_moved: whether the maps' maximum moved. A 0/0 relative error (both exact) counts as 0.

  A pytree (`compare_derivatives` builds it under `jax.jit`); `convention`, `strategy` and `layer` are static.

  Args:
    second_rel_err: ``(B,)``, the approximate vs the exact second-derivative term (above).
    third_rel_err: ``(B,)``, the same for the third-derivative term.
    alpha_rel_err: ``(B,)``, relative L2 of Grad-CAM++'s alpha over the feature map.
    weights_rel_err: ``(B,)``, relative L2 of the channel weights.
    map_rel_l2: ``(B,)``, relative L2 of the approximate map against the exact one.
    map_one_minus_cos: ``(B,)``, one minus the cosine similarity of the two maps.
    map_spearman: ``(B,)``, the Spearman rank correlation of the two maps.
    argmax_moved: ``(B,)`` bool, whether the maps' maximum moved.
    maps_exact: ``(B, H, W)``, Grad-CAM++ with the exact derivatives (normalized, input-sized).
    maps_approx: ``(B, H, W)``, Grad-CAM++ with ``g^2``, ``g^3`` (h = t = 0).
    convention: "exp" or "literal" (as in `compare_derivatives`).
    strategy: the strategy `jaxcam.derivatives.diagonals` used ("structured" or "generic").
    layer: the tap's layer.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # m = 1 over n = 4 positions: g = 3/4, h = 6/16
    >>> report = jaxcam.study.compare_derivatives(tap, x, convention="literal")  # Y = S: the approximation is 0
    >>> report.strategy, report.second_rel_err.shape, report.maps_exact.shape
    ('structured', (1,), (1, 2, 2))
    >>> report.summary()["median_second_rel_err"]  # |0 - h| / |h|
    1.0
  """

  second_rel_err: jax.Array
  third_rel_err: jax.Array
  alpha_rel_err: jax.Array
  weights_rel_err: jax.Array
  map_rel_l2: jax.Array
  map_one_minus_cos: jax.Array
  map_spearman: jax.Array
  argmax_moved: jax.Array
  maps_exact: jax.Array
  maps_approx: jax.Array
  convention: str
  strategy: str
  layer: Any

  def summary(self) -> dict[str, float]:
    """Medians (and the worst map error) over images, as Python floats.

    Returns:
      ``{"median_<field>": ...}`` for each per-image error field, ``"worst_map_rel_l2"`` (the largest
        `map_rel_l2`) and ``"argmax_moved_fraction"`` (the fraction of images whose maximum moved). The example of
        `DerivativeReport` calls it.
    """
    out = {f"median_{f}": float(np.median(np.asarray(getattr(self, f)))) for f in _PER_IMAGE}
    out["worst_map_rel_l2"] = float(np.max(np.asarray(self.map_rel_l2)))
    out["argmax_moved_fraction"] = float(np.mean(np.asarray(self.argmax_moved)))
    return out


def relative_l2(approx: jax.Array, exact: jax.Array, axes) -> jax.Array:
  """``||approx - exact|| / ||exact||`` over `axes`; 0 where both are zero.

  Args:
    approx: the approximation.
    exact: the reference, broadcastable with `approx`.
    axes: the axes (an int or a tuple) the norms run over.

  Returns:
    The relative error with `axes` reduced: 0 where both are zero, ``inf`` where only `exact` is zero.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.study import relative_l2
    >>> exact = jnp.array([[0.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    >>> relative_l2(jnp.array([[0.0, 5.0], [0.0, 0.0], [1.0, 0.0]]), exact, -1).tolist()
    [0.25, 0.0, inf]
  """
  num = jnp.sqrt(jnp.sum((approx - exact) ** 2, axis=axes))
  den = jnp.sqrt(jnp.sum(exact**2, axis=axes))
  return gradient.safe_divide(num, den) + jnp.where((den == 0) & (num > 0), jnp.inf, 0.0)


def spearman(a: jax.Array, b: jax.Array, *, spatial_dims: int = 2) -> jax.Array:
  """Spearman rank correlation of maps ``(..., *spatial)`` over their last `spatial_dims` axes, flattened (ranks by
  argsort; ties not averaged).

  Args:
    a: maps ``(..., *spatial)``, e.g. ``(B, H, W)``.
    b: maps of the same shape.
    spatial_dims: how many trailing axes are spatial (2 for images, 3 for volumes).

  Returns:
    ``(...)``: the correlation in [-1, 1] per map (NaN for a constant map: its ranks are not defined).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.study import spearman
    >>> m = jnp.arange(4.0).reshape(1, 2, 2)
    >>> spearman(m, m ** 2).tolist(), spearman(m, -m).tolist()  # same order, reversed order
    ([1.0], [-1.0])
  """
  fa, fb = _spatial.flatten_map(a, spatial_dims), _spatial.flatten_map(b, spatial_dims)
  ra = jnp.argsort(jnp.argsort(fa, axis=-1), axis=-1).astype(jnp.float32)
  rb = jnp.argsort(jnp.argsort(fb, axis=-1), axis=-1).astype(jnp.float32)
  ra = ra - ra.mean(-1, keepdims=True)
  rb = rb - rb.mean(-1, keepdims=True)
  return jnp.sum(ra * rb, -1) / jnp.sqrt(jnp.sum(ra**2, -1) * jnp.sum(rb**2, -1))


@functools.partial(jax.jit, static_argnames=("convention", "strategy", "chunk_size", "eps"))
def _compare(tap, x, target, *, convention, strategy, chunk_size, eps):
  d = derivatives.diagonals_k(tap, x, target, strategy=strategy, chunk_size=chunk_size)
  with jax.default_matmul_precision("highest"):  # a study: full float32 on every backend
    fwd = core.forward_only(tap, x, target)
  a = fwd.activations[0][:, None].astype(jnp.float32)
  g, h, t = (v.astype(jnp.float32) for v in (d.grads, d.second, d.third))
  a = jnp.broadcast_to(a, g.shape)
  zeros = jnp.zeros_like(g)
  ex2, ex3 = gradient.gradcam_pp_derivative_terms(g, h, t, convention=convention)
  ap2, ap3 = gradient.gradcam_pp_derivative_terms(g, zeros, zeros, convention=convention)
  n = _spatial.of_images(x)
  feat = _spatial.feature_axes(n) + (-1,)
  alpha_ex = gradient.gradcam_pp_alpha(a, g, ex2, ex3, eps=eps)
  alpha_ap = gradient.gradcam_pp_alpha(a, g, ap2, ap3, eps=eps)
  w_ex = gradient.gradcam_pp_weights(a, g, eps=eps, second=ex2, third=ex3)
  w_ap = gradient.gradcam_pp_weights(a, g, eps=eps, second=ap2, third=ap3)

  def finish(w):
    m = jax.nn.relu(postprocess.combine(w, a))
    m = postprocess.upsample(postprocess.normalize(m, spatial_dims=n), _spatial.image_size(x))
    return postprocess.normalize(m, spatial_dims=n)

  m_ex, m_ap = finish(w_ex), finish(w_ap)
  axes = _spatial.map_axes(n)
  cos = jnp.sum(m_ex * m_ap, axes) / jnp.sqrt(jnp.sum(m_ex**2, axes) * jnp.sum(m_ap**2, axes) + 1e-30)
  flat_ex, flat_ap = _spatial.flatten_map(m_ex, n), _spatial.flatten_map(m_ap, n)
  squeeze = (lambda v: v[:, 0]) if not fwd.multi else (lambda v: v)
  return DerivativeReport(
    second_rel_err=squeeze(relative_l2(ap2, ex2, feat[:-1] + (-1,))),
    third_rel_err=squeeze(relative_l2(ap3, ex3, feat[:-1] + (-1,))),
    alpha_rel_err=squeeze(relative_l2(alpha_ap, alpha_ex, feat[:-1] + (-1,))),
    weights_rel_err=squeeze(relative_l2(w_ap, w_ex, (-1,))),
    map_rel_l2=squeeze(relative_l2(m_ap, m_ex, axes)),
    map_one_minus_cos=squeeze(1.0 - cos),
    map_spearman=squeeze(spearman(m_ex, m_ap, spatial_dims=n)),
    argmax_moved=squeeze(jnp.argmax(flat_ex, -1) != jnp.argmax(flat_ap, -1)),
    maps_exact=squeeze(m_ex),
    maps_approx=squeeze(m_ap),
    convention=convention,
    strategy=d.strategy,
    layer=tap.layer,
  )


def compare_derivatives(
  tap,
  x: jax.Array,
  target: Any = None,
  *,
  convention: str = "exp",
  strategy: str = "auto",
  chunk_size: int = derivatives.DEFAULT_CHUNK_SIZE,
  eps: float = 1e-6,
) -> DerivativeReport:
  """Exact vs approximate Grad-CAM++ per image (see `DerivativeReport`); maps are normalized, input-sized.

  The target is the score S (``jaxcam.targets.logit`` / ``log_softmax`` / ``softmax`` / ids / callable).
  Under ``convention="exp"`` (Y = exp(S)), ``target=log_softmax(c)`` studies Grad-CAM++ of the probability.

  Args:
    tap: a single-layer jaxcam tap.
    x: images ``(B, H, W, C)`` (``(B, D, H, W, C)`` for volumes).
    target: as in `jaxcam.explain` (None: each image's top class; ids ``(B,)`` or ``(B, K)``; a score).
    convention: "exp" (the paper's Y = exp(S): exact terms ``g^2 + h``, ``g^3 + 3 g h + t``) or "literal"
      (Y = S: exact terms ``h``, ``t``); the approximation sets h = t = 0 in both.
    strategy: how the exact diagonals are computed, as in `jaxcam.derivatives.diagonals`.
    chunk_size: derivative directions evaluated at once, as in `jaxcam.derivatives.diagonals`.
    eps: Grad-CAM++'s alpha stabiliser, as in `jaxcam.gradcam_pp`.

  Returns:
    A `DerivativeReport`: per-image errors ``(B,)`` (``(B, K)`` for (B, K) targets) and both maps.

  Raises:
    ValueError: an unknown `convention`, or a `strategy` that does not apply (as `jaxcam.derivatives.diagonals`).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # m = 1 over n = 4 positions: g = 3/4, h = 6/16
    >>> report = jaxcam.study.compare_derivatives(tap, x)  # exp: |g^2 - (g^2 + h)| / |g^2 + h| = h / (g^2 + h)
    >>> round(float(report.second_rel_err[0]), 4)  # 0.375 / 0.9375
    0.4
  """
  if convention not in ("exp", "literal"):
    raise ValueError(f"Expected `convention` to be 'exp' or 'literal', got {convention!r}.")
  return _compare(
    tap,
    x,
    targets_lib.as_target(target),
    convention=convention,
    strategy=strategy,
    chunk_size=int(chunk_size),
    eps=float(eps),
  )
