"""Which rule each node of a flat graph gets: its kind (from the primitive and which operands depend on the input),
the composite's rule for it, the fused bias of LRP-ε, the softmax pattern and the element-wise chains (one
`Identity` function each)."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcam.lrp import rules as R
from jaxcam.lrp._graph import Graph, Node

__all__ = ["Step", "plan"]

_PASS_SHAPE = frozenset({"broadcast_in_dim", "reshape", "expand_dims", "squeeze", "convert_element_type"})
_CONTINUES = R.AFFINE | {"select_n", "clamp"}  # element-wise steps that continue a chain they are fed by


@dataclasses.dataclass
class Step:
  """What happens around one node. rule: None for a node no relevant value reaches. eps: LRP-ε scaling on its
  outputs (0: none). share: the gradient's share (Uniform). stop: Constant. passthrough: ``(value, root)`` pairs
  of an element-wise chain's outputs, each wired to the chain's input by the identity rule after this node."""

  kind: str
  rule: R.Rule | None = None
  eps: float = 0.0
  share: float = 1.0
  stop: bool = False
  passthrough: list = dataclasses.field(default_factory=list)
  member: int | None = None  # the root of the element-wise chain this node belongs to


def _inexact(aval) -> bool:
  return np.issubdtype(np.dtype(getattr(aval, "dtype", np.int32)), np.inexact)


def _softmax_nodes(graph: Graph, producers: dict[int, int]) -> set[int]:
  """``{exp, div}`` node indices of every ``e / broadcast(sum(e))`` with ``e = exp(u)``."""
  found: set[int] = set()
  for node in graph.nodes:
    if node.name != "div" or len(node.inputs) != 2:
      continue
    num, den = node.inputs
    p_num = producers.get(num)
    if p_num is None or graph.nodes[p_num].name != "exp":
      continue
    p = producers.get(den)
    while p is not None and graph.nodes[p].name in _PASS_SHAPE:
      p = producers.get(graph.nodes[p].inputs[0])
    if p is not None and graph.nodes[p].name == "reduce_sum" and graph.nodes[p].inputs[0] == num:
      found.update((p_num, node.index))
  return found


def _elementwise(graph: Graph, node: Node, rel: list[int]) -> bool:
  """All its input-dependent operands have its output's shape (element-wise in them)."""
  shape = tuple(graph.avals[node.outputs[0]].shape)
  return len(node.outputs) == 1 and all(tuple(graph.avals[i].shape) == shape for i in rel)


def _kind(graph: Graph, node: Node, rel: list[int], roots: set[int], softmax: set[int]) -> str:
  """The node's kind (`jaxcam.lrp.rules.KINDS`) given its input-dependent operands `rel` and their chain roots."""
  name = node.name
  if node.index in softmax:
    return "softmax"
  if name in R.CONSTANT:
    return "constant"
  if name in ("dot_general", "conv_general_dilated"):
    return "linear" if len(rel) == 1 else "bilinear"
  if name in R.NORM:
    return "norm"
  elementwise = _elementwise(graph, node, rel)
  if elementwise and name == "mul":
    return "structural" if len(rel) == 1 else ("elementwise" if len(roots) == 1 else "bilinear")
  if elementwise and name == "div":
    if node.inputs[1] not in rel:
      return "structural"
    return "elementwise" if len(roots) == 1 else "unknown"
  if elementwise and name in ("max", "min"):
    return "elementwise" if len(roots) == 1 else "structural"
  if elementwise and name in R.NONLINEAR:
    return "elementwise" if len(roots) == 1 else "unknown"
  if name in R.AFFINE or name in R.STRUCTURAL:
    return "structural"
  return "unknown"


def _step(graph: Graph, node: Node, rel: list[int], chain: dict[int, int], softmax: set[int], composite) -> Step:
  roots = {chain.get(i, i) for i in rel}
  kind = _kind(graph, node, rel, roots, softmax)
  rule, _ = composite.resolve(node.name, kind, node.path)
  step = Step(kind, rule)
  if kind == "elementwise" or (
    node.name in _CONTINUES and len(roots) == 1 and any(i in chain for i in rel) and _elementwise(graph, node, rel)
  ):
    step.member = roots.pop()  # part of an element-wise function of one value; its rule is set at the chain's output
  elif isinstance(rule, R.Identity):
    raise ValueError(
      f"The Identity rule passes relevance through an element-wise function of one input, but primitive "
      f"{node.name!r} at {node.path or 'the top level'!r} ({kind}) is not one. Give it another rule in the composite."
    )
  else:
    _apply(step, rule, len(rel))
  return step


def _apply(step: Step, rule: R.Rule, n_relevant: int) -> None:
  if isinstance(rule, R.Epsilon):
    step.eps = float(rule.eps)
  elif isinstance(rule, R.Uniform):
    step.share = 1.0 / n_relevant
  elif isinstance(rule, R.Constant):
    step.stop = True


def _chain_outputs(graph: Graph, steps: list[Step], consumers) -> None:
  """An element-wise chain is one function, with the rule of the node computing each of its outputs (a value read
  outside the chain): Identity wires the output to the chain's input; other rules apply there as to any node, and
  the gradient flows through the chain's inside."""
  outputs = set(graph.outputs)
  for node, step in zip(graph.nodes, steps):
    if step.member is None:
      continue
    for o in node.outputs:
      if o in outputs or any(steps[k].member is None for k in consumers.get(o, [])):
        if isinstance(step.rule, R.Identity):
          step.passthrough.append((o, step.member))
        elif step.rule is not None:
          _apply(step, step.rule, 1)


_THROUGH = frozenset({"transpose", "reshape", "squeeze", "expand_dims", "convert_element_type"})


def _fuse_bias(graph: Graph, node: Node, rel: list[int], steps: list[Step], producers, consumers) -> None:
  """LRP-ε's denominator includes the bias: an ``add`` of a constant that alone reads a linear layer's output (maybe
  through a transpose or reshape, as a vmapped Equinox Linear gives) takes over the layer's ε (its output is
  ``z = W x + b``)."""
  if node.name != "add" or len(rel) != 1 or steps[node.index].member is not None or steps[node.index].eps:
    return
  if tuple(graph.avals[node.outputs[0]].shape) != tuple(graph.avals[rel[0]].shape):
    return
  reader, v = node.index, rel[0]
  while True:
    p = producers.get(v)
    if p is None or consumers.get(v) != [reader]:
      return
    if steps[p].kind == "linear":
      break
    if graph.nodes[p].name not in _THROUGH or steps[p].eps or steps[p].member is not None:
      return
    reader, v = p, graph.nodes[p].inputs[0]
  if steps[p].eps:
    steps[node.index].eps, steps[p].eps = steps[p].eps, 0.0


def plan(graph: Graph, composite: R.Composite) -> tuple[list[Step], list[str]]:
  """One `Step` per node, and the sorted names of the primitives that fell back to Gradient without a rule."""
  producers, consumers = graph.producers(), graph.consumers()
  softmax = _softmax_nodes(graph, producers)
  relevant = {i for i in graph.inputs if _inexact(graph.avals[i])}
  chain: dict[int, int] = {}  # value -> root of the element-wise chain computing it
  steps: list[Step] = []
  unknown: set[str] = set()
  for node in graph.nodes:
    rel = [i for i in dict.fromkeys(node.inputs) if i in relevant]
    if not rel:
      steps.append(Step("inert"))
      continue
    step = _step(graph, node, rel, chain, softmax, composite)
    steps.append(step)
    if step.kind == "unknown" and not composite.resolve(node.name, "unknown", node.path)[1]:
      unknown.add(node.name)
    _fuse_bias(graph, node, rel, steps, producers, consumers)
    if step.member is not None:
      chain.update((o, step.member) for o in node.outputs)
    if not step.stop:  # (a chain's Constant output still counts as relevant: it is decided after the sweep)
      relevant.update(o for o in node.outputs if _inexact(graph.avals[o]))
  _chain_outputs(graph, steps, consumers)
  return steps, sorted(unknown)
