"""A jaxpr flattened into one list of primitive applications (call-like sub-jaxprs inlined), with integer value ids.

Relevance rules look at patterns that cross call boundaries (``jax.nn.gelu`` and ``jax.nn.softmax`` are inlined jits,
``jax.nn.relu`` is a ``custom_jvp``): inlining every ``jit``/``pjit``/``closed_call``/``remat`` sub-jaxpr and the primal
jaxpr of every ``custom_jvp_call``/``custom_vjp_call`` gives one graph on which those patterns are plain producer /
consumer links. Control flow (``scan``, ``while``, ``cond``) stays one node (a primitive without a rule).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxcam._jaxpr import CALL_PRIMITIVES, is_literal

__all__ = ["Node", "Graph", "flatten"]

_INLINED = CALL_PRIMITIVES | {"custom_vjp_call_jaxpr", "core_call"}


@dataclasses.dataclass(frozen=True)
class Node:
  """One primitive application: ``outputs = primitive.bind(*inputs, **params)`` (ids into the graph's values)."""

  index: int
  primitive: Any
  params: dict
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  path: str  # the name stack ("Model/block0/attn"), "" when the tracer recorded none

  @property
  def name(self) -> str:
    return self.primitive.name


@dataclasses.dataclass
class Graph:
  """Values are ids ``0 .. n_values-1``. `avals[i]` is value i's abstract value; `consts` maps const/literal ids to
  their values; `inputs` / `outputs` are the flat function's arguments and results."""

  nodes: list[Node]
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  consts: dict[int, Any]
  avals: list[Any]

  def producers(self) -> dict[int, int]:
    """value id -> index of the node computing it."""
    return {o: n.index for n in self.nodes for o in n.outputs}

  def consumers(self) -> dict[int, list[int]]:
    """value id -> indices of the nodes reading it (each node once, in order)."""
    out: dict[int, list[int]] = {}
    for n in self.nodes:
      for i in dict.fromkeys(n.inputs):
        out.setdefault(i, []).append(n.index)
    return out


def _sub_jaxpr(eqn) -> tuple[Any, tuple] | None:
  """``(jaxpr, consts)`` that a call-like equation runs (the primal jaxpr of a custom_jvp/vjp), or None."""
  if eqn.primitive.name not in _INLINED:
    return None
  sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr", eqn.params.get("fun_jaxpr")))
  if sub is None:
    return None
  if hasattr(sub, "consts"):
    return sub.jaxpr, tuple(sub.consts)
  return sub, ()


def _join(outer: str, inner: str) -> str:
  return "/".join(p for p in (outer, inner) if p)


class _Builder:
  def __init__(self):
    self.nodes: list[Node] = []
    self.consts: dict[int, Any] = {}
    self.avals: list[Any] = []

  def new(self, aval) -> int:
    self.avals.append(aval)
    return len(self.avals) - 1

  def const(self, value, aval) -> int:
    i = self.new(aval)
    self.consts[i] = value
    return i

  def read(self, env: dict, v) -> int:
    if is_literal(v):
      return self.const(v.val, v.aval)
    return env[v]

  def walk(self, jaxpr, consts: tuple, args: list[int], path: str) -> list[int]:
    """Add `jaxpr`'s equations with its invars bound to value ids `args`; returns its outvars' ids."""
    env: dict = {}
    for v, c in zip(jaxpr.constvars, consts):
      env[v] = self.const(c, v.aval)
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      ins = [self.read(env, v) for v in eqn.invars]
      where = _join(path, str(eqn.source_info.name_stack))
      sub = _sub_jaxpr(eqn)
      if sub is not None:  # a custom_jvp/vjp call passes its consts as leading arguments, as its jaxpr takes them
        outs = self.walk(sub[0], sub[1], ins, where)
      else:
        outs = [self.new(v.aval) for v in eqn.outvars]
        self.nodes.append(Node(len(self.nodes), eqn.primitive, dict(eqn.params), tuple(ins), tuple(outs), where))
      for v, o in zip(eqn.outvars, outs):
        if type(v).__name__ != "DropVar":
          env[v] = o
    return [self.read(env, v) for v in jaxpr.outvars]


def flatten(closed) -> Graph:
  """The flat graph of a `jax.core.ClosedJaxpr` (from `jax.make_jaxpr`)."""
  b = _Builder()
  inputs = [b.new(v.aval) for v in closed.jaxpr.invars]
  outputs = b.walk(closed.jaxpr, tuple(closed.consts), inputs, "")
  return Graph(b.nodes, tuple(inputs), tuple(outputs), b.consts, b.avals)
