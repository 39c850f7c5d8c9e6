"""Opti-CAM: channel weights optimised per image so that the image masked by its own map keeps the target's score.

Zhang, Torres, Sicre, Avrithis, Ayache, "Opti-CAM: Optimizing saliency maps for interpretability", Computer Vision
and Image Understanding 248 (2024) 104101, arXiv:2301.07002. For image x, target score S and layer activations
``A (*spatial, C)``::

    mask(w) = n(upsample(relu(sum_k softmax(w)_k A_k)))       n: min-max normalisation to [0, 1]
    w* = argmax_w S(x * mask(w))                              Adam from w = 0 (uniform weights, softmax(0) = 1/C)

and the map is the usual ``sum_k softmax(w*)_k A_k`` (then relu, upsample, normalise), i.e. exactly the mask the
optimisation scored. All images and targets are optimised in one compiled program: a `jax.lax.scan` over the
steps whose body is `jax.vmap` over images and targets of one forward and backward pass of the masked image (each
(image, target) pair has its own weights, Adam state and score, so a batch equals its images one by one).

Defaults and where they come from. The paper text was not reachable from here; the defaults are those of the
authors' released code (github.com/hanwei0912/OptiCAM, ``generate_opticam.py``, the script its README runs):
Adam, ``learning_rate=0.1``, ``max_iter=50`` steps, the objective ``name_f='logit_predict'`` (the target's
logit) with ``name_loss='plain'`` (maximise it), ``name_norm='max_min'``, bilinear upsampling with
``align_corners=False``, black (0) for masked-out pixels of the [0, 1] image (the model normalises inside). Its
``Basic_OptCAM`` class defaults to 100 steps at learning rate 0.01, which the script overrides. Adam's other
constants are torch's and optax's defaults alike (b1 0.9, b2 0.999, eps 1e-8).

Where jaxcam departs from that code: (1) the authors apply ReLU to A before the weighted sum; jaxcam applies it to
the weighted sum, so the optimised mask is exactly the map `jaxcam.explain` returns; both agree when A >= 0 (any
layer after a ReLU, the paper's setting). (2) The authors stop early when the loss, checked every tenth of the steps,
went up; jaxcam always runs `steps` steps (a fixed-length compiled program) and returns the last weights. (3) The
authors' loss sums over the batch; Adam is elementwise and each image's score depends only on its own weights, so
this is the same optimisation as one per image, which is what jaxcam runs. (4) The target is jaxcam's: its logit
for class ids (the default), or any score object (softmax, a custom callable); the objective is that score.

Cost and memory: each step is one forward and one backward pass through the whole model for each of the B * K
masked copies, all at once (`explain_batches` bounds the batch); `benchmarks/opticam.py` measures it. A channel
that is zero everywhere only rescales the map, which the normalisation undoes: its gradient is ~0 and Adam moves
its weight by rounding noise (in the authors' code too); the map does not change.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcam import _checks, _progress, _spatial, core, postprocess

__all__ = ["OptiCAMResult", "opticam_mask", "opticam_optimize", "optimized_weights", "opticam_weights", "trajectory"]

DEFAULT_STEPS = 50  # the authors' generate_opticam.py (--max_iter)
DEFAULT_LEARNING_RATE = 0.1  # the authors' generate_opticam.py (--learning_rate)


class OptiCAMResult(NamedTuple):
  """What one Opti-CAM optimisation yields for one layer.

  weights: ``(B, K, C)`` the optimised channel weights ``softmax(w_T)`` (non-negative, summing to 1).
  objective: ``(B, K, steps + 1)`` the target's score of the masked image at ``w_0 = 0`` (uniform weights), after
  each step, and at the returned weights (the last entry): the curve to plot, e.g.
  ``plt.plot(result.objective[0, 0])``.
  """

  weights: jax.Array
  objective: jax.Array


def _check_options(steps: Any, learning_rate: Any) -> tuple[int, float]:
  steps = _checks.check_positive_int("steps", steps)
  hint = _checks.traced_hint("learning_rate", learning_rate)
  if hint:
    raise TypeError(f"Expected `learning_rate` to be a Python number, got a traced value.{hint}")
  try:
    learning_rate = _checks.check_float("learning_rate", learning_rate, minimum=0.0, strict=True)
  except ValueError as e:
    raise ValueError(f"{e} Opti-CAM's default (the authors' code) is {DEFAULT_LEARNING_RATE}.") from None
  return steps, learning_rate


def opticam_mask(w: jax.Array, activations: jax.Array, size: tuple[int, ...]) -> jax.Array:
  """The mask of weights `w`: ``n(upsample(relu(sum_k softmax(w)_k A_k)))`` in [0, 1].

  w ``(..., C)`` raw weights, activations ``(..., *spatial, C)`` -> ``(..., *size)``; n is `postprocess.normalize`
  (a constant map gives zeros).
  """
  m = jax.nn.relu(postprocess.combine(jax.nn.softmax(w, axis=-1), activations))
  return postprocess.normalize(postprocess.upsample(m, size), spatial_dims=len(size))


def opticam_optimize(
  score_fn,
  activations: jax.Array,
  x: jax.Array,
  base: Any = 0.0,
  *,
  steps: int,
  learning_rate: float,
  k: int,
  progress: str | None = None,
) -> OptiCAMResult:
  """Opti-CAM's optimisation for one layer, all images and targets at once (pure: jit / vmap / grad through it).

  Args:
    score_fn: ``score_fn(xm, b) -> (K,)`` the target scores of image b's masked copy ``xm (1, *size, C_in)``.
    activations: ``(B, *spatial, C)`` the layer's output for `x`.
    x: ``(B, *size, C_in)`` the images; the masked image is ``base + mask * (x - base)``.
    base: what a masked-out pixel becomes (a number or one value per input channel, broadcastable to x[b]).
    steps, learning_rate: Adam's step count and learning rate. k: the number K of targets per image.
    progress: a label for a progress bar ticking once per step, or None.

  Returns:
    `OptiCAMResult` with weights ``(B, K, C)`` and objective ``(B, K, steps + 1)``.
  """
  import optax  # here, not at import time: `import jaxcam` stays light

  size = _spatial.image_size(x)
  a = activations.astype(jnp.promote_types(activations.dtype, jnp.float32))
  b, c = a.shape[0], a.shape[-1]

  def score(w, a_b, x_b, bi, ki):  # the target's score of image bi's copy masked with weights w (C,)
    m = opticam_mask(w, a_b, size)[..., None]
    xm = (base + m * (x_b - base)).astype(x.dtype)
    return score_fn(xm[None], bi)[ki]

  per_image = jax.vmap(jax.vmap(jax.value_and_grad(score), (0, None, None, None, 0)), (0, 0, 0, 0, None))
  idx_b, idx_k = jnp.arange(b), jnp.arange(k)
  opt = optax.adam(learning_rate)
  w0 = jnp.zeros((b, k, c), a.dtype)
  report = _progress.tick(steps, 1, progress)

  def step(carry, _):
    w, state = carry
    s, g = per_image(w, a, x, idx_b, idx_k)
    updates, state = opt.update(jax.tree.map(jnp.negative, g), state, w)  # descend on -S: ascend on S
    w = optax.apply_updates(w, updates)
    if report is not None:
      report(s, 1)
    return (w, state), s

  (w, _), history = jax.lax.scan(step, (w0, opt.init(w0)), None, length=steps)
  last = jax.vmap(jax.vmap(score, (0, None, None, None, 0)), (0, 0, 0, 0, None))(w, a, x, idx_b, idx_k)
  objective = jnp.concatenate([jnp.moveaxis(history, 0, -1), last[..., None]], axis=-1)
  return OptiCAMResult(jax.nn.softmax(w, axis=-1), objective)


def _optimize_layers(tap, x, fwd, base, *, steps, learning_rate) -> tuple[OptiCAMResult, ...]:
  from jaxcam import _copies

  steps, learning_rate = _check_options(steps, learning_rate)
  k = fwd.scores.shape[1]
  label = None if fwd.progress is None else f"{fwd.progress} (Opti-CAM steps)"

  def score_fn(xm, bi):
    return _copies._score_copy(tap.forward(xm), fwd, bi)

  return tuple(
    opticam_optimize(score_fn, a, x, base, steps=steps, learning_rate=learning_rate, k=k, progress=label)
    for a in fwd.activations
  )


def optimized_weights(
  tap, x, fwd, *, steps: int = DEFAULT_STEPS, learning_rate: float = DEFAULT_LEARNING_RATE, baseline: Any = 0.0
) -> tuple:
  """Provider of the ``"optimized_weights"`` need: per layer, Opti-CAM's channel weights ``(B, K, C)``.

  steps: Adam steps (>= 1). learning_rate: Adam's learning rate (> 0). baseline: what a masked-out pixel becomes,
  as Score-CAM's (`jaxcam.providers.input_baseline`: 0, black, by default; ``"mean"``: the model's declared mean).
  """
  from jaxcam import _copies

  base = _copies.input_baseline(tap, x, baseline)
  return tuple(r.weights for r in _optimize_layers(tap, x, fwd, base, steps=steps, learning_rate=learning_rate))


def opticam_weights(activations: jax.Array, optimized_weights: jax.Array, /) -> jax.Array:
  """Opti-CAM channel weights: ``softmax(w*)`` with w* maximising the target's score of the image masked by its own
  map (see `jaxcam.methods.opticam`). ``(B, K, *spatial, C), (B, K, C) -> (B, K, C)``.

  Zhang et al., "Opti-CAM: Optimizing saliency maps for interpretability", CVIU 2024 (arXiv:2301.07002). Defaults
  (Adam, 50 steps, learning rate 0.1, the target's logit) are those of the authors' code (hanwei0912/OptiCAM);
  jaxcam applies ReLU to the weighted sum rather than to A (the same for A >= 0) and never stops early.
  `jaxcam.opticam_trajectory` (`jaxcam.methods.opticam.trajectory`) returns the objective per step, to plot.
  """
  del activations
  return optimized_weights


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate"))
def _trajectory_jit(tap, x, target, base, *, steps, learning_rate):
  fwd = core.forward_only(tap, x, target)
  return _optimize_layers(tap, x, fwd, base, steps=steps, learning_rate=learning_rate)


def trajectory(
  tap,
  x: jax.Array,
  /,
  target: Any = None,
  *,
  steps: int = DEFAULT_STEPS,
  learning_rate: float = DEFAULT_LEARNING_RATE,
  baseline: Any = 0.0,
) -> OptiCAMResult | tuple[OptiCAMResult, ...]:
  """Opti-CAM's optimisation with its objective per step, to plot: `OptiCAMResult` (a tuple of them, one per layer,
  for a multi-layer tap). The same computation as ``jaxcam.explain("opticam", ...)``, which returns the maps.

  Args:
    tap: a jaxcam tap. x: ``(B, H, W, C)`` images. target: as in `jaxcam.explain` (None: each image's top class).
    steps, learning_rate, baseline: the row's options (see `optimized_weights`).

  Returns:
    weights ``(B, K, C)`` (``K = 1`` for one class per image) and objective ``(B, K, steps + 1)``: the target's
    score of the masked image from the uniform start to the returned weights.

  >>> import jax, jax.numpy as jnp, jaxcam
  >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x), lambda p, x, a: a.mean((1, 2)), None)
  >>> r = trajectory(tap, jnp.ones((1, 4, 4, 2)).at[:, :2, :, 0].set(3.0), jnp.array([0]), steps=5)
  >>> r.objective.shape, bool(r.objective[0, 0, -1] >= r.objective[0, 0, 0])
  ((1, 1, 6), True)
  """
  from jaxcam import _copies, _eager

  steps, learning_rate = _check_options(steps, learning_rate)
  target = _eager.prepare(tap, x, target)
  base = _copies.input_baseline(tap, x, baseline)
  results = _trajectory_jit(tap, x, target, base, steps=steps, learning_rate=learning_rate)
  return results if tap.multi else results[0]
