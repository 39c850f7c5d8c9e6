"""Higher-order derivatives of a target score with respect to a tapped layer, by autodiff (no hooks).

Exact diagonals of d^2 S / dA^2 and d^3 S / dA^3 (nested forward mode along one direction per element, or per
channel where the head allows) and exact Hessian-vector products. The shared forward and first-order backward pass
is `jaxcam.core`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _jaxpr, _spatial, chunking
from jaxcam import targets as targets_lib
from jaxcam.core import Forward, forward_and_grads

__all__ = [
  "Diagonals",
  "diagonals",
  "diagonals_k",
  "hvp",
  "taylor3",
  "enters_only_through_spatial_sum",
  "score_vector_fn",
]


# ----------------------------------------------------------------------------------------------------------
# Exact higher-order derivatives (diagonals of d^2 S / dA^2 and d^3 S / dA^3, Hessian-vector products)
# ----------------------------------------------------------------------------------------------------------

STRATEGIES = ("auto", "generic", "structured")
DEFAULT_CHUNK_SIZE = 256  # directions evaluated at once (vmap) per chunk of jax.lax.map
DEFAULT_MAX_GENERIC_DIRECTIONS = 8192  # "auto" refuses the generic strategy beyond this many directions
_CHECK_POSITIONS = 4  # random positions at which the structured strategy is cross-checked against generic


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["grads", "second", "third", "check"], meta_fields=["strategy"]
)
@dataclasses.dataclass(frozen=True)
class Diagonals:
  """``(grads, second, third)``: g = dS/dA, diag d^2S/dA^2, diag d^3S/dA^3, each shaped like A ``(B, h, w, C)``
  (``(B, K, h, w, C)`` for (B, K) targets). Unpacks as ``g, d2, d3``; also carries ``strategy`` (the one used,
  static) and ``check`` (the largest relative mismatch of the structured strategy against generic at a few random
  positions; 0 for generic).

  A pytree (`jax.jit` returns it); `diagonals` builds it.

  Args:
    grads: dS/dA, shaped like A.
    second: the diagonal of d^2S/dA^2, shaped like A.
    third: the diagonal of d^3S/dA^3, shaped like A.
    check: a scalar, the structured strategy's largest relative mismatch against generic (0 for generic).
    strategy: "structured" or "generic", the strategy used (static).

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # A = x: m = 1 over n = 4 positions
    >>> d = jax.jit(jaxcam.derivatives.diagonals)(tap, x)  # a pytree: jit returns it
    >>> g, d2, d3 = d  # 3 m^2 / n, 6 m / n^2, 6 / n^3 at every position
    >>> d.strategy, g[0, 0, 0].tolist(), d2[0, 0, 0].tolist(), d3[0, 0, 0].tolist()
    ('structured', [0.75], [0.375], [0.09375])
  """

  grads: jax.Array
  second: jax.Array
  third: jax.Array
  check: jax.Array
  strategy: str

  def __iter__(self):
    return iter((self.grads, self.second, self.third))

  def __getitem__(self, i):
    return (self.grads, self.second, self.third)[i]

  def __len__(self) -> int:
    return 3


def score_vector_fn(tap, x: jax.Array, target: Any):
  """``F(A) -> (B, K)`` scores of the network whose tapped layer outputs A (one column per target).

  Args:
    tap: a single-layer jaxcam tap (its ``head(x, A)`` runs the network from the layer on).
    x: images ``(B, H, W, C)`` (the head may read them too).
    target: as in `jaxcam.explain`; None: each image's top class of the logits at the A given to ``F``.

  Returns:
    ``F(A) -> (B, K)``, the target scores as a function of the layer's output ``A`` ``(B, h, w, C)``.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # A = x: m = 1 over n = 4 positions
    >>> f = jaxcam.derivatives.score_vector_fn(tap, x, jnp.array([0]))
    >>> f(2 * x).tolist()  # m = 2: S = 8
    [[8.0]]
  """
  tgt = targets_lib.as_target(target)
  ids = None

  def f(a):
    logits = tap.head(x, a)
    if isinstance(tgt, targets_lib.ClassScore):
      return tgt.scores(logits, ids if ids is not None else tgt.class_ids(logits))
    return tgt.evaluate(logits)[1]

  return f


def taylor3(f, a: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Second and third derivatives of ``t -> f(a + t v)`` at 0, by nested forward mode (exact, no jet).

  Args:
    f: a function of one array (its output any pytree of arrays).
    a: the point, an array of `f`'s input shape.
    v: the direction, shaped like `a`.

  Returns:
    ``(d2, d3)``, each shaped like ``f(a)``: the second and the third directional derivatives of `f` at `a` along
      `v`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.derivatives import taylor3
    >>> d2, d3 = taylor3(lambda a: a ** 3, jnp.float32(2.0), jnp.float32(1.0))  # 6 a and 6
    >>> float(d2), float(d3)
    (12.0, 6.0)
  """

  def d1(p):
    return jax.jvp(f, (p,), (v,))[1]

  def d2(p):
    return jax.jvp(d1, (p,), (v,))[1]

  return jax.jvp(d2, (a,), (v,))


def _generic(f, a, positions, chunk_size, progress=None):
  """(d2, d3) at flat positions ``positions`` (of h*w*C), each ``(len(positions), B, K)``."""
  per_image = a.shape[1:]

  def at(j):
    v = jnp.broadcast_to(jax.nn.one_hot(j, math.prod(per_image), dtype=a.dtype).reshape(per_image), a.shape)
    return taylor3(f, a, v)

  return chunking.chunked_map(at, positions, chunk_size=chunk_size, progress=progress)


def _structured(f, a, chunk_size, progress=None):
  """(d2, d3) per channel, each ``(C, B, K)``, for heads where A enters only through its spatial mean."""
  c, n = a.shape[-1], _spatial.positions(a, a.ndim - 2)

  def at(k):
    v = jnp.broadcast_to(jax.nn.one_hot(k, c, dtype=a.dtype), a.shape)  # channel k at every position
    d2, d3 = taylor3(f, a, v)
    return d2 / n**2, d3 / n**3

  return chunking.chunked_map(at, jnp.arange(c), chunk_size=chunk_size, progress=progress)


def enters_only_through_spatial_sum(head_fn, a: jax.Array) -> bool:
  """Whether ``head_fn(A)`` reads A only through sums over its spatial axes, found on the jaxpr: a channels-last
  or transposed (channels-first) sum or mean, a full-window ``avg_pool`` (``reduce_window_sum``), a sum over
  tokens after reshaping the grid to a sequence (with a CLS token concatenated), through jit / remat /
  custom_jvp calls.

  Args:
    head_fn: ``head_fn(A) -> output``, the network from the layer on (one abstract trace, no FLOPs).
    a: the layer's output ``(B, *spatial, C)`` (an array or ``jax.ShapeDtypeStruct``).

  Returns:
    True when every use of A is such a spatial sum (then the structured strategy of `diagonals` applies).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.derivatives import enters_only_through_spatial_sum
    >>> a, w = jnp.ones((1, 2, 2, 3)), jnp.ones((3, 5))
    >>> enters_only_through_spatial_sum(lambda t: t.mean((1, 2)) @ w, a)  # global average pooling, then dense
    True
    >>> enters_only_through_spatial_sum(lambda t: (t ** 2).mean((1, 2)) @ w, a)  # an element-wise op first
    False
  """
  closed = jax.make_jaxpr(head_fn)(a)
  return _only_spatial_sums(closed.jaxpr, [_spatial.batched_feature_axes(a.ndim - 2)])[0]


_PASS_THROUGH = {"convert_element_type", "copy", "copy_p"}


def _follow(eqn, spatial: tuple[int, ...], uses: list) -> tuple[int, ...] | None:
  """Where A's spatial axes sit in the output of a layout-only operation on A, or None (anything else)."""
  name = eqn.primitive.name
  in_shape = eqn.invars[0].aval.shape
  out_shape = eqn.outvars[0].aval.shape
  if name in _PASS_THROUGH:
    return spatial
  if name == "transpose":
    perm = eqn.params["permutation"]
    return tuple(i for i, ax in enumerate(perm) if ax in spatial)
  if name == "reshape" and uses[0] and not any(uses[1:]):
    lo, hi = min(spatial), max(spatial)
    if tuple(range(lo, hi + 1)) != tuple(sorted(spatial)):
      return None
    merged = in_shape[:lo] + (math.prod(in_shape[lo : hi + 1]),) + in_shape[hi + 1 :]
    if tuple(out_shape) == tuple(in_shape):
      return spatial
    return (lo,) if tuple(out_shape) == merged else None
  one_raw = sum(bool(u) for u in uses) == 1
  if name == "concatenate" and len(spatial) == 1 and eqn.params["dimension"] == spatial[0] and one_raw:
    return spatial  # e.g. [CLS, patches]: a sum over the token axis still reads the patches only through their sum
  return None


def _only_spatial_sums(jaxpr, raw_in) -> tuple[bool, list]:
  """raw: variable -> the positions of A's spatial axes in it (A itself or a layout-only view of it)."""
  raw = {v: r for v, r in zip(jaxpr.invars, raw_in) if r}
  for eqn in jaxpr.eqns:
    uses = [(not _jaxpr.is_literal(v)) and raw.get(v) for v in eqn.invars]
    if not any(uses):
      continue
    name = eqn.primitive.name
    spatial = next(u for u in uses if u)
    if name == "reduce_sum" and set(eqn.params["axes"]) == set(spatial):
      continue
    if name == "reduce_window_sum" and all(p == (0, 0) for p in eqn.params["padding"]):
      shape = eqn.invars[0].aval.shape
      window = eqn.params["window_dimensions"]
      if all((window[i] == shape[i]) if i in spatial else window[i] == 1 for i in range(len(shape))):
        continue  # avg_pool over the whole map
    if (inner := _jaxpr.inner_jaxpr(eqn)) is not None:
      ok, raw_out = _only_spatial_sums(inner, uses[-len(inner.invars) :])
      if not ok:
        return False, []
      for v, r in zip(eqn.outvars, raw_out):
        if r:
          raw[v] = r
      continue
    followed = _follow(eqn, spatial, uses) if len(eqn.outvars) == 1 else None
    if followed is None:
      return False, []
    raw[eqn.outvars[0]] = followed
  return True, [(not _jaxpr.is_literal(v)) and raw.get(v) for v in jaxpr.outvars]


def _declared_structured(tap) -> bool:
  module = getattr(tap, "module", None)
  declared = getattr(module, "head_structure", None)
  return declared in ("gap", "gap_dense") and tap.layer == getattr(module, "default_layer", None)


def diagonals(
  tap,
  x: jax.Array,
  target: Any = None,
  *,
  strategy: str = "auto",
  chunk_size: int = DEFAULT_CHUNK_SIZE,
  max_generic_directions: int = DEFAULT_MAX_GENERIC_DIRECTIONS,
  fwd: Forward | None = None,
) -> Diagonals:
  """Exact g, diag d^2S/dA^2 and diag d^3S/dA^3 of the target score S (not of exp(S)).

  Strategies:
    generic: one direction per element of A (h*w*C directions; nested `jax.jvp`, `chunk_size` directions at a
      time), any head (convolutions, GELU, LayerNorm, attention, softmax).
    structured: when A reaches the logits only through global average pooling (A -> mean_hw -> anything), all
      positions of a channel share their diagonals, so C directions suffice. Elementwise operations between A
      and the pooling (BatchNorm, ReLU6 on A) are *refused*, not folded: tap the layer after them. It is used
      when the model declares ``head_structure = "gap"``/``"gap_dense"`` for its default layer or the jaxpr
      shows A entering only through spatial sums, and is always cross-checked against the generic strategy
      at a few random positions (``Diagonals.check``; a mismatch above 1e-3 makes the second and third
      diagonals NaN, never silently wrong; eager `jaxcam.gradcam_pp` calls raise a ValueError on it).
    auto: structured where it applies; else generic up to `max_generic_directions` (default 8192), beyond
      which it raises instead of running for minutes. Ask for "generic" explicitly to lift the limit.

  Shapes: like A, ``(B, h, w, C)`` each (``(B, K, h, w, C)`` for (B, K) targets). Single-layer taps only.
  Nested forward mode, not `jax.experimental.jet` (jet raised UnexpectedTracerError under jit after a ReLU,
  JAX issue #30352).

  Args:
    tap: a single-layer jaxcam tap.
    x: images ``(B, H, W, C)`` (``(B, D, H, W, C)`` for volumes).
    target: as in `jaxcam.explain` (None: each image's top class; ids ``(B,)`` or ``(B, K)``; a score).
    strategy: "auto" (the default), "generic" or "structured" (above).
    chunk_size: directions evaluated at once (`jax.vmap`); peak memory grows with it.
    max_generic_directions: the most directions "auto" runs the generic strategy with.
    fwd: a `jaxcam.core.Forward` with gradients of this tap, x and target, to reuse (None: one is computed).

  Returns:
    A `Diagonals` ``(grads, second, third)``, each ``(B, h, w, C)`` (``(B, K, h, w, C)`` for (B, K) targets),
      computed at full float32 matmul precision.

  Raises:
    ValueError: an unknown `strategy`, a multi-layer tap, "structured" for a head that transforms A before
      pooling, "auto" needing more than `max_generic_directions` generic directions, or concrete class ids out of
      range.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # A = x: m = 1 over n = 4 positions
    >>> d = jaxcam.derivatives.diagonals(tap, x)  # the head pools A first: C = 1 direction
    >>> d.strategy, d.second.shape, d.second[0, :, :, 0].tolist()  # 6 m / n^2 = 0.375
    ('structured', (1, 2, 2, 1), [[0.375, 0.375], [0.375, 0.375]])
    >>> jaxcam.derivatives.diagonals(tap, x, strategy="generic").third[0, :, :, 0].tolist()  # 6 / n^3
    [[0.09375, 0.09375], [0.09375, 0.09375]]
  """
  classes = getattr(targets_lib.as_target(target), "classes", None)
  if classes is not None and not isinstance(classes, jax.core.Tracer) and not isinstance(x, jax.core.Tracer):
    out_shape = jax.eval_shape(tap.forward, x)
    if hasattr(out_shape, "shape"):  # an out-of-range id would silently give zero derivatives
      targets_lib.check_ids_in_range(classes, out_shape.shape[-1])
  out = diagonals_k(  # validates strategy and the tap, and runs at full float32 matmul precision
    tap, x, target, strategy=strategy, chunk_size=chunk_size, max_generic_directions=max_generic_directions, fwd=fwd
  )
  multi = (
    fwd.multi if fwd is not None else getattr(targets_lib.as_target(target), "multi", False) or out.grads.shape[1] != 1
  )
  if multi:
    return out
  return Diagonals(out.grads[:, 0], out.second[:, 0], out.third[:, 0], out.check, out.strategy)


def diagonals_k(
  tap,
  x,
  target=None,
  *,
  strategy="auto",
  chunk_size=DEFAULT_CHUNK_SIZE,
  max_generic_directions=DEFAULT_MAX_GENERIC_DIRECTIONS,
  fwd=None,
) -> Diagonals:
  """`diagonals` with the target axis always present: ``(B, K, h, w, C)`` each.

  Args:
    tap, x, target, strategy, chunk_size, max_generic_directions, fwd: as in `diagonals`.

  Returns:
    A `Diagonals` whose arrays are ``(B, K, h, w, C)`` (K = 1 for one class per image).

  Raises:
    ValueError: an unknown `strategy`, a multi-layer tap, or a strategy that does not apply (as in `diagonals`;
      class ids are not range-checked here).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # A = x: m = 1 over n = 4 positions
    >>> d = jaxcam.derivatives.diagonals_k(tap, x)
    >>> d.grads.shape, d.second.shape, d.third.shape
    ((1, 1, 2, 2, 1), (1, 1, 2, 2, 1), (1, 1, 2, 2, 1))
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"Expected `strategy` to be one of {STRATEGIES}, got {strategy!r}.")
  if tap.multi:
    raise ValueError("Exact derivatives need a single-layer tap; got layers " + repr(tap.layer) + ".")
  with jax.default_matmul_precision("highest"):
    return _diagonals(tap, x, target, strategy, chunk_size, max_generic_directions, fwd)


def _diagonals(tap, x, target, strategy, chunk_size, max_generic_directions, fwd):
  if fwd is None:
    fwd = forward_and_grads(tap, x, target)
  tgt = targets_lib.with_ids(fwd.target if fwd.target is not None else targets_lib.as_target(target), fwd.ids)
  a = fwd.activations[0]
  b, per_image = a.shape[0], a.shape[1:]
  f = score_vector_fn(tap, x, tgt)
  structured_ok = _declared_structured(tap) or enters_only_through_spatial_sum(lambda t: tap.head(x, t), a)
  n_generic = math.prod(per_image)
  if strategy == "structured" and not structured_ok:
    raise ValueError(
      f"strategy='structured' needs layer {tap.layer!r} to reach the logits only through global average "
      "pooling; this head transforms A first (a conv, flatten, local pooling or an elementwise op), so "
      "positions do not share derivatives. Use strategy='generic', or tap the layer right before the pooling."
    )
  if strategy == "auto":
    strategy = "structured" if structured_ok else "generic"
    if strategy == "generic" and n_generic > max_generic_directions:
      raise ValueError(
        f"Exact derivatives at layer {tap.layer!r} {tuple(a.shape)} need the generic strategy with "
        f"{n_generic} directions (> max_generic_directions={max_generic_directions}), each a third-order "
        "forward pass through the head: minutes or more. Pass strategy='generic' to run it anyway (memory is "
        f"bounded by chunk_size={chunk_size}), tap a smaller layer, or a layer right before global pooling."
      )
  if strategy == "generic":
    d2, d3 = _generic(f, a, jnp.arange(n_generic), chunk_size, fwd.progress)  # (n, B, K)
    lead = tuple(range(len(per_image), len(per_image) + 2))  # the (B, K) axes after the per-image axes
    d2 = jnp.moveaxis(d2.reshape(per_image + d2.shape[1:]), lead, (0, 1))
    d3 = jnp.moveaxis(d3.reshape(per_image + d3.shape[1:]), lead, (0, 1))
    check = jnp.zeros((), a.dtype)
  else:
    s2, s3 = _structured(f, a, chunk_size, fwd.progress)  # (C, B, K)
    spatial_ones = _spatial.spatial_ones(a.ndim - 2)
    d2 = jnp.broadcast_to(
      jnp.moveaxis(s2, 0, -1)[(slice(None), slice(None)) + spatial_ones], (b, s2.shape[2]) + per_image
    )
    d3 = jnp.broadcast_to(
      jnp.moveaxis(s3, 0, -1)[(slice(None), slice(None)) + spatial_ones], (b, s3.shape[2]) + per_image
    )
    pos = jax.random.choice(jax.random.key(0), n_generic, (min(_CHECK_POSITIONS, n_generic),), replace=False)
    g2, g3 = _generic(f, a, pos, chunk_size)  # (P, B, K)
    flat2 = d2.reshape(d2.shape[:2] + (-1,))[..., pos]  # (B, K, P)
    flat3 = d3.reshape(d3.shape[:2] + (-1,))[..., pos]
    check = jnp.maximum(_rel(jnp.moveaxis(g2, 0, -1), flat2), _rel(jnp.moveaxis(g3, 0, -1), flat3))
    bad = check > 1e-3
    d2 = jnp.where(bad, jnp.nan, d2)  # never a silently wrong answer
    d3 = jnp.where(bad, jnp.nan, d3)
  return Diagonals(fwd.grads[0], d2, d3, check, strategy)


def _rel(ref: jax.Array, got: jax.Array) -> jax.Array:
  scale = jnp.maximum(jnp.max(jnp.abs(ref)), jnp.finfo(ref.dtype).tiny)
  return jnp.max(jnp.abs(ref - got)) / jnp.maximum(scale, 1e-30)


def hvp(tap, x: jax.Array, target: Any, activations: jax.Array, vector: jax.Array, ids: jax.Array | None = None):
  """Exact Hessian-vector products ``(d^2 S_k / dA^2) v`` per image and target, ``(B, K, h, w, C)``.

  Forward-over-reverse (`jax.jvp` of `jax.grad`). Each image's score depends only on its own A, so the Hessian
  of the batch sum is block diagonal and one product serves the whole batch.

  Args:
    tap: a single-layer jaxcam tap.
    x: images ``(B, H, W, C)``.
    target: as in `jaxcam.explain` (None: each image's top class, of the logits at `activations`).
    activations: the layer's output A ``(B, h, w, C)``, the point where the Hessian is taken.
    vector: the vector v, shaped like `activations`.
    ids: ``(B, K)`` class ids that fix the target's classes (e.g. ``Forward.ids``); None: as `target` gives them.

  Returns:
    ``(B, K, h, w, C)``: one Hessian-vector product per image and target.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)) ** 3, None)  # S = m^3, m = mean(A)
    >>> x = jnp.ones((1, 2, 2, 1))  # A = x: m = 1 over n = 4 positions
    >>> hv = jaxcam.derivatives.hvp(tap, x, None, x, jnp.ones_like(x))  # every entry of H is 6 m / n^2 = 0.375
    >>> hv.shape, hv[0, 0, :, :, 0].tolist()  # 4 * 0.375
    ((1, 1, 2, 2, 1), [[1.5, 1.5], [1.5, 1.5]])
  """
  tgt = targets_lib.with_ids(targets_lib.as_target(target), ids)
  f = score_vector_fn(tap, x, tgt)
  with jax.default_matmul_precision("highest"):
    k = jax.eval_shape(f, activations).shape[1]

    def hvp_k(onehot):
      grad = jax.grad(lambda a: jnp.sum(f(a) * onehot[None, :]))
      return jax.jvp(grad, (activations,), (vector,))[1]

    out = jax.vmap(hvp_k)(jnp.eye(k, dtype=activations.dtype))  # (K, B, h, w, C)
  return jnp.moveaxis(out, 0, 1)
