"""FullGrad for linen models: input-gradient x input plus every bias's contribution, with no model edits.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", arXiv 1905.00780. As
pytorch-grad-cam's ``FullGrad``: the map sums

- ``|dS/dx * x|``, each input channel min-max normalized;
- for every convolution with a bias and every BatchNorm layer, ``|b * dS/dy|`` with ``y`` the layer's output and
  ``b`` its bias (BatchNorm's effective bias ``beta - mean * gamma / sqrt(var + eps)``), each channel min-max
  normalized at the layer's resolution, summed over channels and upsampled (bilinear, half-pixel) to the input;

then min-max normalizes the total. The bias layers are found by module type while the model runs
(``flax.linen.Conv``, jaxcam's `Conv` and other modules named ``*Conv`` with a ``bias`` parameter;
``flax.linen.BatchNorm``), and their outputs are perturbed through ``nn.intercept_methods`` to read ``dS/dy``:
one forward and one backward pass in all. Summing channels before upsampling equals pytorch-grad-cam's
upsample-then-sum (bilinear resizing is linear) at a fraction of the memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import postprocess
from jaxcam import targets as targets_lib

__all__ = ["fullgrad", "is_bias_layer", "effective_bias"]


def is_bias_layer(module: Any) -> bool:
  """pytorch-grad-cam's selection: a convolution with a bias, or a BatchNorm layer (with a shift or a scale)."""
  import flax.linen as nn

  if isinstance(module, nn.BatchNorm):
    return bool(module.use_bias or module.use_scale)
  conv = isinstance(module, nn.Conv) or type(module).__name__.endswith("Conv")
  return conv and bool(getattr(module, "use_bias", False))


def effective_bias(module: Any) -> jax.Array:
  """The bias a bound bias layer adds per channel: a convolution's ``bias``; BatchNorm's
  ``beta - mean * gamma / sqrt(var + eps)`` from its running statistics."""
  import flax.linen as nn

  params = module.variables.get("params", {})
  if isinstance(module, nn.BatchNorm):
    stats = module.variables["batch_stats"]
    mean, var = stats["mean"], stats["var"]
    gamma = params["scale"] if module.use_scale else jnp.ones_like(mean)
    beta = params["bias"] if module.use_bias else jnp.zeros_like(mean)
    return beta - mean * gamma / jnp.sqrt(var + module.epsilon)
  return params["bias"]


def _run(module, variables, x, deltas, select, apply_kwargs):
  """The model's output with each selected layer's output shifted by ``deltas[i]`` (None: record the shapes);
  returns ``(output, [(bias, output shape)] in call order)``."""
  import flax.linen as nn

  found: list = []

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name != "__call__" or not context.module.path or not select(context.module):
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    i = len(found)
    found.append((effective_bias(context.module), y.shape))
    return y if deltas is None else y + deltas[i]

  with nn.intercept_methods(interceptor):
    out = module.apply(variables, x, **dict(apply_kwargs))
  return out, found


def _channel_minmax(v: jax.Array) -> jax.Array:
  """Per (image, channel) min-max over the spatial axes of ``(B, h, w, C)``, as ``scale_cam_image`` per channel."""
  return jnp.moveaxis(postprocess.normalize(jnp.moveaxis(v, -1, 1)), 1, -1)


@functools.partial(jax.jit, static_argnames=("module", "select", "apply_kwargs"))
def _fullgrad(module, variables, x, target, *, select, apply_kwargs):
  out, shapes = _run(module, variables, x, None, select, apply_kwargs)  # traced once: shapes, output, class ids
  if not shapes:
    raise ValueError(
      f"FullGrad found no bias layer in {type(module).__name__} (a convolution with use_bias=True or a BatchNorm). "
      "Pass `select=` a predicate on modules to choose them."
    )
  deltas = [jnp.zeros(s, x.dtype) for _, s in shapes]
  ids, scores, _ = target.evaluate(out)
  fixed = targets_lib.with_ids(target, ids)
  if scores.shape[1] != 1:
    raise ValueError("Expected one target class per image for FullGrad, got (B, K) targets; call it once per k.")

  def total(xx, ds):
    o, found = _run(module, variables, xx, ds, select, apply_kwargs)
    return jnp.sum(fixed.evaluate(o)[1]), [b for b, _ in found]

  (gx, gds), biases = jax.grad(total, argnums=(0, 1), has_aux=True)(x, deltas)
  size = x.shape[1:3]
  cam = jnp.sum(_channel_minmax(jnp.abs(gx * x)), axis=-1)
  for bias, g in zip(biases, gds):
    b = jnp.reshape(bias, (1,) * (g.ndim - 1) + (-1,)).astype(g.dtype)
    contrib = jnp.sum(_channel_minmax(jnp.abs(b * g)), axis=-1)
    cam = cam + postprocess.upsample(contrib, size)
  return postprocess.normalize(cam), out, ids, scores


def fullgrad(
  module: Any,
  variables: Any,
  x: jax.Array,
  /,
  target: Any = None,
  *,
  select: Callable[[Any], bool] = is_bias_layer,
  **apply_kwargs: Any,
) -> jax.Array:
  """FullGrad maps ``(B, H, W, C) -> (B, H, W)`` in [0, 1] of a linen model (see the module docstring).

  Args:
    module, variables: the linen model and its variables (running BatchNorm statistics are read).
    x: images ``(B, H, W, C)``.
    target: as in `jaxcam.explain` (None: each image's top class), one class per image.
    select: which submodules count as bias layers (default `is_bias_layer`, pytorch-grad-cam's rule).
    **apply_kwargs: static keyword arguments of ``module.apply`` (e.g. ``train=False``).

  Matches pytorch-grad-cam's ``FullGrad`` (tests/test_fullgradient.py, a torchvision ResNet-18 with non-trivial
  BatchNorm statistics). Not a method-table row: it reads the whole model, not one layer.
  """
  import flax.linen as nn

  from jaxcam.api import check_images

  if not isinstance(module, nn.Module):
    raise TypeError(f"Expected `module` to be a flax.linen.Module, got {type(module).__name__}.")
  check_images(x)
  maps, *_ = _fullgrad(
    module,
    variables,
    x,
    targets_lib.as_target(target),
    select=select,
    apply_kwargs=tuple(sorted(apply_kwargs.items())),
  )
  return maps
