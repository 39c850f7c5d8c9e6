"""Layers inside scanned or vmapped stacks (``nn.scan`` / ``nn.vmap`` over parameters stacked on axis 0), spelled
"blocks/3/norm1": the stack's path, the iteration, the path inside one block.

A scan traces its body once for all iterations, so the iteration is a traced value: the tap adds
``arange(length)`` to the stack's parameters (the scan slices it like the weights), substitutes the layer where it
equals the chosen iteration (`Tap._substitute_step`) and writes every iteration's value into the scanned
collection, which leaves the loop stacked on axis 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcam._errors import LayerNotFoundError
from jaxcam.taps.base import _COLLECTION, _Run
from jaxcam.taps.paths import _linen_module_path, format_path, linen_aliases

_STEP = "jaxcam_step"


class _Stack(NamedTuple):
  """A tapped layer inside a scanned / vmapped stack: `prefix` is the stack's module path (linen names), `k` the
  iteration, `rest` the path inside one block (as given), `length` the number of iterations."""

  prefix: tuple[str, ...]
  k: int
  rest: tuple[str, ...]
  length: int


def _find_stack(params: Any, parts: tuple[str, ...]) -> _Stack | None:
  """The stack `parts` runs through ('blocks/3/norm1': the module 'blocks' whose parameters are stacked on axis 0,
  iteration 3), or None for a path without an iteration index. Reads only the parameter tree (no trace)."""
  node, keys, j = params, list[str](), 0
  while j < len(parts) and hasattr(node, "keys"):
    p = parts[j]
    if p in node:
      keys, node, j = keys + [p], node[p], j + 1
    elif j + 1 < len(parts) and f"{p}_{parts[j + 1]}" in node:
      keys, node, j = keys + [f"{p}_{parts[j + 1]}"], node[f"{p}_{parts[j + 1]}"], j + 2
    elif p.isdigit() and keys:
      lengths: set[tuple[int, ...]] = {tuple(getattr(leaf, "shape", ()))[:1] for leaf in jax.tree.leaves(node)}
      if len(lengths) != 1 or () in lengths:
        raise LayerNotFoundError(
          f"Expected `layer` {format_path(parts)!r} to index a stack of layers (nn.scan / nn.vmap over parameters "
          f"stacked on axis 0), but the parameters of {format_path(keys)!r} are not stacked (leading sizes "
          f"{sorted(lengths)}). Check the path: `jaxcam.list_layers(module, variables, x)` lists them."
        )
      length = lengths.pop()[0]
      if int(p) >= length:
        raise LayerNotFoundError(
          f"Expected the iteration in `layer` {format_path(parts)!r} to lie in 0..{length - 1}: {format_path(keys)!r} "
          f"is a stack of {length} iterations, got {int(p)}."
        )
      return _Stack(tuple(keys), int(p), parts[j + 1 :], length)
    else:
      return None
  return None


def _with_steps(variables: Any, stacks: Sequence[_Stack | None]) -> dict:
  """`variables` with ``arange(length)`` added to each stack's parameters: sliced by the scan, it is the iteration."""

  def put(tree, keys, value):
    node = dict(tree.items())
    node[keys[0]] = put(tree[keys[0]], keys[1:], value) if len(keys) > 1 else value
    return node

  params = variables["params"]
  for s in {s.prefix: s for s in stacks if s is not None}.values():
    params = put(params, s.prefix + (_STEP,), jnp.arange(s.length, dtype=jnp.int32))
  return {**dict(variables.items()), "params": params}


def _sliced_length(module: Any, params: Any, path: tuple[str, ...]) -> int | None:
  """The number of iterations when `module` (bound, at `path`) runs inside a scan or vmap that slices its
  parameters (one fewer axis than in the tap's `params`), else None."""
  outer, inner = params, module.variables.get("params", {})
  for key in path:
    if not hasattr(outer, "keys") or key not in outer:
      return None
    outer = outer[key]
  while hasattr(outer, "keys"):
    shared = next((k for k in outer if k in inner), None)
    if shared is None:
      return None
    outer, inner = outer[shared], inner[shared]
  a, b = jax.tree.leaves(outer), jax.tree.leaves(inner)
  if not a or not b:
    return None
  sa, sb = tuple(a[0].shape), tuple(b[0].shape)
  return sa[0] if len(sa) == len(sb) + 1 and sa[1:] == sb else None


def stack_index_message(path: tuple[str, ...], outer: tuple[str, ...], length: int, how: str) -> str:
  """The error for a `layer` inside a stack of `length` iterations at `outer`, given without its iteration."""
  inner = path[len(outer) :] if path[: len(outer)] == outer else path[-1:]
  example = format_path(outer + (str(length - 1),) + inner)
  where = (
    f"{format_path(path)!r} is a stack of {length} iterations ({how})"
    if path == outer
    else f"{format_path(path)!r} runs inside {format_path(outer)!r}, a stack of {length} iterations ({how})"
  )
  return (
    f"Expected `layer` to give the iteration of a layer inside a scanned stack: {where}. Add the iteration index "
    f"after the stack's path, e.g. {example!r} (0 <= index <= {length - 1}); `jaxcam.list_layers` lists them."
  )


class _Calls:
  """The interceptor of one `LinenTap._run`: substitutes the tapped layers, those inside stacks at their iteration
  only (the stack's sliced ``jaxcam_step`` parameter is the traced iteration index)."""

  def __init__(self, tap: Any, run: _Run, stacks: tuple[_Stack | None, ...]):
    self.tap, self.run, self.stacks = tap, run, stacks
    self.seen: list[str] = []
    self.steps: dict[tuple[str, ...], Any] = {}  # stack prefix -> its traced iteration (current body trace)
    self.active: list[tuple[tuple[str, ...], Any]] = []  # the module calls in progress, outermost first
    self.ran: set[int] = set()

  def interceptor(self, next_fun, args, kwargs, context):
    if context.method_name != "__call__" or not context.module.path:
      return next_fun(*args, **kwargs)
    path = tuple(context.module.path)
    self.active.append((path, context.module))
    try:
      return self._call(path, next_fun, args, kwargs, context.module)
    finally:
      self.active.pop()

  def _call(self, path, next_fun, args, kwargs, module):
    tap, joined = self.tap, "/".join(path)
    if any(s is not None and s.prefix == path for s in self.stacks):
      self.steps[path] = self._step(path, module)
    hits = [i for i, s in enumerate(self.stacks) if s is not None and joined in linen_aliases(s.prefix + s.rest)]
    if hits:
      return self._stacked(hits, next_fun, args, kwargs, module)
    i = tap.layer_index(path)
    if i is None or self.stacks[i] is not None:
      self.seen.append(self._spelled(path))
      return next_fun(*args, **kwargs)
    self._check_not_in_stack(i)
    # sow, not a closure: the value must survive lifted transforms (nn.remat) around the layer
    record = lambda _, grid: module.sow(_COLLECTION, "a", grid)
    return tap._substitute(i, self.run, next_fun, args, kwargs, record)

  def _step(self, path, module):
    step = module.get_variable("params", _STEP)
    if getattr(step, "ndim", None) != 0:
      given = next(format_path(l) for l, s in zip(self.tap.layers, self.stacks) if s is not None and s.prefix == path)
      raise ValueError(
        f"Expected {format_path(path)!r} in `layer={given!r}` to be a stack of layers whose call is scanned or "
        "vmapped over its parameters (nn.scan / nn.vmap with variable_axes={'params': 0}), but its parameters are "
        "not sliced per iteration. Tap a module that runs once instead."
      )
    return step

  def _stacked(self, hits, next_fun, args, kwargs, module):
    call = next_fun
    for i in hits:
      s = self.stacks[i]
      if s.prefix not in self.steps:
        given = format_path(self.tap.layers[i])
        raise ValueError(f"Layer {given!r} ran outside the scan of {format_path(s.prefix)!r}.")
      call = self._step_call(i, call, self.steps[s.prefix], s.k, module)
    return call(*args, **kwargs)

  def _step_call(self, i, call, step, k, module):
    def wrapped(*args, **kwargs):
      out, grid = self.tap._substitute_step(i, self.run, call, args, kwargs, step, k)
      self.ran.add(i)
      if self.run.replacements is None:
        module.put_variable("params", f"jaxcam_a{i}", grid)
      return out

    return wrapped

  def _check_not_in_stack(self, i):
    path = self.tap.layers[i]
    for outer, module in self.active:
      length = _sliced_length(module, self.tap.variables["params"], outer)
      if length is not None:
        raise ValueError(stack_index_message(path, outer, length, "nn.scan / nn.vmap"))

  def _spelled(self, path):
    for s in self.stacks:
      if s is not None and path[: len(s.prefix)] == s.prefix:
        return format_path(s.prefix + (str(s.k),) + path[len(s.prefix) :])
    return format_path(path)

  def collect(self, state):
    """After the forward pass: each stacked layer's value at its iteration, read from the stacked variables."""
    for i, s in enumerate(self.stacks):
      if s is None or i not in self.ran:
        continue
      if self.run.replacements is not None:
        self.run.record[i] = self.run.replacements[i]
        continue
      node = state["params"]
      for key in _linen_module_path(node, s.prefix + s.rest):
        node = node[key]
      self.run.record[i] = node[f"jaxcam_a{i}"][s.k]


def expand_stacks(entries: Sequence[tuple]) -> list:
  """`LayerInfo`\\ s from ``(path, shape, type, stack[, calls])`` in call order; `stack` is ``(prefix, length)``
  for a call inside a stack's body (the body's own call has ``path == prefix``), else None. A stack lists as itself
  (``length`` calls: not tappable), then each iteration "prefix/k" and its layers "prefix/k/...", k < length."""
  from jaxcam.taps.base import LayerInfo, suggest_layout

  plain: list[Any] = []
  groups: dict[str, list[tuple[str, Any, str]]] = {}
  lengths: dict[str, int] = {}
  for path, shape, kind, stack, *calls in entries:
    if stack is None:
      plain.append(LayerInfo(path, shape, kind, suggest_layout(shape), *calls))
      continue
    prefix, length = stack
    if prefix not in groups:
      groups[prefix], lengths[prefix] = [], length
      plain.append(prefix)
    groups[prefix].append((path, shape, kind))
  out: list[Any] = []
  for item in plain:
    if not isinstance(item, str):
      out.append(item)
      continue
    body = groups[item]
    kind = next((t for p, _, t in body if p == item), "stack")
    out.append(LayerInfo(item, None, kind, "", lengths[item]))
    for k in range(lengths[item]):
      for path, shape, t in body:
        name = item + f"/{k}" + path[len(item) :]
        out.append(LayerInfo(name, shape, t, suggest_layout(shape)))
  return out
