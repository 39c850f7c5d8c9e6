"""FullGrad (the row ``"fullgrad"``): input-gradient x input plus every bias's contribution, with no model edits.

Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", arXiv 1905.00780. As
pytorch-grad-cam's ``FullGrad``: the map sums

- ``|dS/dx * x|``, each input channel min-max normalized;
- for every convolution with a bias and every BatchNorm layer, ``|b * dS/dy|`` with ``y`` the layer's output and
  ``b`` its bias (BatchNorm's effective bias ``beta - mean * gamma / sqrt(var + eps)``), each channel min-max
  normalized at the layer's resolution, summed over channels and upsampled (bilinear, half-pixel) to the input;

then min-max normalizes the total. The bias layers are found by module type while the model runs
(``flax.linen.Conv``, jaxcam's `Conv` and other modules named ``*Conv`` with a ``bias`` parameter;
``flax.linen.BatchNorm``), and their outputs are perturbed through the tap's ``intercept`` (linen:
``nn.intercept_methods``) to read ``dS/dy``: one forward and one backward pass in all. The provider of the need
``fullgrad`` computes the sum; the row's map is that sum at the input's resolution (output "input_map"), normalized
by the usual pipeline. Summing channels before upsampling equals pytorch-grad-cam's
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

__all__ = ["fullgrad", "fullgrad_map", "fullgrad_provider", "fullgrad_raw", "is_bias_layer", "effective_bias"]


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


def _collect(call, x, deltas, select):
  """The model's output with each selected layer's output shifted by ``deltas[i]`` (None: nothing shifted);
  returns ``(output, [(bias, output shape)] in call order)``. ``call(x, interceptor)`` runs the model with every
  submodule call routed through ``interceptor(next_fun, args, kwargs, module, path)`` (`jaxcam.Tap.intercept`)."""
  found: list = []

  def interceptor(next_fun, args, kwargs, module, path):
    del path
    if not select(module):
      return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)
    i = len(found)
    found.append((effective_bias(module), y.shape))
    return y if deltas is None else y + deltas[i]

  out = call(x, interceptor)
  return out, found


def _channel_minmax(v: jax.Array) -> jax.Array:
  """Per (image, channel) min-max over the spatial axes of ``(B, *spatial, C)`` (images or volumes), as
  ``scale_cam_image`` per channel."""
  return jnp.moveaxis(postprocess.normalize(jnp.moveaxis(v, -1, 1), spatial_dims=v.ndim - 2), 1, -1)


def fullgrad_raw(call: Callable, x: jax.Array, score: Callable, select: Callable[[Any], bool]) -> jax.Array:
  """The FullGrad sum ``(B, *size)`` before its final min-max: ``|dS/dx * x|`` plus every selected bias layer's
  ``|b * dS/dy|`` (each channel min-max normalized, summed over channels, upsampled to the input). `call` runs the
  model with an interceptor (`jaxcam.Tap.intercept`), `score(output) -> (B,)` is the target score. One forward and
  one backward pass."""
  out, shapes = _collect(call, x, None, select)  # traced once: the layers' shapes
  del out
  if not shapes:
    raise ValueError(
      "FullGrad found no bias layer in the model (a convolution with use_bias=True or a BatchNorm). Pass `select=` "
      "a predicate on modules to choose them."
    )
  deltas = [jnp.zeros(s, x.dtype) for _, s in shapes]

  def total(xx, ds):
    o, found = _collect(call, xx, ds, select)
    return jnp.sum(score(o)), [b for b, _ in found]

  (gx, gds), biases = jax.grad(total, argnums=(0, 1), has_aux=True)(x, deltas)
  size = x.shape[1:-1]  # (H, W), or (D, H, W) for volumes
  cam = jnp.sum(_channel_minmax(jnp.abs(gx * x)), axis=-1)
  for bias, g in zip(biases, gds):
    b = jnp.reshape(bias, (1,) * (g.ndim - 1) + (-1,)).astype(g.dtype)
    contrib = jnp.sum(_channel_minmax(jnp.abs(b * g)), axis=-1)
    cam = cam + postprocess.upsample(contrib, size)
  return cam


def can_read_biases(tap: Any) -> bool:
  """Whether FullGrad can read `tap`'s model: a tap that intercepts its submodules' calls (`linen_tap`)."""
  return bool(getattr(tap, "can_intercept", False))


def fullgrad_provider(tap, x, fwd, *, select: Callable[[Any], bool] = is_bias_layer) -> tuple:
  """The ``fullgrad`` need: per tapped layer, the FullGrad sum ``(B, 1, H, W)`` of the whole model (it does not
  depend on the layer), read through ``tap.intercept`` for the target's class ids fixed by the shared pass.
  `select`: which submodules count as bias layers (default `is_bias_layer`, pytorch-grad-cam's rule)."""
  if not can_read_biases(tap):
    raise ValueError(
      f"FullGrad reads every bias layer while the model runs, which needs a tap that intercepts submodule calls "
      f"(jaxcam.linen_tap); got a {type(tap).__name__}."
    )
  if fwd.scores.shape[1] != 1:
    raise ValueError("Expected one target class per image for FullGrad, got (B, K) targets; call it once per k.")
  fixed = targets_lib.with_ids(fwd.target, fwd.ids)
  cam = fullgrad_raw(tap.intercept, x, lambda o: fixed.evaluate(o)[1][:, 0], select)
  return (cam[:, None],) * len(tap.layers)


def fullgrad_map(activations: jax.Array, fullgrad: jax.Array, /) -> jax.Array:
  """FullGrad's row function: the map is its need, the FullGrad sum at the input's resolution ``(B, 1, H, W)``
  (output "input_map"); the activations are not read (FullGrad explains the whole model, not one layer).

  Srinivas & Fleuret, "Full-Gradient Representation for Neural Network Visualization", arXiv 1905.00780. Matches
  pytorch-grad-cam's ``FullGrad`` (tests/test_fullgradient.py).
  """
  del activations
  return fullgrad


@functools.partial(jax.jit, static_argnames=("select",))
def _fullgrad_module(tap, x, target, *, select):
  """The deprecated form's maps: the whole model through a layer-less linen tap (`tap.intercept` only)."""
  ids, scores, _ = target.evaluate(tap.forward(x))
  if scores.shape[1] != 1:
    raise ValueError("Expected one target class per image for FullGrad, got (B, K) targets; call it once per k.")
  fixed = targets_lib.with_ids(target, ids)
  return postprocess.normalize(fullgrad_raw(tap.intercept, x, lambda o: fixed.evaluate(o)[1][:, 0], select))


def fullgrad(*args: Any, **kwargs: Any) -> jax.Array:
  """FullGrad maps ``(B, H, W, C) -> (B, H, W)`` in [0, 1] (see the module docstring): the registered row
  ``"fullgrad"``, called like every method function, ``jaxcam.fullgrad(tap, x, target, select=...)``.

  The tap names any layer (FullGrad reads the whole model; a linen tap on its last block is the usual choice) and
  must intercept submodule calls (`jaxcam.linen_tap`). Option ``select``: which submodules count as bias layers
  (default `is_bias_layer`, pytorch-grad-cam's rule). ``jaxcam.explain("fullgrad", ...)``, ``explain_many``, the
  streaming runs, ``explain_model(method="fullgrad")``, the metrics' ``method=`` and ``jaxcam explain --method
  fullgrad`` run the same row.

  Deprecated form: ``fullgrad(module, variables, x, target=None, *, select=..., **apply_kwargs)`` on a linen module
  and its variables (a `DeprecationWarning`); it gives the same maps.

  Args:
    *args: ``tap, x`` and optionally ``target``, as every method function (``jaxcam.gradcam``).
    **kwargs: ``target``, `jaxcam.explain`'s post-processing arguments (``normalize``, ``upsample``, ...) and
      ``select`` (``select(module) -> bool``, default `is_bias_layer`).

  Returns:
    The maps ``(B, H, W)`` (``(B, K, H, W)`` for ``(B, K)`` targets), float32, in [0, 1] by default.

  Raises:
    ValueError: a tap that cannot intercept submodule calls, or bad images / targets (as `jaxcam.explain`).
    TypeError: an unknown option.

  >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcam
  >>> class Net(nn.Module):  # conv features -> global average pooling -> dense
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     a = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu], name="features")(x)
  ...     return nn.Dense(3)(a.mean(axis=(1, 2)))
  >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  >>> tap = jaxcam.linen_tap(Net(), Net().init(jax.random.key(1), x), "features")
  >>> maps = jaxcam.fullgrad(tap, x, jnp.array([0, 2]))
  >>> maps.shape, bool(jnp.all((maps >= 0) & (maps <= 1)))
  ((2, 8, 8), True)
  """
  import flax.linen as nn

  if args and isinstance(args[0], nn.Module):
    return _deprecated_fullgrad(*args, **kwargs)
  from jaxcam._public import public_function
  from jaxcam.methods.table import get_method

  return public_function(get_method("fullgrad"))(*args, **kwargs)


def _deprecated_fullgrad(
  module: Any,
  variables: Any,
  x: jax.Array,
  /,
  target: Any = None,
  *,
  select: Callable[[Any], bool] = is_bias_layer,
  **apply_kwargs: Any,
) -> jax.Array:
  from jaxcam._errors import warn_user
  from jaxcam.api import check_images

  warn_user(
    "jaxcam.fullgrad(module, variables, x, ...) is deprecated: FullGrad is the row 'fullgrad'; call "
    "jaxcam.fullgrad(jaxcam.linen_tap(module, variables, layer), x, target) (any layer: FullGrad reads the whole "
    "model) or jaxcam.explain('fullgrad', tap, x, target).",
    DeprecationWarning,
  )
  from jaxcam.taps import LinenTap

  check_images(x)
  tap = LinenTap(module, variables, layers=(), multi=False, apply_kwargs=tuple(sorted(apply_kwargs.items())))
  return _fullgrad_module(tap, x, targets_lib.as_target(target), select=select)
