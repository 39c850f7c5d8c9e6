"""Targets for models that are not classifiers: segmentation masks, detections (matched by IoU), similarity to an
embedding, regression and binary outputs."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam.targets.classes import _check_ids


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
  pytorch-grad-cam's ``SemanticSegmentationTarget`` indexes ``(K, H, W)``). Build it with `segmentation`; calling it
  on the output gives the scores ``(B,)``.

  Args:
    class_id: the class, an int or ``(B,)`` ints (traced).
    mask: ``(H, W)`` or ``(B, H, W)``, bool or float weights (traced).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> output = jnp.ones((1, 2, 2, 3))  # (B, H, W, K) per-pixel logits
    >>> target = targets.Segmentation(1, jnp.array([[True, False], [True, True]]))
    >>> target(output).tolist(), target.evaluate(output)[1].shape
    ([3.0], (1, 1))
  """

  class_id: Any
  mask: Any

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    """The masked sum of the class's per-pixel logits.

    Args:
      output: the model's per-pixel logits ``(B, H, W, K)``, channels last.

    Returns:
      ``(None, scores (B, 1), False)``: no class ids, one score per image.

    Raises:
      ValueError: `output` is not an array of rank 4, or the mask does not broadcast to ``(B, H, W)``.
    """
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
  an int or ``(B,)``. For segmentation models with channels-last outputs ``(B, H, W, K)``.

  Args:
    class_id: the class whose logits are summed: an int (every image) or ``(B,)`` ints.
    mask: the pixels summed over, ``(H, W)`` (every image) or ``(B, H, W)``: bool, or float weights.

  Returns:
    A `Segmentation` target.

  Raises:
    TypeError: `class_id` is not an int or int array.
    ValueError: `class_id` of rank > 1, or `mask` not of rank 2 or 3.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> output = jnp.arange(12.0).reshape(1, 2, 2, 3)  # (B, H, W, K): logit of class k at pixel p = 3 p + k
    >>> targets.segmentation(2, jnp.array([[1.0, 0.0], [0.0, 1.0]]))(output).tolist()  # pixels 0 and 3: 2 + 11
    [13.0]
  """
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
  """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` on padded detector outputs. Build it with `detection`; calling
  it on the detector's output gives the scores ``(B,)``.

  Args:
    boxes: reference boxes ``(M, 4)`` or ``(B, M, 4)`` as (x0, y0, x1, y1) (traced).
    labels: their labels ``(M,)`` or ``(B, M)``, -1 for padding (traced).
    iou: the IoU a prediction must exceed to count (static).
    fields: the names of the output's boxes, scores, labels and validity mask (static).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam import targets
    >>> output = {"boxes": jnp.array([[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]]),
    ...           "scores": jnp.array([[0.5, 0.25]]), "labels": jnp.array([[1, 2]])}
    >>> target = targets.Detection(jnp.array([[0.0, 0.0, 2.0, 2.0]]), jnp.array([1]))
    >>> scores = jax.jit(lambda out: target.evaluate(out)[1])(output)  # jit: one compile, not one per op
    >>> scores.tolist()  # the first prediction matches: IoU 1 + score 0.5
    [[1.5]]
  """

  boxes: Any
  labels: Any
  iou: float = 0.5
  fields: tuple = ("boxes", "scores", "labels", "valid")

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    """The sum over the reference boxes of IoU + score of their matched predictions.

    Args:
      output: the detector's padded predictions, a dict or dataclass holding `fields`: boxes ``(B, N, 4)``,
        scores ``(B, N)``, labels ``(B, N)`` and optionally a validity mask ``(B, N)``.

    Returns:
      ``(None, scores (B, 1), False)``: no class ids, one score per image.

    Raises:
      ValueError: `output` lacks the boxes, scores or labels field.
    """

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

  Args:
    boxes: the reference boxes ``(M, 4)`` (every image) or ``(B, M, 4)`` as (x0, y0, x1, y1).
    labels: their labels ``(M,)`` or ``(B, M)``; -1 marks a padding box, which adds nothing.
    iou: the IoU a matched prediction must exceed.
    fields: the names of the output's boxes, scores, labels and validity mask (keys of a dict or attributes).

  Returns:
    A `Detection` target.

  Raises:
    ValueError: `boxes` not of shape ``(M, 4)`` / ``(B, M, 4)``, `labels` not one per box, or `fields` not four
      names.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam import targets
    >>> output = {"boxes": jnp.array([[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]]),
    ...           "scores": jnp.array([[0.5, 0.25]]), "labels": jnp.array([[1, 2]])}
    >>> score = jax.jit(lambda target, out: target(out))  # targets are pytrees: new references never recompile
    >>> boxes = jnp.array([[0.0, 0.0, 2.0, 2.0]])
    >>> score(targets.detection(boxes, jnp.array([1])), output).tolist()  # IoU 1 + score 0.5
    [1.5]
    >>> score(targets.detection(boxes, jnp.array([2])), output).tolist()  # wrong label
    [0.0]
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
  ``SimilarityToConceptTarget``; norms clamped at 1e-8 as torch's ``CosineSimilarity``). Build with `similarity`;
  calling it on the embeddings gives the scores ``(B,)``.

  Args:
    reference: the reference embedding ``(D,)`` or ``(B, D)`` (traced).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> ids, scores, multi = targets.Similarity(jnp.array([1.0, 0.0])).evaluate(jnp.array([[2.0, 0.0], [0.0, 3.0]]))
    >>> ids, scores.tolist(), multi
    (None, [[1.0], [0.0]], False)
  """

  reference: Any

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    """The cosine similarity of each output embedding to the reference.

    Args:
      output: the model's embeddings ``(B, D)``.

    Returns:
      ``(None, scores (B, 1), False)``: no class ids, one score per image.

    Raises:
      ValueError: `output` is not an array of rank 2.
    """
    out = _output_array(output, "similarity", (2,))
    ref = jnp.broadcast_to(jnp.asarray(self.reference, out.dtype), out.shape)
    norm = lambda v: jnp.maximum(jnp.linalg.norm(v, axis=-1), 1e-8)
    return _one(jnp.sum(out * ref, axis=-1) / (norm(out) * norm(ref)))

  def __call__(self, output: Any) -> jax.Array:
    return self.evaluate(output)[1][:, 0]


def similarity(reference: Any) -> Similarity:
  """Explain what makes an embedding model's output similar to `reference` (an embedding ``(D,)`` or ``(B, D)``).

  Args:
    reference: the embedding to compare with: ``(D,)`` (every image) or ``(B, D)`` (one per image).

  Returns:
    A `Similarity` target.

  Raises:
    ValueError: `reference` not of rank 1 or 2.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> targets.similarity(jnp.array([1.0, 1.0]))(jnp.array([[2.0, 2.0], [-1.0, -1.0]])).round(4).tolist()
    [1.0, -1.0]
  """
  if np.ndim(reference) not in (1, 2):
    raise ValueError(f"Expected `reference` of shape (D,) or (B, D), got {np.shape(reference)}.")
  return Similarity(reference)


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["index", "sign", "sigmoid"])
@dataclasses.dataclass(frozen=True)
class Regression:
  """A raw output ``(B,)`` or ``(B, D)[:, index]`` times `sign` (through a sigmoid if asked). Build with `regression`
  or `binary` (`Binary` is another name of this class); calling it on the output gives the scores ``(B,)``.

  Args:
    index: the output column for ``(B, D)`` outputs (None: a ``(B,)`` or ``(B, 1)`` output).
    sign: 1.0, or -1.0 for a binary classifier's negative side.
    sigmoid: whether the score goes through a sigmoid (a probability).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> ids, scores, multi = targets.Regression(1).evaluate(jnp.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> ids, scores.tolist(), multi
    (None, [[2.0], [4.0]], False)
  """

  index: int | None = None
  sign: float = 1.0
  sigmoid: bool = False

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    """The chosen output times `sign`, through a sigmoid if asked.

    Args:
      output: the model's output ``(B,)`` or ``(B, D)``.

    Returns:
      ``(None, scores (B, 1), False)``: no class ids, one score per image.

    Raises:
      ValueError: `output` is not an array of rank 1 or 2, or it has several columns and `index` is None.
    """
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
  """S = the raw output ``(B,)``, or column `index` of ``(B, D)`` (pytorch-grad-cam's ``RawScoresOutputTarget``).

  Args:
    index: the column of a ``(B, D)`` output; None: the output is ``(B,)`` or ``(B, 1)``.

  Returns:
    A `Regression` target.

  Raises:
    ValueError: `index` is not an int or None.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> targets.regression(1)(jnp.array([[1.0, 2.0], [3.0, 4.0]])).tolist()
    [2.0, 4.0]
    >>> targets.regression()(jnp.array([0.5, -1.0])).tolist()
    [0.5, -1.0]
  """
  if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
    raise ValueError(f"Expected `index` to be an int or None, got {index!r}.")
  return Regression(index)


def binary(positive: bool = True, *, probability: bool = False) -> Regression:
  """A binary classifier's single logit ``(B,)`` / ``(B, 1)``: S = logit for the positive side, -logit for the
  negative (pytorch-grad-cam's ``BinaryClassifierOutputTarget``); ``probability=True``: sigmoid(±logit).

  Args:
    positive: explain the positive class (True) or the negative one (False: the score is -logit).
    probability: score the probability sigmoid(±logit) instead of the logit.

  Returns:
    A `Regression` (`Binary`) target.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> logits = jnp.array([2.0, -1.0])
    >>> targets.binary()(logits).tolist(), targets.binary(False)(logits).tolist()
    ([2.0, -1.0], [-2.0, 1.0])
    >>> targets.binary(probability=True)(jnp.array([0.0])).tolist()
    [0.5]
  """
  return Regression(None, 1.0 if positive else -1.0, bool(probability))


Binary = Regression
