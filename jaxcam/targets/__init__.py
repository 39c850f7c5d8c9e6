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
from typing import Any

import jax
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
from jaxcam.targets.classes import (
  FINER_CONVENTIONS as FINER_CONVENTIONS,
)
from jaxcam.targets.classes import (
  ClassScore,
  FinerScore,
  ScoreFn,
  _check_ids,
  check_logits,
  finer,
  log_softmax,
  logit,
  rest,
  softmax,
)
from jaxcam.targets.outputs import (
  Binary,
  Detection,
  Regression,
  Segmentation,
  Similarity,
  binary,
  detection,
  regression,
  segmentation,
  similarity,
)


def check_ids_in_range(classes: Any, n: int) -> None:
  """Raise for concrete class ids outside [0, n) (under jit they give NaN maps instead).

  Args:
    classes: concrete class ids (any shape).
    n: the model's number of classes.

  Raises:
    ValueError: some ids lie outside [0, n) (the message lists up to ten of them).
  """
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
  """Normalize `target` (None, ids, a score object or a callable) to a score object.

  Args:
    target: None (each image's top class), class ids (an int, ``(B,)`` or ``(B, K)`` ints, a list of them), an
      ImageNet class name or a list of names ("Egyptian cat"), a score object (anything with an ``evaluate``
      method, returned as it is) or a callable ``output -> (B,)`` / ``(B, K)``.

  Returns:
    A score object: ids and names become `logit` scores, a callable a `ScoreFn`.

  Raises:
    TypeError: class ids that are not ints.
    ValueError: class ids of rank > 2.
    KeyError: an unknown ImageNet class name (the error lists the closest names; it is a `ValueError` too).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> logits = jnp.array([[1.0, 3.0, 2.0], [4.0, 0.0, 1.0]])
    >>> targets.as_target(None)
    jaxcam.targets.logit(None)
    >>> targets.as_target([2, 0])(logits).tolist()
    [2.0, 4.0]
    >>> targets.as_target(lambda out: out[:, 0])(logits).tolist()
    [1.0, 4.0]
  """
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

  Args:
    target: a score object, as `as_target` returns it.
    ids: class ids ``(B, K)`` int, as the target's ``evaluate`` returned them on the clean input; or None.

  Returns:
    For a `ClassScore` or `FinerScore`: a copy whose class ids are `ids` (``(B,)`` unless the target asked for K
    classes per image); any other target (which has no class ids) unchanged.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> top = targets.softmax()  # each image's top class: it could change on a noisy copy
    >>> ids, _, _ = top.evaluate(jnp.array([[1.0, 3.0], [4.0, 0.0]]))
    >>> targets.with_ids(top, ids).classes.tolist()  # fixed to the clean input's classes
    [1, 0]
  """
  if isinstance(target, (ClassScore, FinerScore)) and ids is not None:
    return dataclasses.replace(target, classes=ids if target.multi else ids[:, 0])
  return target
