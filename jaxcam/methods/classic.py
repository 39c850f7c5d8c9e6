"""Classic CAM: the weights of the final Dense layer of a global-pooling + Dense head."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _jaxpr, _spatial
from jaxcam._errors import check_key

__all__ = ["cam_weights", "check_gap_dense_head", "fem_weights", "randomcam_weights", "resolve_fc_kernel"]


def cam_weights(activations: jax.Array, kernel: jax.Array, ids: jax.Array, /) -> jax.Array:
  """CAM channel weights: the Dense kernel's column of each target class.

  ``w_k = W[k, c]`` for a head ``logits = W^T GAP(A) + b``. kernel ``(C, classes)``, ids ``(B, K)`` ->
  ``(B, K, C)`` (the activations, ``(B, K, h, w, C)``, are not read). On such a head Grad-CAM's weights are
  ``W[:, c] / (h w)``: the same map up to scale.

  Zhou et al., "Learning Deep Features for Discriminative Localization", arXiv 1512.04150. Matches
  torchcam's ``CAM`` (pytorch-grad-cam has no classic CAM).
  """
  del activations
  return jnp.take(jnp.asarray(kernel).T, ids, axis=0, mode="clip")


_LINEAR = {
  "reduce_sum",
  "div",
  "mul",
  "convert_element_type",
  "dot_general",
  "add",
  "add_any",
  "reshape",
  "squeeze",
  "broadcast_in_dim",
  "copy",
  "copy_p",
  "transpose",
  "expand_dims",
  "neg",
}


def _walk(jaxpr, dep_in, events) -> list[bool]:
  dep = dict(zip(jaxpr.invars, dep_in))
  for eqn in jaxpr.eqns:
    din = _jaxpr.flags(eqn.invars, dep)
    if not any(din):
      for v in eqn.outvars:
        dep[v] = False
      continue
    inner = _jaxpr.inner_jaxpr(eqn)
    if inner is not None:
      dout = _walk(inner, din[-len(inner.invars) :] if len(din) >= len(inner.invars) else din, events)
    else:
      events.append((eqn.primitive.name, eqn, din))
      dout = [True] * len(eqn.outvars)
    for v, d in zip(eqn.outvars, dout):
      dep[v] = d
  return _jaxpr.flags(jaxpr.outvars, dep)


def _global_window_sum(eqn) -> bool:
  """A ``reduce_window_sum`` over the whole grid (``avg_pool`` with the map's size, as Hugging Face ResNet's
  pooler): global pooling, linear. Every axis but the batch and the channels (last, or second: channels-first)
  is pooled whole."""
  if eqn.primitive.name != "reduce_window_sum" or any(p != (0, 0) for p in eqn.params["padding"]):
    return False
  shape, window = eqn.invars[0].aval.shape, eqn.params["window_dimensions"]
  n = len(shape)
  for channel in (n - 1, 1):
    spatial = [i for i in range(1, n) if i != channel]
    if window[0] == window[channel] == 1 and spatial and all(window[i] == shape[i] for i in spatial):
      return True
  return False


def check_gap_dense_head(head_fn, activations: jax.Array, *, layer: str = "layer") -> None:
  """Raise `ValueError` unless ``head_fn(A)`` is global average pooling followed by one Dense layer.

  Checked at trace time on the jaxpr: every operation that depends on A must be linear (sums, scalings,
  reshapes, one matrix product and a bias), the spatial axes must be summed before the single matrix product,
  and nothing else (ReLU, convolution, normalization) may sit in between.
  """
  closed = jax.make_jaxpr(head_fn)(activations)
  events: list = []
  (dep_out,) = _walk(closed.jaxpr, [True], events)[:1] or [False]
  problems = []
  if not dep_out:
    problems.append("the logits do not depend on the layer")
  bad = sorted({name for name, eqn, _ in events if name not in _LINEAR and not _global_window_sum(eqn)})
  if bad:
    problems.append("operations between the layer and the logits are not pooling + Dense: " + ", ".join(bad))
  dots = [(eqn, din) for name, eqn, din in events if name == "dot_general"]
  if len(dots) != 1:
    problems.append(f"expected exactly one Dense matrix product after the layer, found {len(dots)}")
  else:
    eqn, din = dots[0]
    shapes = [v.aval.shape for v, d in zip(eqn.invars, din) if d]
    if len(shapes) != 1 or len(shapes[0]) != 2:
      problems.append(f"the Dense layer does not read a pooled (B, C) vector (got {shapes})")
  for name, _eqn, din in events:
    if name == "mul" and sum(din) > 1:
      problems.append("the head multiplies the activations with themselves")
      break
  if problems:
    raise ValueError(
      f"CAM needs a head that is global average pooling + Dense after layer {layer!r}; "
      + "; ".join(problems)
      + ". Use Grad-CAM (identical up to scale on such heads) or tap the layer right before the pooling."
    )


def resolve_fc_kernel(tap, fc: Any) -> jax.Array:
  """The Dense kernel ``(C, classes)`` from `fc` (an array or a layer path) or the model's ``fc_layer``."""
  return resolve_fc(tap, fc)[0]


def resolve_fc(tap, fc: Any) -> tuple[jax.Array, jax.Array | None]:
  """``(kernel (C, classes), bias (classes,) or None)`` of the Dense layer `fc` (an array: no bias) or the model's
  ``fc_layer``, read through the tap's `dense` capability."""
  if fc is not None and not isinstance(fc, (str, tuple)):
    kernel = jnp.asarray(fc)
    if kernel.ndim != 2:
      raise ValueError(f"Expected `fc` to be a Dense kernel of shape (C, classes), got shape {kernel.shape}.")
    return kernel, None
  dense = getattr(tap, "dense", None)
  if dense is None:  # a tap of your own that does not subclass jaxcam.Tap
    raise ValueError(f"CAM needs `fc=` as a (C, classes) kernel array for a {type(tap).__name__}.")
  return dense(fc)


def head_kernel(head_fn, activations: jax.Array) -> jax.Array:
  """The Dense kernel ``(C, classes)`` of a global-average-pooling + Dense head, read from the head itself (for
  models that declare no ``fc_layer``, e.g. Hugging Face ResNet/RegNet): the head is affine in A, so its derivative
  along channel c held constant over the positions is row c of the kernel (the pooling's 1/(h*w), h*w times).
  One forward-mode pass per channel, batched; call `check_gap_dense_head` first."""

  def along(e):
    return jax.jvp(head_fn, (activations,), (jnp.broadcast_to(e, activations.shape),))[1][0]

  return jax.vmap(along)(jnp.eye(activations.shape[-1], dtype=activations.dtype))


def declares_fc(tap) -> bool:
  """Whether CAM finds the Dense layer without `fc=` (the model declares ``fc_layer``)."""
  try:
    resolve_fc(tap, None)
  except ValueError:  # LayerNotFoundError too
    return False
  return True


def fem_weights(activations: jax.Array, /, *, k: float = 2.0) -> jax.Array:
  """FEM channel weights: the fraction of positions where a channel exceeds its k-sigma threshold.

  ``w_c = mean_{ij} [A_c(i, j) > mean(A_c) + k std(A_c)]`` (population std). ``(B, K, *spatial, C) -> (B, K, C)``.
  Class-agnostic (no gradients): it highlights what is unusually strong in each feature map.

  Fuad et al., "Features Understanding in 3D CNNs for Actions Recognition in Video", IPTA 2020. Matches
  pytorch-grad-cam's ``FEM`` (k = 2).
  """
  a = activations
  n = _spatial.of_rows(a)
  mean = _spatial.feature_mean(a, n)
  std = jnp.sqrt(_spatial.feature_mean(jnp.square(a - mean), n))
  above = (a > mean + jnp.asarray(k, a.dtype) * std).astype(a.dtype)
  return _spatial.feature_mean(above, n, keepdims=False)


def randomcam_weights(activations: jax.Array, /, *, key: jax.Array | None = None) -> jax.Array:
  """Random-CAM channel weights: uniform(-1, 1), one draw per channel from `key` (a sanity-check baseline).

  ``(B, K, *spatial, C) -> (B, K, C)``. The same `key` gives every image (and target) the same weights, so an image's
  map never depends on its batch companions; pass per-image keys (``jax.random.fold_in``) through `jax.vmap` for
  independent draws. pytorch-grad-cam's ``RandomCAM`` draws per image from numpy's global RNG (no parity: a
  baseline, not a formula).
  """
  key = check_key(key, method="randomcam")
  c = activations.shape[-1]
  w = jax.random.uniform(key, (c,), activations.dtype, minval=-1.0, maxval=1.0)
  return jnp.broadcast_to(w, activations.shape[: -_spatial.of_rows(activations) - 1] + (c,))
