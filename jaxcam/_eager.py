"""The checks an eager call makes around the compiled program (images, flags, pixel values, class ids, degenerate
layers), and how it tells that it runs inside the user's trace, where only shape checks can run."""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import targets as targets_lib

if TYPE_CHECKING:
  from jaxcam.api import Explanation
  from jaxcam.methods.table import MethodSpec


def check_images(x: Any, *, argname: str = "x", spatial_dims: int = 2) -> None:
  """Raise a clear error unless `x` is a float batch of channels-last images ``(B, H, W, C)`` (volumes
  ``(B, D, H, W, C)`` with ``spatial_dims=3``; `jaxcam.taps.spatial_dims` reads a tap's).

  Args:
    x: the array to check. argname: its name in the message. spatial_dims: 1 (sequences), 2 or 3.

  Returns:
    None.

  Raises:
    ValueError: a wrong rank (with the fix: a batch axis, ``input_layout='NLC'`` for sequences), an empty batch, a
      channels-first layout. TypeError: not an array, or integer pixels.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> jaxcam.check_images(jnp.zeros((2, 8, 8, 3)))
    >>> try:
    ...   jaxcam.check_images(jnp.zeros((2, 3, 8, 8)))
    ... except ValueError as e:
    ...   print(str(e).split(". ")[-1])
    Use jnp.moveaxis(x, 1, -1).
  """
  shape = getattr(x, "shape", None)
  rank = spatial_dims + 2
  what = {3: "(B, L, C)", 4: "(B, H, W, C)"}.get(rank, "(B, D, H, W, C)")
  if shape is None:
    raise TypeError(f"Expected `{argname}` to be an array of images {what}, got {type(x).__name__}.")
  if len(shape) != rank:
    hint = " Add a batch axis: x[None]." if len(shape) == rank - 1 else ""
    if rank == 4 and len(shape) == 3:  # one image, or a batch of sequences
      hint = (
        " One image (H, W, C)? Add a batch axis: x[None]. A batch of sequences (B, L, C) needs a tap with "
        "input_layout='NLC' (explain_model: spatial_dims=1)."
      )
    if rank == 4 and len(shape) == 5:
      hint = (
        " Volumes need a tap with input_layout='NDHWC' (or 'NCDHW'); SESS, FullGrad and the batch streamers take "
        "2-D images only."
      )
    raise ValueError(f"Expected `{argname}` of rank {rank} {what}, got shape {tuple(shape)}.{hint}")
  if 0 in tuple(shape):
    raise ValueError(
      f"Expected at least one image with at least one pixel in `{argname}` {what}, got shape {tuple(shape)}."
    )
  if shape[1] in (1, 3, 4) and all(s > 4 for s in shape[2:-1]):
    raise ValueError(
      f"Expected `{argname}` channels-last {what} as in Flax, got shape {tuple(shape)}, which looks "
      "channels-first. Use jnp.moveaxis(x, 1, -1)."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f"Expected `{argname}` to be floating point, got dtype {x.dtype}. Convert images first, e.g. "
      "jaxcam.models.preprocess(images, model_name) or x.astype(jnp.float32) / 255."
    )


def is_traced(tree: Any) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def under_trace(tree: Any) -> bool:
  """True inside the user's `jax.jit` (every new value is then a tracer, even one made from constants) or when an
  input is traced (`vmap`, `grad`): eager-only checks and host-side progress bars are skipped then."""
  return is_traced(tree) or isinstance(jnp.zeros((), jnp.int32), jax.core.Tracer)


def show_progress(progress: Any, traced: bool, expensive: bool) -> bool:
  """Whether chunked maps report progress: `progress` if given, else for eager calls of expensive methods."""
  if progress is not None and not isinstance(progress, bool):
    raise TypeError(f"Expected `progress` to be None (automatic), True or False, got {progress!r}.")
  return (not traced and expensive) if progress is None else progress


@contextlib.contextmanager
def model_errors(x: Any):
  """Flax's parameter errors from inside the traced model, as one clear error about `x` or the variables."""
  from flax import errors as flax_errors

  try:
    yield
  except flax_errors.ScopeParamShapeError as e:
    detail = str(e).split(" (https://")[0]
    raise ValueError(
      f"The model's parameters do not fit `x` of shape {tuple(x.shape)}: {detail} Images must be channels-last "
      "with the channel count the model was built for (RGB: 3; repeat grayscale with np.repeat(x, 3, -1), drop "
      "alpha with x[..., :3]), or the variables belong to another model."
    ) from None
  except (flax_errors.ScopeParamNotFoundError, flax_errors.ScopeCollectionNotFound) as e:
    detail = str(e).split(" (https://")[0]
    raise ValueError(
      f"The tap's variables do not belong to its module: {detail} Pass the variables of this very module "
      "(module.init(...) or the model builder's)."
    ) from None


def check_pixels(tap: Any, x: Any) -> None:
  """For concrete `x`, from one device-to-host transfer: raise naming the images that hold NaN or Inf (they would
  give silent NaN maps), and warn when a shipped model (it declares ``input_mean``: it takes [0, 1]) is given
  what looks like 0-255. Inside a trace (the user's `jax.jit`) the check's result is a tracer even when `x` is a
  closed-over constant, so tracing is told by the result, not only by `x`'s type."""
  if is_traced(x):
    return
  check = (jnp.isfinite(x).all(axis=tuple(range(1, x.ndim))), jnp.max(x))
  if is_traced(check):
    return
  ok, hi = jax.device_get(check)
  if not ok.all():
    bad = np.flatnonzero(~ok).tolist()
    raise ValueError(
      f"Expected finite pixel values in `x`, got NaN or Inf in image(s) {bad[:10]}"
      + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
      + ". Check the decoding / preprocessing of those images."
    )
  module = getattr(tap, "module", None)
  if getattr(module, "input_mean", None) is not None and float(hi) > 2.0:
    warnings.warn(
      f"`x` has pixel values up to {float(hi):.4g}, but {type(module).__name__} takes images in [0, 1] (it "
      "normalizes inside): divide by 255 or use jaxcam.models.preprocess.",
      stacklevel=4,
    )


def prepare(tap: Any, x: Any, target: Any):
  """The checks `explain` and `explain_many` share, before tracing; returns the target as a score object."""
  from jaxcam.taps import spatial_dims

  check_images(x, spatial_dims=spatial_dims(tap))
  check_pixels(tap, x)
  return targets_lib.as_target(target)


def eager_checks(spec: MethodSpec, target: Any, ex: Explanation, options: dict[str, Any]) -> None:
  """After an eager call: out-of-range class ids raise, non-finite logits or scores raise, and the row's own
  `check` runs."""
  _check_ids_in_range(target, ex)
  _check_finite_outputs(ex)
  _warn_degenerate_layer(ex)
  _warn_all_zero(ex)
  if spec.check is not None:
    spec.check(ex, options)


def _check_finite_outputs(ex: Explanation) -> None:
  """From one device-to-host transfer: raise naming the images whose model output (logits) or target scores hold
  NaN or Inf (their maps would be silent NaN or plausible-looking garbage). Eager calls only; under the user's `jit`
  the values pass through unchecked."""
  parts = {
    name: value
    for name, value in (("model output (logits)", ex.logits), ("target scores", ex.scores))
    if isinstance(value, jax.Array) and value.ndim >= 1 and jnp.issubdtype(value.dtype, jnp.inexact)
  }
  if not parts:
    return
  ok = jax.device_get({n: jnp.isfinite(v).reshape(v.shape[0], -1).all(axis=1) for n, v in parts.items()})
  for name, good in ok.items():
    if not good.all():
      bad = np.flatnonzero(~good).tolist()
      raise ValueError(
        f"Expected finite values, got non-finite {name} (NaN or Inf) for image(s) {bad[:10]}"
        + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        + ". The model's output is not usable there: check its weights (a NaN parameter), its inputs' range and, for "
        "a custom target, that it does not take log(0) or divide by zero."
      )


def _one_position(ex: Explanation) -> list:
  """The tapped layers' sizes with a single position (every map is then constant)."""
  return [size for size in ex.feature_sizes if int(np.prod(size)) <= 1]


def _warn_degenerate_layer(ex: Explanation) -> None:
  tiny = _one_position(ex)
  if tiny:
    warnings.warn(
      f"Layer {ex.layer!r} has a feature map of size {tiny[0]} for this input: one position, so every {ex.method} "
      "map is constant (all zeros after min-max). Use larger images (the model's input size) or an earlier layer.",
      stacklevel=4,
    )


def _warn_all_zero(ex: Explanation) -> None:
  maps = np.asarray(ex.maps)
  if maps.size and not np.any(maps) and not _one_position(ex):  # that case has its own warning
    warnings.warn(
      f"Every {ex.method} map is zero for every image at layer {ex.layer!r}. Likely the target does not depend on "
      "the tapped positions: e.g. a transformer head that reads only the CLS token tapped after the last attention "
      "block (tap an earlier block's output or its norm1), a layer after global pooling, or constant inputs; "
      "otherwise all evidence is negative (relu=False shows it).",
      stacklevel=4,
    )


def _check_ids_in_range(target: Any, ex: Explanation) -> None:
  classes = getattr(target, "classes", None)
  if classes is None or isinstance(classes, jax.core.Tracer):
    return
  targets_lib.check_ids_in_range(classes, ex.logits.shape[-1])
