"""Targets: which score S of the logits each map explains.

A target turns the model's output into scores ``(B, K)``: one score per image and requested class. The
common case is an int array of class ids; `None` means each image's own top class. Score objects choose the
function of the logits (`logit`, `softmax`, `log_softmax`) and are pytrees whose class ids are leaves, so
they pass through `jax.jit` as ordinary arguments. Any callable ``output -> (B,)`` or ``(B, K)`` works too, for
models whose output is any pytree (class ids need ``(B, classes)`` logits).

Class ids may be a scalar (every image), ``(B,)`` (one per image) or ``(B, K)`` (K classes per image from one
forward pass; maps then come back as ``(B, K, H, W)``).

Out-of-range ids: eager calls raise `ValueError` naming the ids. Under a user's `jax.jit` the ids are not
known when tracing; the gather then uses ``mode="fill"`` and the maps of the affected images come back as NaN
(every pixel), never as a silently wrong class.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "Binary",
  "ClassScore",
  "Detection",
  "FinerScore",
  "Regression",
  "ScoreFn",
  "Segmentation",
  "Similarity",
  "as_target",
  "binary",
  "check_logits",
  "detection",
  "finer",
  "log_softmax",
  "logit",
  "regression",
  "rest",
  "segmentation",
  "similarity",
  "softmax",
  "with_ids",
]

_KINDS = ("logit", "softmax", "log_softmax", "rest")


def _check_ids(classes: Any) -> Any:
  if classes is None:
    return None
  if isinstance(classes, (bool, np.bool_)) or not (
    isinstance(classes, (int, np.integer)) or jnp.issubdtype(jnp.result_type(classes), jnp.integer)
  ):
    raise TypeError(
      f"Expected class ids to be ints (a scalar, (B,) or (B, K)), got {type(classes).__name__} of dtype "
      f"{getattr(classes, 'dtype', type(classes).__name__)}. Pass e.g. jnp.array([281, 967]); for a custom "
      "score pass a callable logits -> (B,)."
    )
  ndim = np.ndim(classes)
  if ndim > 2:
    raise ValueError(f"Expected class ids of rank 0, 1 (B,) or 2 (B, K), got shape {np.shape(classes)}.")
  return classes


def check_logits(logits: Any) -> jax.Array:
  """`logits` if it is a ``(B, classes)`` array; class ids need one, other targets take any model output."""
  if not hasattr(logits, "ndim") or logits.ndim != 2:
    desc = getattr(logits, "shape", type(logits).__name__)
    raise ValueError(
      f"Expected the model to return logits of shape (B, classes) for a class-id target, got {desc}. Pass a "
      "callable target that maps the model's output to scores (B,) or (B, K), e.g. "
      "target=lambda out: out['logits'][:, 3]."
    )
  return logits


@functools.partial(jax.tree_util.register_dataclass, data_fields=["classes"], meta_fields=["kind"])
@dataclasses.dataclass(frozen=True, eq=False)
class ClassScore:
  """Score S = f(logits)[b, c] for class ids c (None: each image's argmax); f is `kind`.

  Build it with `logit`, `softmax`, `log_softmax` or `as_target` (they validate the ids).
  """

  kind: str
  classes: Any = None

  def __post_init__(self):  # `kind` is static, so this never sees a tracer
    if self.kind not in _KINDS:
      raise ValueError(f"Expected `kind` to be one of {_KINDS}, got {self.kind!r}.")

  def __repr__(self) -> str:
    return f"jaxcam.targets.{self.kind}({self.classes!r})"

  @property
  def multi(self) -> bool:
    """Whether K classes per image were asked for (maps gain a K axis)."""
    return self.classes is not None and np.ndim(self.classes) == 2

  def class_ids(self, logits: jax.Array) -> jax.Array:
    """Class ids as ``(B, K)`` int32 (K = 1 unless ``(B, K)`` ids were given)."""
    logits = check_logits(logits)
    b = logits.shape[0]
    if self.classes is None:
      return jnp.argmax(jax.lax.stop_gradient(logits), axis=-1).astype(jnp.int32)[:, None]
    c = jnp.asarray(self.classes).astype(jnp.int32)
    if c.ndim == 0:
      return jnp.broadcast_to(c, (b, 1))
    if c.shape[0] != b:
      raise ValueError(
        f"Expected class ids with one row per image: shape ({b},) or ({b}, K), got {c.shape} for a batch of {b}."
      )
    return c[:, None] if c.ndim == 1 else c

  def scores(self, logits: jax.Array, ids: jax.Array) -> jax.Array:
    """``(B, K)`` scores; NaN where an id is out of range (see the module docstring)."""
    logits = check_logits(logits)
    if self.kind == "softmax":
      values = jax.nn.softmax(logits, axis=-1)
    elif self.kind == "log_softmax":
      values = jax.nn.log_softmax(logits, axis=-1)
    elif self.kind == "rest":  # logit - cross-entropy = z_c + log_softmax(z)_c
      values = logits + jax.nn.log_softmax(logits, axis=-1)
    else:
      values = logits
    return jnp.take_along_axis(values, ids, axis=-1, mode="fill", fill_value=jnp.nan)

  def evaluate(self, logits: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
    """``(ids (B, K), scores (B, K), multi)``."""
    ids = self.class_ids(logits)
    return ids, self.scores(logits, ids), self.multi

  def __call__(self, logits: jax.Array) -> jax.Array:
    s = self.scores(logits, self.class_ids(logits))
    return s if self.multi else s[:, 0]


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["fn"])
@dataclasses.dataclass(frozen=True)
class ScoreFn:
  """A user callable ``output -> (B,)`` or ``(B, K)`` (static: hashable, defined once).

  The model's output may be any pytree (a dict, a dataclass, a tuple); the callable picks the score.
  """

  fn: Callable[[Any], jax.Array]

  def __repr__(self) -> str:
    return f"ScoreFn({getattr(self.fn, '__name__', self.fn)!r})"

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    """``(None, scores (B, K), multi)``: multi when the callable returns (B, K)."""
    s = self._call_checked(output)
    return None, (s[:, None] if s.ndim == 1 else s), s.ndim == 2

  def _call_checked(self, output: Any) -> jax.Array:
    s = self.fn(output)
    leaves = jax.tree_util.tree_leaves(output)
    b = leaves[0].shape[0] if leaves and getattr(leaves[0], "ndim", None) else None
    if not hasattr(s, "ndim") or s.ndim not in (1, 2) or (b is not None and s.shape[0] != b):
      shapes = jax.tree.map(lambda v: getattr(v, "shape", type(v).__name__), output)
      raise ValueError(
        f"Expected the target callable {getattr(self.fn, '__name__', self.fn)!r} to return scores of shape "
        f"({b},) or ({b}, K) for a model output of shapes {shapes}, got {getattr(s, 'shape', type(s).__name__)}."
      )
    if not jnp.issubdtype(s.dtype, jnp.floating):
      raise TypeError(
        f"Expected the target callable {getattr(self.fn, '__name__', self.fn)!r} to return float scores, got "
        f"{s.dtype} (class ids, e.g. from argmax, have no gradient: every map would be zero). Return the score, "
        "e.g. lambda out: out[:, 3], or pass class ids as `target`."
      )
    return s

  def __call__(self, output: Any) -> jax.Array:
    return self._call_checked(output)


FINER_CONVENTIONS = ("pgc", "torchcam")


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["classes"], meta_fields=["convention", "alpha", "references"]
)
@dataclasses.dataclass(frozen=True, eq=False)
class FinerScore:
  """Finer-CAM's contrastive score of class c against the classes whose logits are closest to c's.

  convention "pgc" (pytorch-grad-cam's ``FinerWeightedTarget``): ``S = sum_i p_i (z_c - alpha z_i) /
  (sum_i p_i + 1e-9)`` over the comparison classes ranked `references` (default (1, 2, 3): the 2nd-4th closest
  logits, rank 0 being c itself), ``p = softmax(z)`` inside the differentiated graph, alpha 1.
  convention "torchcam" (torchcam's ``FinerCAM``): ``S = z_c - alpha mean_i z_i`` over the `references` (default
  3) closest other classes, alpha 0.6. The comparison classes are chosen on the logits without gradient; c is
  the target class (None: the top class). Build it with `finer`.
  """

  classes: Any = None
  convention: str = "pgc"
  alpha: float = 1.0
  references: Any = (1, 2, 3)

  def __repr__(self) -> str:
    return f"jaxcam.targets.finer({self.classes!r}, convention={self.convention!r}, alpha={self.alpha!r})"

  @property
  def multi(self) -> bool:
    return self.classes is not None and np.ndim(self.classes) == 2

  def evaluate(self, logits: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
    """``(ids (B, K), contrastive scores (B, K), multi)``."""
    logits = check_logits(logits)
    ids = ClassScore("logit", self.classes).class_ids(logits)  # (B, K)
    n = logits.shape[-1]
    fixed = jax.lax.stop_gradient(logits)
    zc = jnp.take_along_axis(logits, ids, axis=-1, mode="fill", fill_value=jnp.nan)  # (B, K)
    dist = jnp.abs(fixed[:, None, :] - jax.lax.stop_gradient(zc)[..., None])  # (B, K, N)
    dist = jnp.where(jnp.arange(n)[None, None, :] == ids[..., None], -jnp.inf, dist)  # c itself ranks first
    order = jnp.argsort(dist, axis=-1, stable=True)
    if self.convention == "pgc":
      ranks = [r for r in self.references if r < n]
      refs = order[..., jnp.asarray(ranks, jnp.int32)]  # (B, K, R)
      z_ref = jnp.take_along_axis(logits[:, None, :], refs, axis=-1)
      p_ref = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1)[:, None, :], refs, axis=-1)
      scores = jnp.sum(p_ref * (zc[..., None] - self.alpha * z_ref), axis=-1) / (jnp.sum(p_ref, axis=-1) + 1e-9)
    else:
      count = min(int(self.references), n - 1)
      z_ref = jnp.take_along_axis(logits[:, None, :], order[..., 1 : 1 + count], axis=-1)
      scores = zc - self.alpha * jnp.mean(z_ref, axis=-1)
    return ids, scores, self.multi

  def __call__(self, logits: jax.Array) -> jax.Array:
    _, s, multi = self.evaluate(logits)
    return s if multi else s[:, 0]


def finer(
  classes: Any = None, *, convention: str = "pgc", alpha: float | None = None, references: Any = None
) -> FinerScore:
  """Finer-CAM's contrastive target (see `FinerScore`): explain what tells class c apart from its closest rivals.

  Args:
    classes: class ids as for `logit` (None: each image's top class).
    convention: "pgc" (pytorch-grad-cam, the default) or "torchcam".
    alpha: comparison strength; None gives the convention's default (1.0 for "pgc", torchcam's gamma 0.6).
    references: "pgc": the similarity ranks compared with (default (1, 2, 3)); "torchcam": how many closest
      classes are averaged (default 3).
  """
  if convention not in FINER_CONVENTIONS:
    raise ValueError(f"Expected `convention` to be one of {FINER_CONVENTIONS}, got {convention!r}.")
  from jaxcam import _checks

  if alpha is None:
    alpha = 1.0 if convention == "pgc" else 0.6
  _checks.check_float("alpha", alpha, minimum=0.0)
  if convention == "pgc":
    refs = (1, 2, 3) if references is None else references
    if (
      not isinstance(refs, (tuple, list))
      or not refs
      or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in refs)
    ):
      raise ValueError(
        f"Expected `references` to be a tuple of similarity ranks >= 1 (rank 0 is the class itself), got {refs!r}."
      )
    refs = tuple(refs)
  else:
    refs = 3 if references is None else _checks.check_positive_int("references", references)
  return FinerScore(_check_ids(classes), convention, float(alpha), refs)


def logit(classes: Any = None) -> ClassScore:
  """S = logits[c]: the raw class score (Grad-CAM's default)."""
  return ClassScore("logit", _check_ids(classes))


def softmax(classes: Any = None) -> ClassScore:
  """S = softmax(logits)[c]: the class probability."""
  return ClassScore("softmax", _check_ids(classes))


def log_softmax(classes: Any = None) -> ClassScore:
  """S = log_softmax(logits)[c]: the log-probability (exp(S) is the probability, see Grad-CAM++)."""
  return ClassScore("log_softmax", _check_ids(classes))


def rest(classes: Any = None) -> ClassScore:
  """S = logits[c] - cross_entropy(logits, c) = z_c + log_softmax(z)_c: pytorch-grad-cam's
  ``ClassifierOutputReST`` (used with Shapley-CAM)."""
  return ClassScore("rest", _check_ids(classes))


# ------------------------------------------------------------------------------------------------------------
# Targets for models that are not classifiers. Each is a pytree with ``evaluate(output) -> (None, (B, 1), False)``.


def _output_array(output: Any, name: str, ndim: tuple[int, ...]) -> jax.Array:
  if not hasattr(output, "ndim") or output.ndim not in ndim:
    shapes = jax.tree.map(lambda v: getattr(v, "shape", type(v).__name__), output)
    raise ValueError(
      f"Expected the model's output for a {name} target to be an array of rank {' or '.join(map(str, ndim))}, got "
      f'{shapes}. Pick it out with the tap\'s `output=` (e.g. output="logits").'
    )
  return output


def _one(s: jax.Array) -> tuple[None, jax.Array, bool]:
  return None, s[:, None], False


@functools.partial(jax.tree_util.register_dataclass, data_fields=["class_id", "mask"], meta_fields=[])
@dataclasses.dataclass(frozen=True, eq=False)
class Segmentation:
  """S = sum over the mask of class `class_id`'s per-pixel logits, for outputs ``(B, H, W, K)`` (channels last;
  pytorch-grad-cam's ``SemanticSegmentationTarget`` indexes ``(K, H, W)``). Build it with `segmentation`."""

  class_id: Any
  mask: Any

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    out = _output_array(output, "segmentation", (4,))
    mask = jnp.asarray(self.mask, out.dtype)
    mask = jnp.broadcast_to(mask, out.shape[:3]) if mask.ndim in (2, 3) else mask
    if mask.shape != out.shape[:3]:
      raise ValueError(f"Expected a segmentation mask (H, W) or (B, H, W) = {out.shape[:3]}, got {mask.shape}.")
    cls = jnp.broadcast_to(jnp.asarray(self.class_id, jnp.int32), out.shape[:1])
    per_pixel = jnp.take_along_axis(out, cls[:, None, None, None], axis=-1)[..., 0]  # (B, H, W)
    return _one(jnp.sum(per_pixel * mask, axis=(1, 2)))

  def __call__(self, output: Any) -> jax.Array:
    return self.evaluate(output)[1][:, 0]


def segmentation(class_id: Any, mask: Any) -> Segmentation:
  """The sum of a class's per-pixel logits over a mask ``(H, W)`` or ``(B, H, W)`` (bool or weights); `class_id`
  an int or ``(B,)``. For segmentation models with channels-last outputs ``(B, H, W, K)``."""
  _check_ids(class_id)
  if np.ndim(class_id) > 1:
    raise ValueError(f"Expected `class_id` to be an int or (B,), got shape {np.shape(class_id)}.")
  if np.ndim(mask) not in (2, 3):
    raise ValueError(f"Expected `mask` of shape (H, W) or (B, H, W), got {np.shape(mask)}.")
  return Segmentation(class_id, mask)


def _box_iou(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of boxes a (..., M, 4) with b (..., N, 4) as (x0, y0, x1, y1): (..., M, N) (torchvision's box_iou)."""
  area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])
  lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
  rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
  wh = jnp.clip(rb - lt, 0)
  inter = wh[..., 0] * wh[..., 1]
  union = area(a)[..., :, None] + area(b)[..., None, :] - inter
  return inter / jnp.where(union > 0, union, 1.0)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["boxes", "labels"], meta_fields=["iou", "fields"])
@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
  """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` on padded detector outputs. Build it with `detection`."""

  boxes: Any
  labels: Any
  iou: float = 0.5
  fields: tuple = ("boxes", "scores", "labels", "valid")

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    def get(name, required=True):
      if isinstance(output, dict):
        v = output.get(name)
      else:
        v = getattr(output, name, None)
      if v is None and required:
        from jaxcam.layouts import describe

        have = describe(output)
        raise ValueError(
          f"Expected the detector's output to hold {name!r} (fields {self.fields}: boxes (B, N, 4), scores (B, N), "
          f"labels (B, N), optional valid (B, N)), got {have}. Rename with detection(..., fields=(...))."
        )
      return v

    fb, fs, fl, fv = self.fields
    boxes, scores, labels = get(fb), get(fs), get(fl)
    valid = get(fv, required=False)
    ref = jnp.asarray(self.boxes, boxes.dtype)
    ref_labels = jnp.asarray(self.labels)
    if ref.ndim == 2:  # the same references for every image
      ref, ref_labels = ref[None], ref_labels[None]
    ref = jnp.broadcast_to(ref, (boxes.shape[0],) + ref.shape[1:])
    ref_labels = jnp.broadcast_to(ref_labels, ref.shape[:2])
    ious = _box_iou(ref, boxes)  # (B, M, N)
    if valid is not None:
      ious = jnp.where(jnp.asarray(valid, bool)[:, None, :], ious, -1.0)
    best = jnp.argmax(jax.lax.stop_gradient(ious), axis=-1)  # (B, M): among all (valid) predictions
    iou = jnp.take_along_axis(ious, best[..., None], axis=-1)[..., 0]
    score = jnp.take_along_axis(scores, best, axis=-1)
    label = jnp.take_along_axis(labels, best, axis=-1)
    hit = (jax.lax.stop_gradient(iou) > self.iou) & (label == ref_labels) & (ref_labels >= 0)
    return _one(jnp.sum(jnp.where(hit, iou + score, 0.0), axis=-1))

  def __call__(self, output: Any) -> jax.Array:
    return self.evaluate(output)[1][:, 0]


def detection(boxes: Any, labels: Any, *, iou: float = 0.5, fields: tuple = ("boxes", "scores", "labels", "valid"))\
  -> Detection:  # fmt: skip
  """For each reference box, the predicted box of highest IoU among all (valid) predictions; if that IoU exceeds
  `iou` and its label matches, add IoU + its score (pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``).

  The model returns fixed-size padded predictions, as JAX detectors do: a dict or dataclass with `fields` = names
  of boxes ``(B, N, 4)`` as (x0, y0, x1, y1), scores ``(B, N)``, labels ``(B, N)`` and an optional validity mask
  ``(B, N)``. References: boxes ``(M, 4)`` / ``(B, M, 4)`` and labels ``(M,)`` / ``(B, M)`` (label -1: padding).
  """
  b = np.asarray(boxes)
  if b.ndim not in (2, 3) or b.shape[-1] != 4:
    raise ValueError(f"Expected reference `boxes` of shape (M, 4) or (B, M, 4), got {b.shape}.")
  if np.shape(labels) != b.shape[:-1]:
    raise ValueError(f"Expected `labels` of shape {b.shape[:-1]} (one per box), got {np.shape(labels)}.")
  if len(fields) != 4:
    raise ValueError(f"Expected `fields` = (boxes, scores, labels, valid) names, got {fields!r}.")
  return Detection(boxes, labels, float(iou), tuple(fields))


@functools.partial(jax.tree_util.register_dataclass, data_fields=["reference"], meta_fields=[])
@dataclasses.dataclass(frozen=True, eq=False)
class Similarity:
  """Cosine similarity of the output embedding ``(B, D)`` to a reference ``(D,)`` or ``(B, D)`` (pytorch-grad-cam's
  ``SimilarityToConceptTarget``; norms clamped at 1e-8 as torch's ``CosineSimilarity``). Build with `similarity`."""

  reference: Any

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    out = _output_array(output, "similarity", (2,))
    ref = jnp.broadcast_to(jnp.asarray(self.reference, out.dtype), out.shape)
    norm = lambda v: jnp.maximum(jnp.linalg.norm(v, axis=-1), 1e-8)
    return _one(jnp.sum(out * ref, axis=-1) / (norm(out) * norm(ref)))

  def __call__(self, output: Any) -> jax.Array:
    return self.evaluate(output)[1][:, 0]


def similarity(reference: Any) -> Similarity:
  """Explain what makes an embedding model's output similar to `reference` (an embedding ``(D,)`` or ``(B, D)``)."""
  if np.ndim(reference) not in (1, 2):
    raise ValueError(f"Expected `reference` of shape (D,) or (B, D), got {np.shape(reference)}.")
  return Similarity(reference)


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["index", "sign", "sigmoid"])
@dataclasses.dataclass(frozen=True)
class Regression:
  """A raw output ``(B,)`` or ``(B, D)[:, index]`` times `sign` (through a sigmoid if asked). Build with `regression`
  or `binary`."""

  index: int | None = None
  sign: float = 1.0
  sigmoid: bool = False

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    out = _output_array(output, "regression / binary", (1, 2))
    if out.ndim == 2:
      if self.index is None and out.shape[1] != 1:
        raise ValueError(f"Expected `index` for an output of shape {out.shape} (which of the {out.shape[1]} outputs).")
      out = out[:, 0 if self.index is None else self.index]
    s = self.sign * out
    return _one(jax.nn.sigmoid(s) if self.sigmoid else s)

  def __call__(self, output: Any) -> jax.Array:
    return self.evaluate(output)[1][:, 0]


def regression(index: int | None = None) -> Regression:
  """S = the raw output ``(B,)``, or column `index` of ``(B, D)`` (pytorch-grad-cam's ``RawScoresOutputTarget``)."""
  if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
    raise ValueError(f"Expected `index` to be an int or None, got {index!r}.")
  return Regression(index)


def binary(positive: bool = True, *, probability: bool = False) -> Regression:
  """A binary classifier's single logit ``(B,)`` / ``(B, 1)``: S = logit for the positive side, -logit for the
  negative (pytorch-grad-cam's ``BinaryClassifierOutputTarget``); ``probability=True``: sigmoid(±logit)."""
  return Regression(None, 1.0 if positive else -1.0, bool(probability))


Binary = Regression


def check_ids_in_range(classes: Any, n: int) -> None:
  """Raise for concrete class ids outside [0, n) (under jit they give NaN maps instead)."""
  ids = np.asarray(classes)
  bad = ids[(ids < 0) | (ids >= n)]
  if bad.size:
    raise ValueError(
      f"Expected class ids in [0, {n}) for a model with {n} classes, got {sorted(set(bad.tolist()))[:10]}. "
      "jaxcam.models.imagenet_class(name) looks up ImageNet ids by name."
    )


Target = ClassScore | ScoreFn | FinerScore | Segmentation | Detection | Similarity | Regression
"""What `as_target` returns: a score object with ``evaluate(logits) -> (ids, scores (B, K), multi)``. Your own
targets: any pytree with that method (its array fields are traced: new values never recompile)."""


def as_target(target: Any) -> Target:
  """Normalize `target` (None, ids, a score object or a callable) to a score object."""
  if target is None:
    return ClassScore("logit", None)
  if callable(getattr(target, "evaluate", None)) and not isinstance(target, type):
    return target
  if callable(target) and not hasattr(target, "dtype"):
    return ScoreFn(target)
  if isinstance(target, str) or (
    isinstance(target, (list, tuple)) and target and all(isinstance(t, str) for t in target)
  ):  # ImageNet class names ("Egyptian cat"), looked up with their closest matches on a typo
    from jaxcam.models.imagenet import imagenet_class

    target = [imagenet_class(t) for t in target] if isinstance(target, (list, tuple)) else imagenet_class(target)
  if isinstance(target, (list, tuple)):
    target = np.asarray(target)
  return ClassScore("logit", _check_ids(target))


def with_ids(target: Target, ids: jax.Array | None) -> Target:
  """The same score with its class ids fixed to `ids` ``(B, K)`` (None ids: the target unchanged).

  Used wherever the input moves (a derivative direction, a noisy or masked copy): the class chosen on the clean
  input must not move with it.
  """
  if isinstance(target, (ClassScore, FinerScore)) and ids is not None:
    return dataclasses.replace(target, classes=ids if target.multi else ids[:, 0])
  return target
