"""The public entry points: `explain` and one function per method, all generated from the method table.

Every function is a pure function of ``(tap, x, target)``: it runs eagerly (compiled internally, once per
input shape and options) and inside a user's `jax.jit`, where Python options are bound with
`functools.partial`::

    f = jax.jit(functools.partial(jaxcam.gradcam_pp, normalize=False))
    maps = f(tap, x, target=jaxcam.targets.log_softmax(t))   # tap, x, target are pytrees: no static args
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import derivatives, postprocess
from jaxcam import targets as targets_lib
from jaxcam.methods import classic, gradient
from jaxcam.methods.table import METHODS, MethodSpec, get_method

__all__ = ["Explanation", "explain", "explain_many", "check_images"]

_FUSIONS = ("mean", "max")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["maps", "logits", "target", "scores"],
    meta_fields=["method", "layer"],
)
@dataclasses.dataclass(frozen=True)
class Explanation:
  """The result of `explain` (a pytree; `method` and `layer` are static).

  maps: ``(B, H, W)`` float32 in [0, 1] by default (``(B, K, H, W)`` for K classes per image; layer resolution
  with ``upsample=False``). logits: ``(B, classes)``. target: class ids ``(B,)`` / ``(B, K)``, None for a custom
  score. scores: the target scores S, ``(B,)`` / ``(B, K)``.
  """

  maps: jax.Array
  logits: jax.Array
  target: jax.Array | None
  scores: jax.Array
  method: str
  layer: Any


def check_images(x: Any, *, argname: str = "x") -> None:
  """Raise a clear error unless `x` is a float batch of channels-last images ``(B, H, W, C)``."""
  shape = getattr(x, "shape", None)
  if shape is None:
    raise TypeError(f"Expected `{argname}` to be an array of images (B, H, W, C), got {type(x).__name__}.")
  if len(shape) != 4:
    hint = " Add a batch axis: x[None]." if len(shape) == 3 else ""
    raise ValueError(f"Expected `{argname}` of rank 4 (B, H, W, C), got shape {tuple(shape)}.{hint}")
  if shape[1] in (1, 3, 4) and shape[2] > 4 and shape[3] > 4:
    raise ValueError(
        f"Expected `{argname}` channels-last (B, H, W, C) as in Flax, got shape {tuple(shape)}, which looks "
        "channels-first. Use jnp.moveaxis(x, 1, -1)."
    )
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"Expected `{argname}` to be floating point, got dtype {x.dtype}. Convert images first, e.g. "
        "jaxcam.models.preprocess(images, model_name) or x.astype(jnp.float32) / 255."
    )


def _float(a: jax.Array) -> jax.Array:
  return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _raw_maps(spec: MethodSpec, tap, x, fwd, i: int, fc_kernel, fc_path, options) -> jax.Array:
  """Unprocessed ``(B, K, h, w)`` maps of layer i."""
  a = _float(fwd.activations[i])[:, None]  # (B, 1, h, w, C)
  k = fwd.scores.shape[1]
  if spec.kind == "cam":
    if fwd.ids is None:
      raise ValueError("CAM needs class ids as target (ints, None, or a jaxcam.targets score of class ids).")
    kernel = _float(fc_kernel if fc_kernel is not None else classic.resolve_fc_kernel(tap, fc_path))
    c, n = a.shape[-1], fwd.logits.shape[-1]
    if kernel.shape != (c, n):
      raise ValueError(
          f"Expected the CAM kernel `fc` of shape (C, classes) = ({c}, {n}) for layer {tap.layer!r}, got "
          f"{tuple(kernel.shape)}."
      )
    if tap.multi:
      raise ValueError("CAM reads one layer (the one before global pooling); got a multi-layer tap.")
    classic.check_gap_dense_head(lambda act: tap.head(x, act), fwd.activations[i], layer=str(tap.layer))
    weights = classic.cam_weights(kernel, fwd.ids)  # (B, K, C)
    return postprocess.combine(weights, jnp.broadcast_to(a, a.shape[:1] + (k,) + a.shape[2:]))
  g = _float(fwd.grads[i]) if spec.needs_grads else None
  if spec.kind == "map":
    raw = spec.fn(a, g) if g is not None else spec.fn(a)
    return jnp.broadcast_to(raw, raw.shape[:1] + (k,) + raw.shape[2:])
  a = jnp.broadcast_to(a, g.shape)
  options = dict(options)
  if spec.extra == "diagonals":
    derivs, convention = options.pop("derivatives"), options.pop("convention")
    strategy, chunk_size = options.pop("strategy"), options.pop("chunk_size")
    if derivs not in ("approx", "exact"):
      raise ValueError(f"Expected `derivatives` to be 'approx' or 'exact', got {derivs!r}.")
    if derivs == "exact":
      if tap.multi:
        raise ValueError("derivatives='exact' needs a single-layer tap.")
      d = derivatives.diagonals_k(tap, x, fwd.target, strategy=strategy, chunk_size=chunk_size, fwd=fwd)
      second, third = _float(d.second), _float(d.third)
    else:
      second = third = jnp.zeros_like(g)
    if derivs == "exact" or convention != "exp":
      options["second"], options["third"] = gradient.gradcam_pp_derivative_terms(g, second, third,
                                                                                 convention=convention)
  elif spec.extra == "hvp":
    if tap.multi:
      raise ValueError(f"{spec.name} needs a single-layer tap.")
    act = fwd.activations[i]
    options["hvp"] = _float(derivatives.hvp(tap, x, fwd.target, act, act, ids=fwd.ids))
  return postprocess.combine(spec.fn(a, g, **options), a)


def _finish(spec, tap, x, fwd, fc_kernel, *, normalize, upsample, relu, fusion, options) -> Explanation:
  """Maps of one method from a shared forward(+backward) pass, post-processed."""
  opts = dict(options)
  fc_path = opts.pop("fc", None)
  multi_layer = len(fwd.activations) > 1
  tanh_scale = multi_layer and fusion == "max" and spec.name == "layercam"
  per_layer = []
  for i in range(len(fwd.activations)):
    m = _raw_maps(spec, tap, x, fwd, i, fc_kernel, fc_path, opts)
    if relu:
      m = jax.nn.relu(m)
    if normalize:
      m = postprocess.normalize(m)
    if tanh_scale:  # torchcam's LayerCAM rescale, at layer resolution as there
      m = jnp.tanh(2.0 * m)
    if upsample:
      m = postprocess.upsample(m, x.shape[1:3])
    per_layer.append(m)
  if multi_layer and len({m.shape for m in per_layer}) != 1:
    raise ValueError("Fusing several layers needs `upsample=True` (their maps have different sizes).")
  if fusion == "mean":
    # pytorch-grad-cam aggregates even a single layer: relu, mean over layers, min-max again (after upsampling)
    maps = postprocess.fuse(jnp.stack(per_layer), mode="mean", normalized=normalize, relu=relu)
  else:
    maps = postprocess.fuse(jnp.stack(per_layer), mode="max")
  if fwd.ids is not None:  # out-of-range ids under jit: the whole map is NaN (see jaxcam.targets)
    n = fwd.logits.shape[-1]
    valid = (fwd.ids >= 0) & (fwd.ids < n)
    maps = jnp.where(valid[..., None, None], maps, jnp.nan)
  ids, scores = fwd.ids, fwd.scores
  if not fwd.multi:
    maps, scores = maps[:, 0], scores[:, 0]
    ids = None if ids is None else ids[:, 0]
  return Explanation(maps=maps, logits=fwd.logits, target=ids, scores=scores, method=spec.name, layer=tap.layer)


def _forward(specs, tap, x, target):
  check_images(x)
  target = targets_lib.as_target(target)
  if any(spec.needs_grads for spec in specs):
    return derivatives.forward_and_grads(tap, x, target)
  return derivatives.forward_only(tap, x, target)


def _explain_impl(tap, x, target, fc_kernel, *, method, normalize, upsample, relu, fusion, options):
  spec = METHODS[method]
  fwd = _forward([spec], tap, x, target)
  return _finish(spec, tap, x, fwd, fc_kernel, normalize=normalize, upsample=upsample, relu=relu, fusion=fusion,
                 options=options)


def _explain_many_impl(tap, x, target, *, methods, normalize, upsample, relu, fusion):
  specs = [METHODS[m] for m in methods]
  fwd = _forward(specs, tap, x, target)
  return {spec.name: _finish(spec, tap, x, fwd, None, normalize=normalize, upsample=upsample, relu=relu,
                             fusion=fusion, options=spec.options) for spec in specs}


_explain_many_jit = jax.jit(
    _explain_many_impl, static_argnames=("methods", "normalize", "upsample", "relu", "fusion")
)


_explain_jit = jax.jit(
    _explain_impl, static_argnames=("method", "normalize", "upsample", "relu", "fusion", "options")
)


def _is_traced(tree: Any) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(tree))


def _check_ids_in_range(target: Any, ex: Explanation) -> None:
  classes = getattr(target, "classes", None)
  if classes is None or isinstance(classes, jax.core.Tracer):
    return
  ids = np.asarray(classes)
  n = ex.logits.shape[-1]
  bad = ids[(ids < 0) | (ids >= n)]
  if bad.size:
    raise ValueError(
        f"Expected class ids in [0, {n}) for a model with {n} classes, got {sorted(set(bad.tolist()))[:10]}. "
        "jaxcam.models.imagenet_class(name) looks up ImageNet ids by name."
    )


def _check_exact_derivatives(spec: MethodSpec, opts: dict, ex: Explanation) -> None:
  if spec.extra != "diagonals":
    return
  maps = np.asarray(ex.maps)
  if opts.get("derivatives") == "exact" and np.isnan(maps).any():
    raise ValueError(
        "The structured exact-derivative strategy failed its cross-check against the generic strategy for layer "
        f"{ex.layer!r}: its head is not global pooling of A. Use strategy='generic' or another layer."
    )
  if opts.get("convention") == "literal" and not np.any(maps):
    warnings.warn(
        "Grad-CAM++ with convention='literal' (Y = S): the second and third derivatives are all zero here (a "
        "piecewise-linear head), so alpha is 0/0 and the maps are zeros. Use the paper's convention='exp'.",
        stacklevel=3,
    )


def explain(
    method: str | MethodSpec,
    tap,
    x: jax.Array,
    /,
    target: Any = None,
    *,
    normalize: bool = True,
    upsample: bool = True,
    relu: bool = True,
    fusion: str = "mean",
    **options,
) -> Explanation:
  """Explain `x` with a CAM method; returns an `Explanation` (maps, logits, target ids, scores, layer).

  Args:
    method: a method name from ``jaxcam.method_names()`` ("gradcam", "gradcam++", ...).
    tap: a tap (`linen_tap`, `nnx_tap`, `function_tap`); a multi-layer tap fuses the layers' maps.
    x: images ``(B, H, W, C)``, float.
    target: None (each image's top class), class ids (scalar, ``(B,)`` or ``(B, K)``), a `jaxcam.targets`
      score or a callable ``logits -> (B,)``.
    normalize: per-image min-max to [0, 1] at layer resolution (pytorch-grad-cam's order).
    upsample: bilinear resize to the input's ``(H, W)``; False keeps the layer's ``(h, w)``.
    relu: clip negative evidence (all peers do).
    fusion: "mean" (pytorch-grad-cam) or "max" (torchcam; LayerCAM also gets torchcam's tanh(2x)) for several
      layers.
    **options: method options (e.g. ``eps`` for Grad-CAM++ and XGrad-CAM, ``fc`` for CAM).

  Class ids out of range raise `ValueError` when the ids are concrete; under `jax.jit` those images' maps are
  NaN.
  """
  spec = get_method(method)
  allowed = dict(spec.options)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise TypeError(
        f"{spec.name} got unexpected option(s) {unknown}; its options are {sorted(allowed) or 'none'}. Common "
        "options: target, normalize, upsample, relu, fusion."
    )
  if fusion not in _FUSIONS:
    raise ValueError(f"Expected `fusion` to be one of {_FUSIONS}, got {fusion!r}.")
  check_images(x)
  target = targets_lib.as_target(target)
  fc_kernel = None
  if "fc" in options and options["fc"] is not None and not isinstance(options["fc"], (str, tuple)):
    fc_kernel = options.pop("fc")
  static_opts = tuple(sorted({**dict(spec.options), **options}.items()))  # defaults filled in: one cache key
  ex = _explain_jit(
      tap, x, target, fc_kernel, method=spec.name, normalize=bool(normalize), upsample=bool(upsample),
      relu=bool(relu), fusion=fusion, options=static_opts,
  )
  if not _is_traced((tap, x, target)):
    _check_ids_in_range(target, ex)
    _check_exact_derivatives(spec, dict(static_opts), ex)
  return ex


def explain_many(
    methods, tap, x: jax.Array, /, target: Any = None, *, normalize: bool = True, upsample: bool = True,
    relu: bool = True, fusion: str = "mean",
) -> dict[str, Explanation]:
  """Several methods from ONE forward and backward pass: ``{name: Explanation}`` (default options each).

  `methods`: names (or None for every registered method). Cheaper than calling `explain` per method: the
  activations and gradients are computed once and every method is a small function of them.
  """
  names = tuple(get_method(m).name for m in (methods if methods is not None else METHODS))
  if fusion not in _FUSIONS:
    raise ValueError(f"Expected `fusion` to be one of {_FUSIONS}, got {fusion!r}.")
  check_images(x)
  target = targets_lib.as_target(target)
  out = _explain_many_jit(tap, x, target, methods=names, normalize=bool(normalize), upsample=bool(upsample),
                          relu=bool(relu), fusion=fusion)
  if not _is_traced((tap, x, target)) and out:
    _check_ids_in_range(target, next(iter(out.values())))
  return out


def _make_public(spec: MethodSpec):
  def method_fn(tap, x, /, target=None, *, normalize=True, upsample=True, relu=True, fusion="mean", **options):
    return explain(
        spec.name, tap, x, target=target, normalize=normalize, upsample=upsample, relu=relu, fusion=fusion,
        **options,
    ).maps

  opts = ", ".join(f"{k}={v!r}" for k, v in spec.options)
  method_fn.__name__ = method_fn.__qualname__ = spec.name
  method_fn.__module__ = "jaxcam"
  method_fn.__doc__ = (
      f"{spec.title} maps of `x`: ``(B, H, W, C) -> (B, H, W)`` (``(B, K, H, W)`` for (B, K) targets).\n\n"
      f"Same arguments as `jaxcam.explain` (method options: {opts or 'none'}); returns only the maps.\n"
      f"Weights: `{spec.fn.__module__}.{spec.fn.__name__}`:\n\n" + (spec.fn.__doc__ or "")
  )
  return method_fn


PUBLIC = {name: _make_public(spec) for name, spec in METHODS.items()}
