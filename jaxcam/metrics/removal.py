"""ROAD (RemOve And Debias, Rong et al. 2022, arXiv:2202.00449): the pixels a map ranks highest (MoRF) or lowest
(LeRF) are removed and imputed from their neighbours (`jaxcam.metrics.imputation`), so the model cannot read the
removal's shape; the score is the change of the target's score, per percentile. ``model_fn``, ``target`` and the
maps mean what they mean in `jaxcam.metrics.faithfulness`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import _checks, chunking
from jaxcam import targets as targets_lib
from jaxcam._model import split_model
from jaxcam.metrics.faithfulness import _check_maps, _for_images, _masked_mean, _scores
from jaxcam.metrics.imputation import impute

__all__ = ["ROAD_ORDERS", "ROAD_PERCENTILES", "Road", "remove_and_impute", "road"]


ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_ORDERS = ("morf", "lerf", "combined")


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["change", "percentiles", "score", "mean_score", "valid", "nan_count"],
  meta_fields=["order"],
)
@dataclasses.dataclass(frozen=True)
class Road:
  """What `road` returns. MoRF: lower is more faithful; LeRF and combined: higher.

  A registered pytree (it passes through `jax.jit`; `order` is static).

  Args:
    change: ``(B, P)`` target score after removal and imputation minus before, per percentile (for
      ``order="combined"``: ``(LeRF - MoRF) / 2``); NaN rows for invalid images.
    percentiles: ``(P,)`` the percentiles evaluated.
    score: ``(B,)`` the mean of `change` over the percentiles (pytorch-grad-cam's ``ROAD*Average`` /
      ``ROADCombined``).
    mean_score: the mean of `score` over the valid images.
    valid: ``(B,)`` bool, the images whose map has no NaN (as in `ConfidenceChange`).
    nan_count: how many images are not valid.
    order: "morf", "lerf" or "combined".

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # the evidence: the bright top half
    >>> r = metrics.road(model, x, x[..., 0], percentiles=(50,), noise=0.0)  # MoRF: remove the top half
    >>> r.order, r.percentiles.tolist(), r.change.shape, r.score.tolist(), int(r.nan_count)
    ('morf', [50.0], (1, 1), [-0.5], 0)
  """

  change: jax.Array
  percentiles: jax.Array
  score: jax.Array
  mean_score: jax.Array
  valid: jax.Array
  nan_count: jax.Array
  order: str = "morf"


def _kept(m: jax.Array, percentile: jax.Array, lerf: jax.Array) -> jax.Array:
  """pytorch-grad-cam's ``RemoveMostRelevantFirst``: keep the pixels strictly below the map's percentile
  (numpy's linear interpolation), on ``1 - map`` for LeRF."""
  m = jnp.where(lerf, 1 - m, m)
  return m < jnp.percentile(m, percentile)


def _check_road(x, maps, percentiles, order, noise, chunk_size, tol, max_iter):
  maps = _check_maps(x, maps)
  _checks.check_choice("order", order, ROAD_ORDERS)
  pct = tuple(float(p) for p in np.atleast_1d(np.asarray(percentiles, dtype=float)))
  if not pct or not all(0 <= p <= 100 for p in pct):
    raise ValueError(f"Expected `percentiles` in [0, 100] (e.g. {ROAD_PERCENTILES}), got {percentiles!r}.")
  noise = _checks.check_float("noise", noise, minimum=0.0)
  tol = _checks.check_float("tol", tol, minimum=0.0, strict=True)
  max_iter = _checks.check_positive_int("max_iter", max_iter)
  chunking.check_chunk_size(chunk_size)
  return maps, pct, noise, tol, max_iter


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("chunk_size",))
def _road(fn, arg, x, maps, target, key, pct, lerf, noise, tol, max_iter, *, chunk_size):
  # Only the shapes and chunk_size are static: every percentile, order, noise and tolerance shares one program.
  b = x.shape[0]
  n_p, n_o = pct.shape[0], lerf.shape[0]
  valid = ~jnp.any(jnp.isnan(maps), axis=(1, 2))
  y, _, fixed = _scores(fn, arg, x, target)
  safe = jnp.where(valid[:, None, None], maps, 0.0)

  def lane(j):  # lane j: image j // (O P), order (j // P) % O, percentile j % P
    bi, oi, pi = j // (n_o * n_p), (j // n_p) % n_o, j % n_p
    keep = _kept(safe[bi], pct[pi], lerf[oi])
    return impute(x[bi], keep, noise=noise, key=jax.random.fold_in(key, j), tol=tol, max_iter=max_iter)[0]

  def chunk(lanes):  # the solves one at a time (each in cache), the forward batched
    imputed = jax.lax.map(lane, lanes)
    return _scores(fn, arg, imputed, _for_images(fixed, lanes // (n_o * n_p)))[0]

  after = chunking.chunked_map(chunk, jnp.arange(b * n_o * n_p), chunk_size=chunk_size, vectorized=True)
  change = after.reshape(b, n_o, n_p) - y[:, None, None]
  change = change[:, 0] if n_o == 1 else (change[:, 1] - change[:, 0]) / 2  # combined: (LeRF - MoRF) / 2
  score = jnp.mean(change, axis=1)
  return change, score, valid


def road(
  model_fn: Any,
  x: jax.Array,
  maps: Any,
  /,
  target: Any = None,
  *,
  percentiles: Any = ROAD_PERCENTILES,
  order: str = "morf",
  noise: float = 0.01,
  key: jax.Array | None = None,
  chunk_size: int = 16,
  tol: float = 1e-5,
  max_iter: int = 200,
) -> Road:
  """ROAD: the change of the target score when the most (MoRF) or least (LeRF) relevant pixels are removed and
  filled by noisy linear imputation, at each percentile.

  pytorch-grad-cam's conventions: at percentile p the pixels whose map value is below the map's p-th percentile
  are kept and the rest imputed (so MoRF at 80 removes the top 20 %); LeRF ranks by ``1 - map``; combined is
  ``(LeRF - MoRF) / 2`` per percentile. Imputation (`jaxcam.metrics.imputation`): each removed pixel the weighted
  mean of its 8 neighbours, solved on the device by multigrid-preconditioned CG to a relative residual `tol`,
  plus Gaussian `noise` (in the units of `x`; 0 turns it off) drawn from `key` (None: ``jax.random.key(0)``; each
  image, order and percentile its own ``fold_in``), so results are deterministic given the key and independent
  of `chunk_size`. ``B x P`` forwards (twice that for combined), `chunk_size` at a time.

  Unlike pytorch-grad-cam, which perturbs the normalized tensor, the imputation acts on the `x` you pass (jaxcam's
  models normalize inside); the linear imputation commutes with a per-channel affine normalization, so only the
  noise's scale differs (pgc's 0.01 in normalized units is ``0.01 * std`` here). Rong et al., "A Consistent and
  Efficient Evaluation Strategy for Attribution Methods", arXiv 2202.00449.

  Args:
    model_fn: a function ``x -> logits`` or a jaxcam tap.
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` at the input's size (an image whose map holds a NaN is left out of the means).
    target: as for `confidence_change`; the class is fixed on ``x``.
    percentiles: the percentiles p in [0, 100] (a number or a sequence); default 10, 20, ..., 90.
    order: "morf" (most relevant first), "lerf" (least relevant first) or "combined".
    noise: the standard deviation of the imputation's Gaussian noise, in the units of `x`; 0 turns it off.
    key: the noise's PRNG key (None: ``jax.random.key(0)``).
    chunk_size: imputed images evaluated per forward pass.
    tol: the imputation's relative residual at which CG stops (> 0).
    max_iter: the most CG iterations per imputation.

  Returns:
    `Road`: ``change`` (B, P), ``score`` (B,) its mean over the percentiles, ``mean_score`` over valid images.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, an unknown `order`, a percentile outside [0, 100], a negative
      `noise`, a non-positive `tol`, `max_iter` or `chunk_size`.
    TypeError: integer `x` or non-float `maps`, a non-number `noise` / `tol`, or a non-int `max_iter`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> model = lambda x: x.mean(axis=(1, 2))
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # the evidence: the bright top half
    >>> maps = x[..., 0]  # a map pointing at it
    >>> r = metrics.road(model, x, maps, percentiles=(50,), order="combined", noise=0.0)
    >>> r.change.shape, round(float(r.score[0]), 3)  # (LeRF: +0.5 - MoRF: -0.5) / 2
    ((1, 1), 0.5)
  """
  maps, pct, noise, tol, max_iter = _check_road(x, maps, percentiles, order, noise, chunk_size, tol, max_iter)
  fn, arg = split_model(model_fn)
  key = jax.random.key(0) if key is None else key
  orders = ("morf", "lerf") if order == "combined" else (order,)
  change, score, valid = _road(
    fn,
    arg,
    x,
    maps,
    targets_lib.as_target(target),
    key,
    jnp.asarray(pct, maps.dtype),
    jnp.asarray([o == "lerf" for o in orders]),
    jnp.asarray(noise, x.dtype),
    jnp.asarray(tol, x.dtype),
    jnp.asarray(max_iter),
    chunk_size=int(chunk_size),
  )
  return Road(
    change=jnp.where(valid[:, None], change, jnp.nan),
    percentiles=jnp.asarray(pct),
    score=jnp.where(valid, score, jnp.nan),
    mean_score=_masked_mean(score, valid),
    valid=valid,
    nan_count=jnp.sum(~valid),
    order=order,
  )


def remove_and_impute(
  x: jax.Array,
  maps: Any,
  percentile: float,
  *,
  order: str = "morf",
  noise: float = 0.01,
  key: jax.Array | None = None,
  tol: float = 1e-5,
  max_iter: int = 200,
) -> tuple[jax.Array, jax.Array]:
  """The images `road` scores at one percentile (to look at them): ``(imputed (B, H, W, C), kept (B, H, W))``.
  `order` "morf" or "lerf"; the noise of image i is drawn from ``fold_in(key, i)``.

  Args:
    x: images ``(B, H, W, C)``, float.
    maps: ``(B, H, W)`` at the input's size.
    percentile: one percentile p in [0, 100]: the pixels whose map value is below the map's p-th percentile are
      kept (on ``1 - map`` for LeRF), the others imputed.
    order: "morf" or "lerf".
    noise: the standard deviation of the imputation's Gaussian noise, in the units of `x`; 0 turns it off.
    key: the noise's PRNG key (None: ``jax.random.key(0)``).
    tol: the imputation's relative residual at which CG stops (> 0).
    max_iter: the most CG iterations per image.

  Returns:
    ``(imputed, kept)``: the images with the removed pixels imputed ``(B, H, W, C)``, and the boolean mask of the
    kept pixels ``(B, H, W)``.

  Raises:
    ValueError: `x` or `maps` of the wrong shape, a percentile outside [0, 100] or more than one, order
      "combined" or unknown, a negative `noise`, a non-positive `tol` or `max_iter`.
    TypeError: integer `x` or non-float `maps`, a non-number `noise` / `tol`, or a non-int `max_iter`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> x = jnp.zeros((1, 4, 4, 3)).at[:, :2].set(1.0)  # a bright top half
    >>> imputed, kept = metrics.remove_and_impute(x, x[..., 0], 50, noise=0.0)  # MoRF: remove the top half
    >>> imputed.shape, kept[0, :, 0].tolist()
    ((1, 4, 4, 3), [False, False, True, True])
    >>> float(imputed.max())  # filled from the dark bottom half
    0.0
  """
  maps, pct, noise, tol, max_iter = _check_road(x, maps, percentile, order, noise, 1, tol, max_iter)
  if order == "combined" or len(pct) != 1:
    raise ValueError(f"Expected one percentile and order 'morf' or 'lerf', got {percentile!r} and {order!r}.")
  key = jax.random.key(0) if key is None else key
  return _remove_and_impute(
    x, maps, key, jnp.asarray(pct[0], maps.dtype), jnp.asarray(order == "lerf"), jnp.asarray(noise, x.dtype),
    jnp.asarray(tol, x.dtype), jnp.asarray(max_iter),
  )  # fmt: skip


@jax.jit
def _remove_and_impute(x, maps, key, percentile, lerf, noise, tol, max_iter):
  keep = jax.vmap(lambda m: _kept(m, percentile, lerf))(maps)

  def one(i):
    return impute(x[i], keep[i], noise=noise, key=jax.random.fold_in(key, i), tol=tol, max_iter=max_iter)[0]

  return jax.lax.map(one, jnp.arange(x.shape[0])), keep
