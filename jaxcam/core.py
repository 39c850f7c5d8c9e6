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

  logits: the model's output (``(B, classes)`` logits for class-id targets, any pytree otherwise);
  activations[i]: ``(B, h, w, C)``; grads[i]: ``(B, K, h, w, C)`` = dS_k/dA (None without backward);
  ids: ``(B, K)`` class ids (None for a custom score callable); scores: ``(B, K)``; target: the score object;
  multi: whether the target asked for K classes per image (static); progress: the label under which the chunked
  maps computed from this pass (masked copies, derivative directions) report progress, None for no report (static:
  a program either always reports or never does, see `jaxcam._progress`).
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
  spatial rank."""
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
  """One forward pass: output, activations and target scores, no gradients (`progress`: see `Forward`)."""
  tgt = targets_lib.as_target(target)
  logits, acts = tap(x)
  acts = _as_tuple(acts) if tap.multi else (acts,)
  check_activations(tap, acts, x)
  ids, scores, multi = tgt.evaluate(logits)
  return Forward(logits, acts, None, ids, scores, multi, tgt, progress)


def forward_and_grads(tap, x: jax.Array, target: Any, *, progress: str | None = None) -> Forward:
  """One forward pass and K backward passes from the layer: dS_k/dA for each target k.

  Each image's score depends only on that image (inference-mode models), so the gradient of the batch sum of
  scores is the per-image gradient. Returns a `Forward` with ``grads[i]`` of shape ``(B, K, h, w, C)``.
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
  """`forward_and_grads` when `grads`, else `forward_only`."""
  if grads:
    return forward_and_grads(tap, x, target, progress=progress)
  return forward_only(tap, x, target, progress=progress)
