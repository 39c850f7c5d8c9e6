"""Class-score targets: the logit, softmax, log-softmax or rest score of class ids (None: each image's top class),
a score function of your own, and Finer-CAM's score against the closest rival classes."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
  """`logits` if it is a ``(B, classes)`` array; class ids need one, other targets take any model output.

  Args:
    logits: the model's output; class-id targets need an array ``(B, classes)``.

  Returns:
    `logits`, unchanged.

  Raises:
    ValueError: `logits` is not an array of rank 2 (a dict, a tuple, a ``(B, H, W, K)`` map, ...).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> targets.check_logits(jnp.zeros((2, 10))).shape
    (2, 10)
  """
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

  Build it with `logit`, `softmax`, `log_softmax` or `as_target` (they validate the ids). Calling it on logits
  ``(B, classes)`` gives the scores ``(B,)`` (``(B, K)`` for ``(B, K)`` ids).

  Args:
    kind: the function f of the logits: "logit", "softmax", "log_softmax" or "rest" (static).
    classes: class ids, a scalar, ``(B,)`` or ``(B, K)`` ints (traced: new ids never recompile); None: each
      image's top class.

  Raises:
    ValueError: `kind` is not one of the four.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> logits = jnp.array([[1.0, 3.0, 2.0], [4.0, 0.0, 1.0]])
    >>> target = targets.ClassScore("logit", jnp.array([2, 0]))
    >>> target(logits).tolist()
    [2.0, 4.0]
    >>> ids = target.class_ids(logits)
    >>> ids.tolist(), target.scores(logits, ids).tolist()
    ([[2], [0]], [[2.0], [4.0]])
    >>> ids, scores, multi = targets.logit().evaluate(logits)  # None: the top classes
    >>> ids.tolist(), scores.tolist(), multi
    ([[1], [0]], [[3.0], [4.0]], False)
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
    """Class ids as ``(B, K)`` int32 (K = 1 unless ``(B, K)`` ids were given).

    Args:
      logits: the model's logits ``(B, classes)`` (None ids: their argmax, without gradient).

    Returns:
      The ids ``(B, K)`` int32: a scalar id broadcast to every image, ``(B,)`` ids as one column.

    Raises:
      ValueError: `logits` is not ``(B, classes)``, or the ids have a different number of rows than the batch.
    """
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
    """``(B, K)`` scores; NaN where an id is out of range (see the module docstring).

    Args:
      logits: the model's logits ``(B, classes)``.
      ids: class ids ``(B, K)`` int32, as `class_ids` returns them.

    Returns:
      ``f(logits)`` at the ids, ``(B, K)`` in the logits' dtype.

    Raises:
      ValueError: `logits` is not ``(B, classes)``.
    """
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
    """The class ids, their scores and whether K classes per image were asked for.

    Args:
      logits: the model's logits ``(B, classes)``.

    Returns:
      ``(ids (B, K) int32, scores (B, K), multi)``; `multi` is the `multi` property (maps gain a K axis).

    Raises:
      ValueError: as `class_ids`.
    """
    ids = self.class_ids(logits)
    return ids, self.scores(logits, ids), self.multi

  def __call__(self, logits: jax.Array) -> jax.Array:
    s = self.scores(logits, self.class_ids(logits))
    return s if self.multi else s[:, 0]


@functools.partial(jax.tree_util.register_dataclass, data_fields=[], meta_fields=["fn"])
@dataclasses.dataclass(frozen=True)
class ScoreFn:
  """A user callable ``output -> (B,)`` or ``(B, K)`` (static: hashable, defined once).

  The model's output may be any pytree (a dict, a dataclass, a tuple); the callable picks the score. `as_target`
  wraps any callable target in one; calling it runs the callable and checks what it returns.

  Args:
    fn: the score function ``output -> (B,)`` or ``(B, K)`` floats (static: a new function recompiles).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> target = targets.ScoreFn(lambda out: out["logits"][:, 1])
    >>> ids, scores, multi = target.evaluate({"logits": jnp.array([[1.0, 3.0], [4.0, 0.0]])})
    >>> ids, scores.tolist(), multi
    (None, [[3.0], [0.0]], False)
  """

  fn: Callable[[Any], jax.Array]

  def __repr__(self) -> str:
    return f"ScoreFn({getattr(self.fn, '__name__', self.fn)!r})"

  def evaluate(self, output: Any) -> tuple[None, jax.Array, bool]:
    """``(None, scores (B, K), multi)``: multi when the callable returns (B, K).

    Args:
      output: the model's output, any pytree whose leaves lead with the batch axis B.

    Returns:
      ``(None, scores (B, K), multi)``: no class ids; ``(B,)`` scores come back as one column ``(B, 1)``.

    Raises:
      ValueError: the callable returns something other than an array ``(B,)`` or ``(B, K)``.
      TypeError: the callable returns non-float scores (e.g. class ids from an argmax).
    """
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
  the target class (None: the top class). Build it with `finer`; calling it on logits ``(B, N)`` gives the scores
  ``(B,)`` (``(B, K)`` for ``(B, K)`` ids).

  Args:
    classes: class ids as for `logit` (None: each image's top class; traced).
    convention: "pgc" or "torchcam" (static).
    alpha: the comparison strength (static).
    references: "pgc": a tuple of similarity ranks; "torchcam": how many closest classes (static).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam import targets
    >>> logits = jnp.array([[5.0, 4.0, 0.0]])  # class 1 is class 0's closest rival
    >>> ids, scores, multi = targets.FinerScore(None, "torchcam", 0.5, 1).evaluate(logits)  # 5 - 0.5 * 4
    >>> ids.tolist(), scores.tolist(), multi
    ([[0]], [[3.0]], False)
    >>> pgc = targets.FinerScore(jnp.array([0]), "pgc", 1.0, (1,))
    >>> jax.jit(pgc)(logits).tolist()  # 5 - 4 (a pytree: jit traces its class ids; one compile, not one per op)
    [1.0]
  """

  classes: Any = None
  convention: str = "pgc"
  alpha: float = 1.0
  references: Any = (1, 2, 3)

  def __repr__(self) -> str:
    return f"jaxcam.targets.finer({self.classes!r}, convention={self.convention!r}, alpha={self.alpha!r})"

  @property
  def multi(self) -> bool:
    """Whether K classes per image were asked for (``(B, K)`` ids: maps gain a K axis)."""
    return self.classes is not None and np.ndim(self.classes) == 2

  def evaluate(self, logits: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
    """``(ids (B, K), contrastive scores (B, K), multi)``.

    Args:
      logits: the model's logits ``(B, N)``.

    Returns:
      ``(ids (B, K) int32, contrastive scores (B, K), multi)``; NaN scores where an id is out of range.

    Raises:
      ValueError: `logits` is not ``(B, N)``, or the ids have a different number of rows than the batch.
    """
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

  Returns:
    A `FinerScore`.

  Raises:
    ValueError: an unknown `convention`, a negative or non-finite `alpha`, "pgc" `references` that are not a
      non-empty tuple of ints >= 1, "torchcam" `references` < 1, or `classes` of rank > 2.
    TypeError: `alpha` is not a number, "torchcam" `references` is not an int, or `classes` are not ints.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam import targets
    >>> logits = jnp.array([[5.0, 4.0, 0.0]])
    >>> targets.finer(0, convention="torchcam", alpha=0.5, references=1)(logits).tolist()  # z_0 - 0.5 z_1
    [3.0]
    >>> jax.jit(targets.finer(0, references=(1,)))(logits).tolist()  # z_0 - z_1 (pgc, alpha 1)
    [1.0]
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
  """S = logits[c]: the raw class score (Grad-CAM's default).

  Args:
    classes: class ids: an int (every image), ``(B,)`` (one per image) or ``(B, K)`` (K per image: maps
      ``(B, K, H, W)``); None: each image's top class.

  Returns:
    A `ClassScore` of kind "logit".

  Raises:
    TypeError: `classes` are not ints (bools and floats included).
    ValueError: `classes` of rank > 2.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> logits = jnp.array([[1.0, 3.0, 2.0], [4.0, 0.0, 1.0]])
    >>> targets.logit(jnp.array([2, 0]))(logits).tolist()
    [2.0, 4.0]
    >>> targets.logit(jnp.array([[0, 1], [2, 0]]))(logits).tolist()  # two classes per image
    [[1.0, 3.0], [1.0, 4.0]]
  """
  return ClassScore("logit", _check_ids(classes))


def softmax(classes: Any = None) -> ClassScore:
  """S = softmax(logits)[c]: the class probability.

  Args:
    classes: class ids: an int (every image), ``(B,)`` (one per image) or ``(B, K)`` (K per image: maps
      ``(B, K, H, W)``); None: each image's top class.

  Returns:
    A `ClassScore` of kind "softmax".

  Raises:
    TypeError: `classes` are not ints (bools and floats included).
    ValueError: `classes` of rank > 2.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> targets.softmax(1)(jnp.zeros((1, 4))).tolist()
    [0.25]
  """
  return ClassScore("softmax", _check_ids(classes))


def log_softmax(classes: Any = None) -> ClassScore:
  """S = log_softmax(logits)[c]: the log-probability (exp(S) is the probability, see Grad-CAM++).

  Args:
    classes: class ids: an int (every image), ``(B,)`` (one per image) or ``(B, K)`` (K per image: maps
      ``(B, K, H, W)``); None: each image's top class.

  Returns:
    A `ClassScore` of kind "log_softmax".

  Raises:
    TypeError: `classes` are not ints (bools and floats included).
    ValueError: `classes` of rank > 2.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> score = targets.log_softmax(1)(jnp.zeros((1, 4)))
    >>> bool(jnp.allclose(score, jnp.log(0.25)))
    True
  """
  return ClassScore("log_softmax", _check_ids(classes))


def rest(classes: Any = None) -> ClassScore:
  """S = logits[c] - cross_entropy(logits, c) = z_c + log_softmax(z)_c: pytorch-grad-cam's
  ``ClassifierOutputReST`` (used with Shapley-CAM).

  Args:
    classes: class ids: an int (every image), ``(B,)`` (one per image) or ``(B, K)`` (K per image: maps
      ``(B, K, H, W)``); None: each image's top class.

  Returns:
    A `ClassScore` of kind "rest".

  Raises:
    TypeError: `classes` are not ints (bools and floats included).
    ValueError: `classes` of rank > 2.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import targets
    >>> import jax
    >>> logits = jnp.array([[2.0, 0.0, 0.0, 0.0]])
    >>> score = targets.rest(0)(logits)  # the logit minus the cross-entropy
    >>> bool(jnp.allclose(score, logits[:, 0] + jax.nn.log_softmax(logits)[:, 0]))
    True
  """
  return ClassScore("rest", _check_ids(classes))
