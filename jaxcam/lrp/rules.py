"""Relevance rules, the primitives' kinds and the composite that maps kinds, primitives and layer paths to rules.

Every rule is a *modified gradient*: relevance at a value ``v`` is ``R_v = v * g_v`` where ``g`` flows backwards
like a cotangent. A rule says how ``g`` crosses one primitive:

- `Gradient`: the primitive's own VJP (gradient x input). Exact relevance conservation for linear maps without a
  constant term (reshapes, sums, concatenations, gathers, max pooling's selection).
- `Epsilon`: LRP-ε for a linear map ``z = W x + b``: ``g_x = W^T (g_z z / (z + eps sign z))``, so that
  ``R_x = x * W^T (R_z / (z + eps sign z))``; the bias of a ``dot_general`` or convolution is the constant
  operand of the ``add`` that alone reads its output, and ``z`` includes it (as zennit's ``Epsilon``).
- `Uniform`: AttnLRP's uniform rule for a bilinear product (``q k^T``, ``P v``, gates): each of the n operands gets
  ``1/n`` of the gradient x input, ``R_a = R_b = R_z / 2`` (exact for a product of two).
- `Identity`: relevance passes an element-wise function ``y = f(x)`` unchanged, ``R_x = R_y`` (``g_x = g_y y / x``,
  0 where ``x = 0``); a chain of element-wise primitives of one input (GELU's ``x * 0.5 (1 + tanh(...))``,
  SiLU's ``x * logistic(x)``) is one function.
- `Constant`: the primitive's output is treated as a constant: no relevance reaches its inputs (AttnLRP's
  normalisation: a LayerNorm's or RMSNorm's ``rsqrt(var + eps)``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any

__all__ = [
  "Rule",
  "Gradient",
  "Epsilon",
  "Uniform",
  "Identity",
  "Constant",
  "Composite",
  "KINDS",
  "as_rule",
  "attnlrp",
]


@dataclasses.dataclass(frozen=True)
class Gradient:
  """The primitive's own VJP (gradient x input).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import Composite, Gradient, relevance
    >>> x = jnp.array([1.0, 2.0])
    >>> relevance(lambda v: v ** 2, x, composite=Composite(rules={"integer_pow": Gradient()}))[0].tolist()  # x * 2x
    [2.0, 8.0]
  """


@dataclasses.dataclass(frozen=True)
class Epsilon:
  """LRP-ε: the gradient scaled by ``z / (z + eps sign z)`` at the layer's output ``z`` (bias included).

  Args:
    eps: the stabiliser ε >= 0; it absorbs relevance (more for larger ε); 0: gradient x input.

  Raises:
    ValueError: `eps` is not a number >= 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import Composite, Epsilon, relevance
    >>> w = jnp.ones((2, 1))  # z = x1 + x2 = 2 for x = (1, 1)
    >>> comp = Composite(rules={"linear": Epsilon(2.0)})  # scale z / (z + eps) = 1/2
    >>> relevance(lambda v: v @ w, jnp.ones(2), composite=comp)[0].tolist()
    [0.5, 0.5]
  """

  eps: float = 1e-6

  def __post_init__(self):
    if not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool) or self.eps < 0:
      raise ValueError(f"Expected Epsilon `eps` to be a number >= 0, got {self.eps!r}.")


@dataclasses.dataclass(frozen=True)
class Uniform:
  """AttnLRP's uniform rule: each relevant operand of a product gets an equal share (gradient / n).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import Composite, Uniform, relevance
    >>> comp = Composite(rules={"bilinear": Uniform()})  # the default already
    >>> ra, rb = relevance(lambda a, b: a * b, jnp.float32(2.0), jnp.float32(3.0), composite=comp)
    >>> float(ra), float(rb)  # half of a * b = 6 each
    (3.0, 3.0)
  """


@dataclasses.dataclass(frozen=True)
class Identity:
  """Relevance passes an element-wise function unchanged.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import Composite, Identity, relevance
    >>> x = jnp.array([1.0, 2.0])
    >>> relevance(lambda v: v ** 2, x, composite=Composite(rules={"integer_pow": Identity()}))[0].tolist()  # R_x = y
    [1.0, 4.0]
  """


@dataclasses.dataclass(frozen=True)
class Constant:
  """The output is a constant: no relevance reaches the inputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import Composite, Constant, relevance
    >>> x = jnp.array([1.0, 2.0])
    >>> relevance(lambda v: v ** 2, x, composite=Composite(rules={"integer_pow": Constant()}))[0].tolist()
    [0.0, 0.0]
  """


Rule = Gradient | Epsilon | Uniform | Identity | Constant
_BY_NAME: dict[str, Rule] = {
  "gradient": Gradient(),
  "epsilon": Epsilon(),
  "uniform": Uniform(),
  "identity": Identity(),
  "constant": Constant(),
}

KINDS = {
  "linear": "a dot_general or convolution with one input-dependent operand (default: Epsilon)",
  "bilinear": "a dot_general or mul of two input-dependent operands (default: Uniform)",
  "softmax": "exp(u) / sum(exp(u)) (default: Gradient, AttnLRP's softmax rule)",
  "norm": "rsqrt / sqrt of an input-dependent value, a normalisation's divisor (default: Constant)",
  "elementwise": "a non-linear element-wise primitive: relu, gelu, tanh, exp, square... (default: Identity)",
  "structural": "linear without weights or a selection: add, reshape, sum, gather, max pooling (default: Gradient)",
  "unknown": "a primitive without a rule (default: Gradient, the fallback, reported once per trace)",
}

# element-wise primitives of one input that are not affine (identity rule)
NONLINEAR = frozenset(
  """exp exp2 log log1p expm1 tanh logistic erf erfc erf_inv sin cos tan asin acos atan sinh cosh asinh acosh atanh
  abs sign integer_pow square pow cbrt max min clamp floor ceil round lgamma digamma is_finite nextafter""".split()
)
NORM = frozenset({"rsqrt", "sqrt"})
# element-wise and affine in each operand (mul/div: in the one input-dependent operand)
AFFINE = frozenset("add sub neg mul div convert_element_type copy copy_p reduce_precision real imag add_any".split())
STRUCTURAL = frozenset(
  """reshape squeeze expand_dims broadcast_in_dim transpose rev slice dynamic_slice dynamic_update_slice gather
  scatter-add scatter_add concatenate pad select_n reduce_sum reduce_max reduce_min argmax argmin reduce_window_sum
  reduce_window_max reduce_window_min reduce_window cumsum cumlogsumexp cummax cummin sort split optimization_barrier
  psum sharding_constraint mesh_cast pvary""".split()
)
BILINEAR_CAPABLE = frozenset({"dot_general", "conv_general_dilated", "mul"})
CONSTANT = frozenset({"stop_gradient"})


def as_rule(rule: Any, *, where: str = "rule") -> Rule:
  """A rule from a rule object or its name (``"epsilon"``, ``"gradient"``, ...).

  Args:
    rule: a rule object, or a rule's name in any case (``"epsilon"`` is ``Epsilon()``, with its default ε).
    where: what the rule was given as, for the error message.

  Returns:
    The rule object.

  Raises:
    ValueError: neither a rule nor a known name.

  Examples:
    >>> from jaxcam.lrp.rules import as_rule
    >>> as_rule("Uniform"), as_rule("epsilon")
    (Uniform(), Epsilon(eps=1e-06))
  """
  if isinstance(rule, (Gradient, Epsilon, Uniform, Identity, Constant)):
    return rule
  if isinstance(rule, str) and rule.lower() in _BY_NAME:
    return _BY_NAME[rule.lower()]
  raise ValueError(
    f"Expected {where} to be a jaxcam.lrp rule (Epsilon(eps), Gradient(), Uniform(), Identity(), Constant()) or "
    f"one of {sorted(_BY_NAME)}, got {rule!r}."
  )


def _freeze(mapping: Any, where: str, *, nested: bool) -> tuple:
  if mapping is None:
    return ()
  items = mapping.items() if isinstance(mapping, Mapping) else mapping
  out: list[tuple[str, Any]] = []
  for key, rule in items:
    if not isinstance(key, str) or not key:
      raise TypeError(f"Expected the keys of {where} to be non-empty strings, got {key!r}.")
    if nested and isinstance(rule, (Mapping, tuple)) and not isinstance(rule, str):
      out.append((key, _freeze(rule, f"{where}[{key!r}]", nested=False)))
    else:
      out.append((key, as_rule(rule, where=f"{where}[{key!r}]")))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Composite:
  """Which rule each primitive gets (hashable: a row option). Lookup for one primitive application, first hit wins:

  1. `layers`: the longest path pattern that matches its name stack (linen / nnx / Keras module paths such as
     ``"block0/MultiHeadDotProductAttention_0"``; components are matched with `fnmatch` as a contiguous run, so
     ``"block*/Dense_0"`` matches every block's ``Dense_0``). Its value is a mapping ``{primitive name or kind: rule}``
     or one rule for the layer, as zennit's layer maps: `Epsilon` for its linear maps (with their bias), `Uniform`
     for its bilinear products, `Identity` for its element-wise functions, `Gradient` or `Constant` for everything
     under that path.
  2. `rules`: ``{primitive name or kind: rule}`` (``"dot_general"``, ``"tanh"``; kinds in `KINDS`: ``"linear"``,
     ``"bilinear"``, ``"softmax"``, ``"norm"``, ``"elementwise"``, ``"structural"``, ``"unknown"``); a primitive's name
     beats its kind.
  3. The defaults (AttnLRP): linear Epsilon(eps), bilinear Uniform, softmax Gradient, norm Constant, elementwise
     Identity, structural Gradient, unknown Gradient (reported once per trace as a warning).

  Args:
    rules: ``{primitive name or kind: rule}`` (a mapping or ``(key, rule)`` pairs); a rule is a rule object or its
      name (``"epsilon"``, ``"gradient"``, ...). Stored as a tuple of pairs.
    layers: ``{layer path pattern: rule or {primitive name or kind: rule}}``; stored as a tuple of pairs.
    eps: ε of the default `Epsilon` rule on linear maps (>= 0).

  Raises:
    TypeError: a key of `rules` or `layers` is not a non-empty string.
    ValueError: an unknown rule, or `eps` < 0.

  Examples:
    >>> from jaxcam.lrp import Composite, Epsilon
    >>> comp = Composite(rules={"tanh": "gradient"}, layers={"block*/Dense_0": Epsilon(0.5)})
    >>> comp.rules  # names became rule objects, the mapping a hashable tuple
    (('tanh', Gradient()),)
    >>> comp.resolve("dot_general", "linear", "net/block1/Dense_0")  # the layer pattern wins
    (Epsilon(eps=0.5), True)
    >>> comp.resolve("exp", "elementwise", "net/head")  # nothing set: AttnLRP's default
    (Identity(), False)
  """

  rules: Any = ()
  layers: Any = ()
  eps: float = 1e-6

  def __post_init__(self):
    object.__setattr__(self, "rules", _freeze(self.rules, "`rules`", nested=False))
    object.__setattr__(self, "layers", _freeze(self.layers, "`layers`", nested=True))
    Epsilon(self.eps)  # validates

  def resolve(self, name: str, kind: str, path: str) -> tuple[Rule, bool]:
    """``(rule, explicit)`` for a primitive `name` of `kind` under name stack `path`; `explicit`: set by the user.

    Args:
      name: the primitive's name (``"dot_general"``, ``"tanh"``, ...).
      kind: its kind, one of `KINDS` (or ``"constant"``).
      path: the name stack it runs under, ``"/"``-separated module path (``""``: none).

    Returns:
      ``(rule, explicit)``: the rule the lookup order above gives, and whether `layers` or `rules` set it (False:
        the default of `kind`).

    Examples:
      >>> from jaxcam.lrp import Composite
      >>> Composite(rules={"tanh": "gradient"}).resolve("tanh", "elementwise", "")
      (Gradient(), True)
    """
    parts = [p for p in path.split("/") if p]
    best = None
    for pattern, value in self.layers:
      pat = [p for p in pattern.split("/") if p]
      if _matches(pat, parts) and (best is None or len(pat) > best[0]):
        best = (len(pat), value)
    if best is not None:
      value = best[1]
      if not isinstance(value, tuple):
        if kind in _SCOPE.get(type(value), (kind,)):
          return value, True
      else:
        hit = _lookup(value, name, kind)
        if hit is not None:
          return hit, True
    hit = _lookup(self.rules, name, kind)
    if hit is not None:
      return hit, True
    return self.default(kind), False

  def default(self, kind: str) -> Rule:
    """The rule a primitive of `kind` gets when neither `layers` nor `rules` names it (AttnLRP's defaults).

    Args:
      kind: one of `KINDS` (or ``"constant"``, a ``stop_gradient``); anything else gets `Gradient`.

    Returns:
      ``Epsilon(self.eps)`` for "linear", `Uniform` for "bilinear", `Constant` for "norm" and "constant",
        `Identity` for "elementwise", `Gradient` otherwise ("softmax", "structural", "unknown").

    Examples:
      >>> from jaxcam.lrp import Composite
      >>> comp = Composite(eps=0.1)
      >>> comp.default("linear"), comp.default("norm"), comp.default("softmax")
      (Epsilon(eps=0.1), Constant(), Gradient())
    """
    if kind == "linear":
      return Epsilon(self.eps)
    table: dict[str, Rule] = {
      "bilinear": Uniform(),
      "norm": Constant(),
      "elementwise": Identity(),
      "constant": Constant(),
    }
    return table.get(kind, Gradient())


_SCOPE = {Epsilon: ("linear",), Uniform: ("bilinear",), Identity: ("elementwise",)}  # a layer's bare rule applies to


def _lookup(items: tuple, name: str, kind: str) -> Any:
  table = dict(items)
  return table.get(name, table.get(kind))


def _matches(pattern: list[str], parts: list[str]) -> bool:
  n = len(pattern)
  if n == 0:
    return False
  return any(all(fnmatch.fnmatchcase(parts[i + j], pattern[j]) for j in range(n)) for i in range(len(parts) - n + 1))


def attnlrp(eps: float = 1e-6) -> Composite:
  """The default composite: AttnLRP's rules (Achtibat et al., arXiv 2402.05602) with LRP-ε on linear layers.

  Args:
    eps: ε of the `Epsilon` rule on linear maps (>= 0).

  Returns:
    ``Composite(eps=eps)``: no per-primitive or per-layer rules, every kind its default (see `Composite`).

  Raises:
    ValueError: `eps` < 0.

  Examples:
    >>> from jaxcam.lrp import attnlrp
    >>> comp = attnlrp(0.1)
    >>> comp.default("linear"), comp.default("bilinear")
    (Epsilon(eps=0.1), Uniform())
  """
  return Composite(eps=eps)
