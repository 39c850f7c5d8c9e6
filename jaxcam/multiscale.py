"""SESS: Saliency Enhancing with Scaling and Sliding, a meta-method around any CAM method, on device.

Tursun et al., "SESS: Saliency Enhancing with Scaling and Sliding", arXiv 2207.01769; pytorch-grad-cam 1.5.7's
``SESS``, whose defaults and arithmetic this follows: the image is resized (bilinear) so that its shorter side is
each of the `scales` (default: 12 scales from the window size in steps of ``round(2/7 * window)``); a square
window slides over each (stride `step_size`, default the window; windows at the right/bottom border are shifted
back inside); every patch is scored (the target's softmax probability by default, clipped at 0) and explained by
the base method; each patch map, times its score divided by the best patch score, is pasted into its scale's
canvas, which is resized (bilinear, as ``cv2.resize``) to the input size; the canvases are fused by a spatial
weighted average over the patches that cover each pixel with a value above `theta` ("mean") or a maximum ("max"),
blurred (an 11x11 Gaussian, sigma 5, reflected borders: ``cv2.GaussianBlur``) and min-max normalized per image.

Unlike pytorch-grad-cam's per-image Python loops, the patches of every image are explained as one chunked batch
in one compiled program. Pasting and resizing are done as two small matrix products per patch (resizing is
linear), never materializing a canvas. The class is fixed on the whole image (its top class when `target` is
None), as there.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import _checks, chunking, postprocess
from jaxcam import targets as targets_lib
from jaxcam._filters import gaussian_kernel, separable_filter

__all__ = ["Sess", "sess", "sess_row", "window_starts", "default_scales", "resize_matrix", "gaussian_kernel"]

POOLS = ("mean", "max")


def window_starts(length: int, step_size: int, window_size: int) -> list[int]:
  """Window starts along one axis, as pytorch-grad-cam: stride `step_size`, the last window shifted back inside."""
  starts = []
  for start in range(0, length, step_size):
    if start + window_size >= length:
      starts.append(max(length - window_size, 0))
      break
    starts.append(start)
  return starts


def default_scales(window_size: int, num_scales: int = 12, scale_step_ratio: float = 2.0 / 7.0) -> list[int]:
  """pytorch-grad-cam's scales: ``window + round(window * ratio) * i`` for i < `num_scales`."""
  step = int(round(window_size * scale_step_ratio))
  return [window_size + step * i for i in range(num_scales)]


def resize_matrix(src: int, dst: int) -> np.ndarray:
  """``(dst, src)`` matrix of bilinear resizing with half-pixel centers and clamped borders (``cv2.resize``
  INTER_LINEAR, ``torch.nn.functional.interpolate(align_corners=False)``; no antialiasing)."""
  m = np.zeros((dst, src), np.float64)
  scale = src / dst
  for i in range(dst):
    pos = max((i + 0.5) * scale - 0.5, 0.0)
    lo = min(int(math.floor(pos)), src - 1)
    hi = min(lo + 1, src - 1)
    frac = pos - lo if lo < src - 1 else 0.0
    m[i, lo] += 1.0 - frac
    m[i, hi] += frac
  return m


def _blur(maps: jax.Array) -> jax.Array:
  """``cv2.GaussianBlur(m, (11, 11), 5.0)`` with its default BORDER_REFLECT_101, on ``(B, H, W)``."""
  return separable_filter(maps, gaussian_kernel(11, 5.0), axes=(1, 2), mode="reflect")


def _scaled_size(h: int, w: int, scale: int) -> tuple[int, int]:
  """torchvision ``resize(img, scale)``: the shorter side becomes `scale`, the longer ``int(scale * long / short)``."""
  if h <= w:
    return scale, int(scale * w / h)
  return int(scale * h / w), scale


def _patches(x: jax.Array, scales, window: int, step: int):
  """All patches ``(B, P, window, window, C)`` and, per patch, its scale's canvas size and its corner."""
  _, h, w, c = x.shape
  patches, where = [], []
  for scale in scales:
    sh, sw = _scaled_size(h, w, scale)
    scaled = jax.image.resize(x, (x.shape[0], sh, sw, c), method="linear", antialias=False)
    for y1 in window_starts(sh, step, window):
      for x1 in window_starts(sw, step, window):
        patches.append(scaled[:, y1 : y1 + window, x1 : x1 + window])
        where.append((sh, sw, y1, x1))
  return jnp.stack(patches, axis=1), where


def sess(*args: Any, **kwargs: Any) -> Any:
  """``jaxcam.sess(method="gradcam", *, scales=None, ...)``: the row of `method` under SESS (see the module
  docstring), named ``sess(<name>)``; it works wherever a method name does (`jaxcam.explain`, ``explain_many``,
  ``explain_batches``, the streaming runs, ``explain_model(method=)``, the metrics' ``method=``, ``jaxcam explain
  --method sess`` / ``"sess(gradcam)"``). See `sess_row` for the arguments.

  Deprecated form: ``sess(tap, x, target=None, *, method="gradcam", <SESS arguments>, **options)`` returns the
  maps as before (a `DeprecationWarning`); it is ``jaxcam.explain(jaxcam.sess(method, ...), tap, x, target,
  **options).maps``.

  Args:
    *args: the base method (a name or row; default "gradcam").
    **kwargs: SESS's arguments (`sess_row`): ``scales``, ``num_scales``, ``scale_step_ratio``, ``window_size``,
      ``step_size``, ``pre_filter_ratio``, ``theta``, ``pool``, ``smooth``, ``use_softmax_scores``,
      ``chunk_size``.

  Returns:
    A `MethodSpec` named ``sess(<name>)`` (the deprecated form: the maps).

  Raises:
    UnknownNameError: an unknown method name.
    ValueError: a bad SESS argument (the message names it).

  >>> import jaxcam
  >>> row = jaxcam.sess("gradcam", window_size=4, num_scales=2)  # explain(row, tap, x) explains 4x4 patches
  >>> row.name, row.title
  ('sess(gradcam)', 'SESS (Grad-CAM)')
  """
  from jaxcam.methods.table import MethodSpec

  if args and not isinstance(args[0], (str, MethodSpec)):
    return _deprecated_sess(*args, **kwargs)
  return sess_row(*args, **kwargs)


def sess_row(
  method: Any = "gradcam",
  *,
  scales: tuple[int, ...] | None = None,
  num_scales: int = 12,
  scale_step_ratio: float = 2.0 / 7.0,
  window_size: int | None = None,
  step_size: int | None = None,
  pre_filter_ratio: float = 0.0,
  theta: float = 0.0,
  pool: str = "mean",
  smooth: bool = True,
  use_softmax_scores: bool = True,
  chunk_size: int = 32,
) -> Any:
  """The row of `method` under SESS: maps ``(B, H, W)`` in [0, 1] (see the module docstring).

  Args:
    method: the base method (a name or row); its options are passed to `jaxcam.explain` as usual.
    scales, num_scales, scale_step_ratio, window_size, step_size: pytorch-grad-cam's patch grid (the window
      defaults to the image's shorter side, the stride to the window).
    pre_filter_ratio: the fraction of lowest-scoring patches left out. theta: the "mean" fusion's threshold.
    pool: "mean" or "max". smooth: the final Gaussian blur. use_softmax_scores: score patches by probability
      (else the raw target score, clipped at 0).
    chunk_size: patches explained at once (memory grows with it).

  Returns:
    A `MethodSpec` named ``sess(<name>)``. One class per image; each patch is explained with the base method's
    default post-processing (as pytorch-grad-cam), and ``normalize=False`` leaves out only the final min-max.

  Cost: one forward pass per patch for the scores plus the base method per patch (the default grid of a 224x224
  image has 122 patches).
  """
  from jaxcam.methods.table import get_method
  from jaxcam.wrappers import wrapped_name

  inner = get_method(method)
  _check_static(num_scales, pre_filter_ratio, pool)
  hook = Sess(
    name=wrapped_name("sess", inner.name),
    scales=None if scales is None else tuple(int(v) for v in scales),
    num_scales=int(num_scales),
    scale_step_ratio=float(scale_step_ratio),
    window_size=None if window_size is None else _checks.check_positive_int("window_size", window_size),
    step_size=None if step_size is None else _checks.check_positive_int("step_size", step_size),
    pre_filter_ratio=float(pre_filter_ratio),
    theta=float(theta),
    pool=pool,
    smooth=_checks.check_bool("smooth", smooth),
    use_softmax_scores=_checks.check_bool("use_softmax_scores", use_softmax_scores),
    chunk_size=chunking.check_chunk_size(chunk_size),
    inner=inner.around,
  )
  return dataclasses.replace(
    inner, name=hook.name, title=f"SESS ({inner.title or inner.name})", around=hook, aliases=()
  )


def _check_static(num_scales, pre_filter_ratio, pool):
  _checks.check_choice("pool", pool, POOLS)
  _checks.check_float("pre_filter_ratio", pre_filter_ratio, minimum=0.0)
  if pre_filter_ratio >= 1.0:
    raise ValueError(f"Expected `pre_filter_ratio` in [0, 1), got {pre_filter_ratio!r}.")
  _checks.check_positive_int("num_scales", num_scales)


def _deprecated_sess(tap: Any, x: jax.Array, /, target: Any = None, *, method: Any = "gradcam", **kwargs: Any):
  """The old form: `sess_row`'s arguments among `kwargs` build the row, the rest are the base method's options."""
  import inspect

  from jaxcam._errors import warn_user
  from jaxcam.api import explain

  warn_user(
    "jaxcam.sess(tap, x, ...) is deprecated: SESS is a wrapper that returns a row; call "
    "jaxcam.explain(jaxcam.sess(method, ...), tap, x, target, **options).maps.",
    DeprecationWarning,
  )
  grid = set(inspect.signature(sess_row).parameters) - {"method"}
  row = sess_row(method, **{k: v for k, v in kwargs.items() if k in grid})
  return explain(row, tap, x, target, **{k: v for k, v in kwargs.items() if k not in grid}).maps


@dataclasses.dataclass(frozen=True)
class Sess:
  """The `around` hook of a SESS row (hashable by value: part of the static row); see `sess_row`."""

  name: str
  scales: tuple[int, ...] | None
  num_scales: int
  scale_step_ratio: float
  window_size: int | None
  step_size: int | None
  pre_filter_ratio: float
  theta: float
  pool: str
  smooth: bool
  use_softmax_scores: bool
  chunk_size: int
  inner: Any = None
  expensive: bool = True

  def cost(self, inner_cost: str) -> str:
    return f"1 forward pass per patch, plus per patch: {inner_cost} (122 patches for a 224x224 image by default)"

  def grid(self, h: int, w: int) -> tuple[tuple[int, ...], int, int]:
    """``(scales, window, step)`` for an image of ``(h, w)``; clear errors for a grid that does not fit."""
    window = min(h, w) if self.window_size is None else self.window_size
    step = window if self.step_size is None else self.step_size
    scales = self.scales
    if scales is None:
      scales = tuple(default_scales(window, self.num_scales, self.scale_step_ratio))
    if window > min(h, w):
      raise ValueError(f"Expected `window_size` <= the image's shorter side {min(h, w)}, got {window}.")
    small = [v for v in scales if v < window]
    if small:
      raise ValueError(f"Expected every scale >= the window size {window}, got {small}.")
    return scales, window, step

  def __call__(self, run, tap, x, target, options, post, progress):
    from jaxcam import _spatial, core
    from jaxcam.api import Explanation

    if x.ndim != 4:
      raise ValueError(f"SESS explains 2-D images (B, H, W, C), got x of shape {tuple(x.shape)}.")
    b, h, w, _ = x.shape
    scales, window, step = self.grid(h, w)
    clean = core.forward_only(tap, x, target)
    if clean.scores.shape[1] != 1:
      raise ValueError("Expected one target class per image for SESS, got (B, K) targets.")
    patches, where = _patches(x, scales, window, step)  # (B, P, w, w, C)
    n = patches.shape[1]
    fixed = targets_lib.with_ids(clean.target, clean.ids)

    def one_target(bi):
      return targets_lib.with_ids(fixed, None if clean.ids is None else clean.ids[bi][None])

    def score_one(j):  # image j // n, patch j % n
      bi, p = j // n, j % n
      out = tap.forward(patches[bi, p][None])
      if self.use_softmax_scores:  # pytorch-grad-cam applies the target to the softmax of the output
        out = jax.nn.softmax(targets_lib.check_logits(out), axis=-1)
      return one_target(bi).evaluate(out)[1][0, 0]

    scores = chunking.chunked_map(score_one, jnp.arange(b * n), chunk_size=self.chunk_size, progress=progress)
    weights, kept = _patch_weights(jnp.maximum(scores.reshape(b, n), 0.0), n - int(n * self.pre_filter_ratio))
    patch_post = postprocess.PostOptions()  # each patch with the base method's defaults, as pytorch-grad-cam

    def cam_one(j):
      bi, p = j // n, j % n
      maps = run(tap, patches[bi, p][None], one_target(bi), options, patch_post, None).maps
      return maps[0, 0] if maps.ndim == 4 else maps[0]

    cams = chunking.chunked_map(cam_one, jnp.arange(b * n), chunk_size=self.chunk_size, progress=progress)
    fused = _fuse(cams.reshape(b, n, window, window), weights, kept, where, (h, w), window, self.pool, self.theta)
    if self.smooth:
      fused = _blur(fused)
    maps = postprocess.normalize(fused) if post.normalize else fused
    sizes = tuple(_spatial.feature_size(a, 2) for a in clean.activations)
    return Explanation(
      maps=maps,
      logits=clean.logits,
      target=None if clean.ids is None else clean.ids[:, 0],
      scores=clean.scores[:, 0],
      method=self.name,
      layer=tap.layer,
      feature_sizes=sizes,
    )


def _patch_weights(scores: jax.Array, keep: int) -> tuple[jax.Array, jax.Array]:
  """Each patch's weight (its score over the image's best) and whether it is among the `keep` best, ``(B, P)``."""
  b, n = scores.shape
  order = jnp.argsort(scores, axis=1, stable=True)[:, n - keep :]  # (B, keep): the best `keep` patches, ascending
  best = jnp.take_along_axis(scores, order[:, -1:], axis=1)
  weights = jnp.where(best > 0, scores / jnp.where(best > 0, best, 1.0), 1.0)
  kept = jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], order].set(True)
  return weights, kept


def _fuse(cams, weights, kept, where, size, window, pool, theta) -> jax.Array:
  """Paste every weighted patch map into its scale's canvas resized to `size` (two matrix products per patch) and
  fuse: the maximum ("max") or the mean over the patches above `theta` at each pixel ("mean")."""
  b = cams.shape[0]
  h, w = size
  total = jnp.zeros((b, h, w), jnp.float32)
  counts = jnp.zeros((b, h, w), jnp.float32)
  mats: dict = {}
  for p, (sh, sw, y1, x1) in enumerate(where):
    if (sh, sw) not in mats:
      mats[(sh, sw)] = (jnp.asarray(resize_matrix(sh, h), jnp.float32), jnp.asarray(resize_matrix(sw, w), jnp.float32))
    ry, rx = mats[(sh, sw)]
    cam = cams[:, p] * weights[:, p, None, None]
    full = jnp.einsum(
      "hy,byx,wx->bhw",
      ry[:, y1 : y1 + window],
      cam,
      rx[:, x1 : x1 + window],
      precision=jax.lax.Precision.HIGHEST,
    )
    on = kept[:, p, None, None]
    if pool == "max":
      total = jnp.where(on, jnp.maximum(total, full), total)
    else:
      mask = on & (full > theta)
      total = total + jnp.where(mask, full, 0.0)
      counts = counts + mask
  if pool == "max":
    return total
  return jnp.where(counts > 0, total / jnp.where(counts > 0, counts, 1.0), 0.0)
