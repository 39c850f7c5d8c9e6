"""The first-order core that every method shares: one forward pass and, when a method needs gradients, one
backward pass *from the layer on*.

The gradient is taken w.r.t. a zero perturbation `delta` added to the layer's output, so nothing before the layer
is differentiated or stored for the backward pass. With K target classes per image the forward pass is shared
and the K backward passes are batched with `jax.vmap`. Higher-order derivatives live in `jaxcam.derivatives`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import targets as targets_lib

__all__ = ["Forward", "forward", "forward_only", "forward_and_grads", "check_activations"]


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["logits", "activations", "grads", "ids", "scores", "target"],
  meta_fields=["multi", "progress"],
)
@dataclasses.dataclass(frozen=True)
class Forward:
  """What one forward (+ backward) pass yields; activations/grads are tuples with one entry per layer.

  A pytree (`jax.jit` returns it); `multi` and `progress` are static.

  Args:
    logits: the model's output (``(B, classes)`` logits for class-id targets, any pytree otherwise).
    activations: one ``(B, h, w, C)`` array per tapped layer (``(B, d, h, w, C)`` for volumes).
    grads: one ``(B, K, h, w, C)`` array per layer, dS_k/dA; None without the backward pass.
    ids: ``(B, K)`` class ids (None for a custom score callable).
    scores: ``(B, K)`` target scores.
    multi: whether the target asked for K classes per image (static).
    target: the score object (`jaxcam.targets`) the scores come from.
    progress: the label under which the chunked maps computed from this pass (masked copies, derivative
      directions) report progress, None for no report (static: a program either always reports or never does,
      see `jaxcam._progress`).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from jaxcam.core import forward_only
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: (a ** 2).mean((1, 2)), None)  # logits (B, C)
    >>> x = jnp.broadcast_to(jnp.array([1.0, 2.0]), (1, 2, 2, 2))  # channel 0 holds 1, channel 1 holds 2
    >>> fwd = forward_only(tap, x, None)  # None: each image's top class
    >>> fwd.logits.tolist(), fwd.ids.tolist(), fwd.scores.tolist(), fwd.activations[0].shape, fwd.grads
    ([[1.0, 4.0]], [[1]], [[4.0]], (1, 2, 2, 2), None)
  """

  logits: Any
  activations: tuple
  grads: tuple | None
  ids: jax.Array | None
  scores: jax.Array
  multi: bool
  target: Any = None
  progress: str | None = None


def _as_tuple(a: Any) -> tuple:
  return tuple(a) if isinstance(a, tuple) else (a,)


_FEATURES = {4: "(B, h, w, C)", 5: "(B, d, h, w, C)"}


def check_activations(tap, acts: tuple, x: jax.Array) -> None:
  """Raise a clear error if a tapped layer's output is not a feature map ``(B, *spatial, C)`` of the input's
  spatial rank.

  Args:
    tap: the tap whose layers produced `acts` (its `layer` names them in the message).
    acts: one activation per tapped layer (a tuple, also for a single-layer tap).
    x: the input images ``(B, *spatial, C)``; each activation must have its rank and batch size.

  Returns:
    None; the activations are fine.

  Raises:
    ValueError: an activation of another rank or batch size (with a hint: token outputs ``(B, N, D)`` need a
      layout, a layer after global pooling is not spatial).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from jaxcam.core import check_activations
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.mean((1, 2)), None)
    >>> x = jnp.ones((1, 2, 2, 3))
    >>> check_activations(tap, (x,), x)  # a (B, h, w, C) feature map: no error
    >>> check_activations(tap, (jnp.ones((1, 3)),), x)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected the output of layer 'A' to be a feature map (B, h, w, C) with B=1, got (1, 3). ...
  """
  for name, a in zip(_as_tuple(tap.layer) if tap.multi else (tap.layer,), acts):
    if getattr(a, "ndim", None) != x.ndim or a.shape[0] != x.shape[0]:
      hint = (
        "Transformer tokens (B, N, D)? Pass layout=jaxcam.layouts.tokens(prefix=1) (the CLS count as prefix), or "
        "layout=a function value -> (B, h, w, C)."
        if getattr(a, "ndim", None) == 3
        else "CAMs need a spatial layer: choose a convolutional block before global pooling."
      )
      raise ValueError(
        f"Expected the output of layer {name!r} to be a feature map {_FEATURES.get(x.ndim, '(B, *spatial, C)')} with "
        f"B={x.shape[0]}, got "
        f"{getattr(a, 'shape', type(a).__name__)}. {hint} (jaxcam.list_layers shows each path's output shape.)"
      )


def forward_only(tap, x: jax.Array, target: Any, *, progress: str | None = None) -> Forward:
  """One forward pass: output, activations and target scores, no gradients.

  Args:
    tap: a jaxcam tap (`jaxcam.linen_tap`, `jaxcam.nnx_tap`, `jaxcam.function_tap`, ...).
    x: images ``(B, H, W, C)`` (``(B, D, H, W, C)`` for volumes).
    target: as in `jaxcam.explain` (None: each image's top class; ids ``(B,)`` or ``(B, K)``; a score).
    progress: the label later chunked maps report progress under (see `Forward`); None: no report.

  Returns:
    A `Forward` with ``grads=None``.

  Raises:
    ValueError: a tapped layer's output is not a feature map (`check_activations`).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from jaxcam.core import forward_only
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: (a ** 2).mean((1, 2)), None)  # logits (B, C)
    >>> fwd = forward_only(tap, jnp.broadcast_to(jnp.array([1.0, 2.0]), (1, 2, 2, 2)), jnp.array([0]))
    >>> fwd.ids.tolist(), fwd.scores.tolist(), fwd.grads is None
    ([[0]], [[1.0]], True)
  """
  tgt = targets_lib.as_target(target)
  logits, acts = tap(x)
  acts = _as_tuple(acts) if tap.multi else (acts,)
  check_activations(tap, acts, x)
  ids, scores, multi = tgt.evaluate(logits)
  return Forward(logits, acts, None, ids, scores, multi, tgt, progress)


def forward_and_grads(tap, x: jax.Array, target: Any, *, progress: str | None = None) -> Forward:
  """One forward pass and K backward passes from the layer: dS_k/dA for each target k.

  Each image's score depends only on that image (inference-mode models), so the gradient of the batch sum of
  scores is the per-image gradient.

  Args:
    tap: a jaxcam tap.
    x: images ``(B, H, W, C)`` (``(B, D, H, W, C)`` for volumes).
    target: as in `jaxcam.explain` (None: each image's top class; ids ``(B,)`` or ``(B, K)``; a score).
    progress: the label later chunked maps report progress under (see `Forward`); None: no report.

  Returns:
    A `Forward` with ``grads[i]`` of shape ``(B, K, h, w, C)`` (K = 1 for one class per image).

  Raises:
    ValueError: a tapped layer's output is not a feature map (`check_activations`).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from jaxcam.core import forward_and_grads
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: (a ** 2).mean((1, 2)), None)  # S_c = mean(A_c^2)
    >>> fwd = forward_and_grads(tap, jnp.broadcast_to(jnp.array([1.0, 2.0]), (1, 2, 2, 2)), None)  # top class: 1
    >>> g = fwd.grads[0]  # dS_1/dA = 2 A_1 / (h w) = 1 in channel 1, 0 in channel 0
    >>> g.shape, g[0, 0, 0, 0].tolist()
    ((1, 1, 2, 2, 2), [0.0, 1.0])
  """
  tgt = targets_lib.as_target(target)
  shapes = tap.activation_shape(x)
  shapes = shapes if tap.multi else (shapes,)
  zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in shapes)

  def through_layer(deltas):
    logits, acts = tap(x, deltas if tap.multi else deltas[0])
    return logits, (acts if tap.multi else (acts,))

  logits, pullback, acts = jax.vjp(through_layer, zeros, has_aux=True)
  check_activations(tap, acts, x)
  ids, scores, multi = tgt.evaluate(logits)

  def score_fn(lg):
    return tgt.evaluate(lg)[1]

  _, score_pullback = jax.vjp(score_fn, logits)
  k = scores.shape[1]

  def grads_for(onehot):  # onehot: (K,) cotangent of one target column, summed over the batch
    (dlogits,) = score_pullback(jnp.broadcast_to(onehot, scores.shape).astype(scores.dtype))
    (g,) = pullback(jax.tree.map(lambda d, o: d.astype(o.dtype), dlogits, logits))
    return g

  if k == 1:
    grads = tuple(g[:, None] for g in grads_for(jnp.ones((1,))))
  else:
    stacked = jax.vmap(grads_for)(jnp.eye(k))  # tuple of (K, B, h, w, C)
    grads = tuple(jnp.moveaxis(g, 0, 1) for g in stacked)
  return Forward(logits, acts, grads, ids, scores, multi, tgt, progress)


def forward(tap, x: jax.Array, target: Any, *, grads: bool, progress: str | None = None) -> Forward:
  """`forward_and_grads` when `grads`, else `forward_only`.

  Args:
    tap: a jaxcam tap.
    x: images ``(B, H, W, C)`` (``(B, D, H, W, C)`` for volumes).
    target: as in `jaxcam.explain` (None: each image's top class; ids ``(B,)`` or ``(B, K)``; a score).
    grads: whether to run the backward pass from the layer (keyword-only, required).
    progress: the label later chunked maps report progress under (see `Forward`); None: no report.

  Returns:
    A `Forward`; ``grads`` holds ``(B, K, h, w, C)`` per layer when `grads`, else None.

  Raises:
    ValueError: a tapped layer's output is not a feature map (`check_activations`).

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from jaxcam.core import forward
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: (a ** 2).mean((1, 2)), None)  # S_c = mean(A_c^2)
    >>> x = jnp.broadcast_to(jnp.array([1.0, 2.0]), (1, 2, 2, 2))
    >>> fwd = forward(tap, x, jnp.array([[0, 1]]), grads=True)  # K = 2 classes for the one image
    >>> fwd.multi, fwd.grads[0].shape, fwd.grads[0][0, :, 0, 0].tolist()  # dS_k/dA = A_k / 2 in channel k
    (True, (1, 2, 2, 2, 2), [[0.5, 0.0], [0.0, 1.0]])
    >>> forward(tap, x, None, grads=False).grads is None
    True
  """
  if grads:
    return forward_and_grads(tap, x, target, progress=progress)
  return forward_only(tap, x, target, progress=progress)
