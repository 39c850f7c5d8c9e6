"""Composite metrics: Complexity, Coherency and the harmonic means built on them, ADCC (Poppi et al., "Revisiting
the Evaluation of Class Activation Mapping for Explainability", arXiv 2104.10252) and pytorch-grad-cam's ARCC.

- Complexity: the mean absolute map value (the L1 norm over the number of pixels); lower is simpler.
- Coherency: the Pearson correlation between a method's map of ``x`` and its map of ``maps * x``, mapped to [0, 1]
  as ``(rho + 1) / 2`` (pytorch-grad-cam's ``Coherency``; the method is re-run, so it needs a tap).
- ADCC: ``3 / (1 / Coherency + 1 / (1 - Complexity) + 1 / (1 - AverageDrop))`` per image, Average Drop as a
  fraction (Poppi et al. measure it on the probability: pass ``target=jaxcam.targets.softmax(ids)``).
- ARCC: pytorch-grad-cam's ``ARCC``: the same harmonic mean with ``clip(2 * ROADCombined, 0, 1)`` (percentiles 20,
  40, 60, 80) in place of ``1 - AverageDrop``. Its docstring says "geometric mean"; the formula it computes, and
  the one reproduced here, is the harmonic mean.

All per image, NaN maps reported and left out of the means, never propagated.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import targets as targets_lib
from jaxcam.metrics.faithfulness import _check_maps, _masked_mean, confidence_change
from jaxcam.metrics.removal import road

__all__ = ["Adcc", "Arcc", "adcc", "arcc", "coherency", "complexity", "pearson"]

_EPS = 1e-8  # pytorch-grad-cam's


def complexity(maps: Any) -> jax.Array:
  """``mean(|map|)`` per image ``(B,)``: pytorch-grad-cam's ``Complexity``. NaN for a map holding a NaN.

  Lower is simpler (a sparser map); ADCC and ARCC use ``1 - complexity``.

  Args:
    maps: ``(B, H, W)`` (any shape ``(B, ...)``), normally in [0, 1].

  Returns:
    ``(B,)`` the mean absolute value of each map.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> metrics.complexity(jnp.array([[[0.0, 1.0], [0.5, 0.5]], [[0.0, 0.0], [0.0, 0.0]]])).tolist()
    [0.5, 0.0]
  """
  maps = jnp.asarray(maps)
  return jnp.mean(jnp.abs(maps.reshape(maps.shape[0], -1)), axis=1)


def pearson(a: jax.Array, b: jax.Array) -> jax.Array:
  """Pearson's correlation of each pair of maps ``(B, ...)`` (pytorch-grad-cam's ``batch_pearson_coherency``:
  ``1e-8`` added to the product of the standard deviations, so a constant map gives 0).

  Args:
    a: maps ``(B, ...)`` (e.g. ``(B, H, W)``), an array.
    b: maps with as many values per image as `a`.

  Returns:
    ``(B,)`` the correlation of each ``a[i]`` with ``b[i]``, in [-1, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> a = jnp.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    >>> b = jnp.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    >>> [round(v, 4) for v in metrics.pearson(a, b).tolist()]  # reversed; constant
    [-1.0, 0.0]
  """
  a = jnp.asarray(a).reshape(a.shape[0], -1)
  b = jnp.asarray(b).reshape(b.shape[0], -1)
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  n = a.shape[1] - 1
  cov = jnp.sum(a * b, axis=1) / n
  sa, sb = jnp.sqrt(jnp.sum(a * a, axis=1) / n), jnp.sqrt(jnp.sum(b * b, axis=1) / n)
  return cov / (sa * sb + _EPS)


def _fixed_ids(tap, x, target) -> jax.Array:
  """The class each image is explained for: the target's ids, fixed on ``x`` (None: the top class)."""
  from jaxcam._model import split_model
  from jaxcam.metrics.faithfulness import _scores

  fn, arg = split_model(tap)
  _, ids, _ = _scores(fn, arg, x, targets_lib.as_target(target))
  if ids is None:
    raise ValueError(
      "Expected a class-id target (ids, None or jaxcam.targets.softmax(ids)) for a metric that re-runs the method "
      f"(Coherency), got {target!r}."
    )
  return ids[:, 0] if ids.ndim == 2 else ids


def coherency(tap: Any, x: jax.Array, maps: Any, /, method: Any, target: Any = None, **options) -> jax.Array:
  """``(pearson(method(maps * x), maps) + 1) / 2`` per image ``(B,)``: the method re-run on the masked images (same
  classes, same `options`, default normalization and upsampling, as pytorch-grad-cam's ``Coherency``).

  Args:
    tap: the tap the maps were made with (the method is re-run on it).
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` in [0, 1], at the input's size (NaN maps give NaN).
    method: the method that made `maps`: a name (``jaxcam.method_names()``) or a `MethodSpec` row.
    target: class ids, None (each image's top class) or ``jaxcam.targets.softmax(ids)``; the classes are fixed
      on ``x`` and kept for the masked images.
    **options: the method's options and `jaxcam.explain`'s flags, as used for `maps`.

  Returns:
    ``(B,)`` in [0, 1]: 1 when the masked image's map correlates perfectly with the map, 0.5 for no correlation
    (e.g. a constant map); NaN for a map holding a NaN.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, or a `target` that is not a class-id target.
    TypeError: integer `x` or non-float `maps`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> from jaxcam import metrics
    >>> params = {"w": jnp.ones((3, 2)), "v": jnp.eye(2)}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> maps = jaxcam.gradcam(tap, x)
    >>> c = metrics.coherency(tap, x, maps, "gradcam")
    >>> c.shape, bool(jnp.all((c >= 0) & (c <= 1)))
    ((2,), True)
  """
  from jaxcam.api import explain

  maps = _check_maps(x, maps)
  ids = _fixed_ids(tap, x, target)
  safe = jnp.where(jnp.isnan(maps), 0.0, maps)
  again = explain(method, tap, x * safe[..., None].astype(x.dtype), ids, progress=False, **options).maps
  rho = pearson(again, safe)
  return jnp.where(jnp.any(jnp.isnan(maps), axis=(1, 2)), jnp.nan, (rho + 1) / 2)


def _harmonic(a: jax.Array, b: jax.Array, c: jax.Array) -> jax.Array:
  return 3 / (1 / (a + _EPS) + 1 / (b + _EPS) + 1 / (c + _EPS))


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["adcc", "coherency", "complexity", "avg_drop", "mean_adcc", "valid", "nan_count"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Adcc:
  """What `adcc` returns: per image ``(B,)`` the ADCC and its three parts; mean_adcc over the valid images.

  A registered pytree (it passes through `jax.jit`).

  Args:
    adcc: ``(B,)`` the harmonic mean of coherency, ``1 - complexity`` and ``1 - avg_drop`` (NaN for invalid images).
    coherency: ``(B,)`` see `coherency`.
    complexity: ``(B,)`` see `complexity`.
    avg_drop: ``(B,)`` the drop in confidence, a fraction (`ConfidenceChange`'s ``drop``).
    mean_adcc: the mean of `adcc` over the valid images.
    valid: ``(B,)`` bool, the images whose map has no NaN.
    nan_count: how many images are not valid.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> from jaxcam import metrics
    >>> params = {"w": jnp.ones((3, 2)), "v": jnp.eye(2)}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> maps = jaxcam.gradcam(tap, x)
    >>> a = metrics.adcc(tap, x, maps, "gradcam")
    >>> a.adcc.shape, a.valid.tolist(), int(a.nan_count)
    ((2,), [True, True], 0)
  """

  adcc: jax.Array
  coherency: jax.Array
  complexity: jax.Array
  avg_drop: jax.Array
  mean_adcc: jax.Array
  valid: jax.Array
  nan_count: jax.Array


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["arcc", "coherency", "complexity", "road", "mean_arcc", "valid", "nan_count"],
  meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Arcc:
  """What `arcc` returns: per image ``(B,)`` the ARCC and its three parts; mean_arcc over the valid images.

  A registered pytree (it passes through `jax.jit`).

  Args:
    arcc: ``(B,)`` the harmonic mean of coherency, ``1 - complexity`` and ``clip(2 * road, 0, 1)`` (NaN for invalid
      images).
    coherency: ``(B,)`` see `coherency`.
    complexity: ``(B,)`` see `complexity`.
    road: ``(B,)`` ``ROADCombined`` (`Road`'s ``score`` for ``order="combined"``), before pytorch-grad-cam's
      ``clip(2 * road, 0, 1)``.
    mean_arcc: the mean of `arcc` over the valid images.
    valid: ``(B,)`` bool, the images whose map has no NaN.
    nan_count: how many images are not valid.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> from jaxcam import metrics
    >>> params = {"w": jnp.ones((3, 2)), "v": jnp.eye(2)}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> maps = jaxcam.gradcam(tap, x)
    >>> a = metrics.arcc(tap, x, maps, "gradcam", percentiles=(50,), noise=0.0)
    >>> a.arcc.shape, a.road.shape, a.valid.tolist()
    ((2,), (2,), [True, True])
  """

  arcc: jax.Array
  coherency: jax.Array
  complexity: jax.Array
  road: jax.Array
  mean_arcc: jax.Array
  valid: jax.Array
  nan_count: jax.Array


def adcc(tap: Any, x: jax.Array, maps: Any, /, method: Any, target: Any = None, **options) -> Adcc:
  """ADCC (Poppi et al. 2021): the harmonic mean of Coherency, 1 - Complexity and 1 - Average Drop per image.

  `method` (and `options`) is the method that made `maps`, re-run for Coherency on the `tap`. `target` as for the
  other metrics: class ids measure logits, ``jaxcam.targets.softmax(ids)`` probabilities (the paper's).

  Args:
    tap: the tap the maps were made with (its forward pass scores; the method is re-run on it).
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` in [0, 1], at the input's size (an image whose map holds a NaN is left out of the mean).
    method: the method that made `maps`: a name (``jaxcam.method_names()``) or a `MethodSpec` row.
    target: class ids, None (each image's top class) or ``jaxcam.targets.softmax(ids)``.
    **options: the method's options and `jaxcam.explain`'s flags, as used for `maps`.

  Returns:
    `Adcc`: per-image ``adcc`` (higher is better), ``coherency``, ``complexity``, ``avg_drop``, and ``mean_adcc``.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, or a `target` that is not a class-id target.
    TypeError: integer `x` or non-float `maps`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> from jaxcam import metrics
    >>> params = {"w": jnp.ones((3, 2)), "v": jnp.eye(2)}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> maps = jaxcam.gradcam(tap, x)
    >>> a = metrics.adcc(tap, x, maps, "gradcam")
    >>> a.adcc.shape, bool(jnp.all((a.adcc > 0) & (a.adcc <= 1)))
    ((2,), True)
  """
  maps = _check_maps(x, maps)
  coh = coherency(tap, x, maps, method, target, **options)
  comp = complexity(maps)
  drop = confidence_change(tap, x, maps, target=target).drop
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  value = jnp.where(valid, _harmonic(coh, 1 - comp, 1 - drop), jnp.nan)
  return Adcc(value, coh, comp, drop, _masked_mean(value, valid), valid, jnp.sum(~valid))


def arcc(
  tap: Any,
  x: jax.Array,
  maps: Any,
  /,
  method: Any,
  target: Any = None,
  *,
  percentiles: Any = (20, 40, 60, 80),
  noise: float = 0.01,
  key: jax.Array | None = None,
  chunk_size: int = 16,
  **options,
) -> Arcc:
  """pytorch-grad-cam's ARCC: the harmonic mean of Coherency, 1 - Complexity and ``clip(2 * ROADCombined, 0, 1)``
  per image. `percentiles`, `noise`, `key`, `chunk_size` go to `road` (``order="combined"``); `method` and
  `options` are re-run for Coherency.

  Args:
    tap: the tap the maps were made with (its forward pass scores; the method is re-run on it).
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` in [0, 1], at the input's size (an image whose map holds a NaN is left out of the mean).
    method: the method that made `maps`: a name (``jaxcam.method_names()``) or a `MethodSpec` row.
    target: class ids, None (each image's top class) or ``jaxcam.targets.softmax(ids)``.
    percentiles: ROAD's percentiles (pytorch-grad-cam's 20, 40, 60, 80).
    noise: the imputation's noise standard deviation, in the units of `x`.
    key: the noise's PRNG key (None: ``jax.random.key(0)``).
    chunk_size: imputed images per forward pass.
    **options: the method's options and `jaxcam.explain`'s flags, as used for `maps`.

  Returns:
    `Arcc`: per-image ``arcc`` (higher is better), ``coherency``, ``complexity``, ``road``, and ``mean_arcc``.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, a `target` that is not a class-id target, or a bad ROAD setting
      (as for `road`).
    TypeError: integer `x` or non-float `maps`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> from jaxcam import metrics
    >>> params = {"w": jnp.ones((3, 2)), "v": jnp.eye(2)}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> maps = jaxcam.gradcam(tap, x)
    >>> a = metrics.arcc(tap, x, maps, "gradcam", percentiles=(50,))
    >>> a.arcc.shape, bool(jnp.all((a.arcc > 0) & (a.arcc <= 1)))
    ((2,), True)
  """
  maps = _check_maps(x, maps)
  coh = coherency(tap, x, maps, method, target, **options)
  comp = complexity(maps)
  r = road(tap, x, maps, target=target, percentiles=percentiles, order="combined", noise=noise, key=key,
           chunk_size=chunk_size).score  # fmt: skip
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  value = jnp.where(valid, _harmonic(coh, 1 - comp, jnp.clip(2 * r, 0, 1)), jnp.nan)
  return Arcc(value, coh, comp, r, _masked_mean(value, valid), valid, jnp.sum(~valid))
