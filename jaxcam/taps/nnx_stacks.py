"""nnx layers inside scanned or vmapped stacks: a module whose state is stacked on axis 0 (built with ``nnx.vmap``)
and called through ``nnx.scan`` / ``nnx.vmap``; "blocks/3/norm1" is the stack's path, the iteration, the path
inside one block.

The probes that stand in for tapped submodules are `nnx.Module`\\ s, so nnx transforms inside the model carry them
(and slice their state) like any submodule. A probe in a stack owns two extra variables: ``arange(length)``, sliced
by the scan into the traced iteration index, and a record that each iteration overwrites with its value, which the
scan stacks on axis 0. Imported only when an nnx model is tapped or listed (it defines nnx classes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from flax import nnx

from jaxcam._errors import LayerNotFoundError
from jaxcam.taps.nnx import _nnx_get as _get
from jaxcam.taps.nnx import _nnx_set as _set
from jaxcam.taps.paths import format_path
from jaxcam.taps.stacked import stack_index_message


class _Step(nnx.Param):
  """``arange(length)`` on a probe in a stack: the scan slices it into the iteration index."""


class _Record(nnx.Param):
  """A probe's per-iteration value; the scan stacks it on axis 0."""


def _first_variable(node: Any) -> Any:
  for _, v in nnx.iter_graph(node):
    if isinstance(v, nnx.Variable) and hasattr(v.get_value(), "shape"):
      return v
  return None


def _leading_sizes(node: Any) -> set[tuple[int, ...]]:
  return {tuple(getattr(v, "shape", ()))[:1] for v in _array_leaves(node)}


def _array_leaves(node: Any) -> list[Any]:
  import jax

  return [v for v in jax.tree.leaves(nnx.state(node)) if hasattr(v, "shape")]


class Probe(nnx.Module):
  """Stands in for a submodule on a throwaway copy of the model: ``hook(probe, args, kwargs)`` runs instead of its
  call. `witness`, a variable of the submodule (or of its nearest ancestor with one), tells whether the call runs
  inside a transform that slices the state (`sliced`)."""

  def __init__(self, inner: Any, hook: Callable, witness: Any = None, length: int | None = None):
    self.inner = inner
    self.hook = hook
    self.witness = witness
    self.witness_shape = None if witness is None else tuple(witness.get_value().shape)
    if length is not None:
      self.step = _Step(jnp.arange(length, dtype=jnp.int32))
      self.record = _Record(jnp.zeros((length,), jnp.float32))

  def sliced(self) -> int | None:
    """The number of iterations when this call runs inside a scan / vmap that slices the state, else None."""
    if self.witness is None or self.witness_shape is None:
      return None
    now = tuple(self.witness.get_value().shape)
    full = self.witness_shape
    return full[0] if len(full) == len(now) + 1 and full[1:] == now else None

  def __call__(self, *args, **kwargs):
    return self.hook(self, args, kwargs)

  # the model's own code may read attributes of the submodule, iterate or index a container
  def __getattr__(self, name: str) -> Any:
    if name.startswith("_") or name in ("inner", "hook", "witness", "witness_shape", "step", "record"):
      raise AttributeError(name)
    return getattr(self.inner, name)

  def __iter__(self):
    return iter(self.inner)

  def __len__(self):
    return len(self.inner)

  def __getitem__(self, key):
    return self.inner[key]


class Stack(NamedTuple):
  """A layer path through a stack: the stack's path, the iteration `k`, the path inside one block, the length."""

  prefix: tuple[str, ...]
  k: int
  rest: tuple[str, ...]
  length: int


def find_stack(model: Any, parts: tuple[str, ...]) -> Stack | None:
  """The stack `parts` runs through ('blocks/3/norm1': the module `blocks`, whose state is stacked on axis 0, at
  iteration 3), or None. An index into a list or container is not a stack."""
  node = model
  for j, key in enumerate(parts):
    if key.isdigit() and isinstance(node, nnx.Module) and not hasattr(node, key) and not hasattr(node, "__getitem__"):
      sizes = _leading_sizes(node)
      if len(sizes) != 1 or () in sizes:
        raise LayerNotFoundError(
          f"Expected `layer` {format_path(parts)!r} to index a stack of layers (a module whose state is stacked on "
          f"axis 0, called through nnx.scan / nnx.vmap), but the state of {format_path(parts[:j])!r} is not stacked "
          f"(leading sizes {sorted(sizes)})."
        )
      ((length,),) = sizes
      if int(key) >= length:
        raise LayerNotFoundError(
          f"Expected the iteration in `layer` {format_path(parts)!r} to lie in 0..{length - 1}: "
          f"{format_path(parts[:j])!r} is a stack of {length} iterations, got {int(key)}."
        )
      return Stack(parts[:j], int(key), parts[j + 1 :], length)
    try:
      node = _get(node, key)
    except (AttributeError, IndexError, KeyError, TypeError):
      return None
  return None


def _witness(model: Any, path: tuple[str, ...]) -> Any:
  """A variable of the module at `path`, else of its nearest ancestor below the root that has one."""
  nodes = [model]
  for key in path:
    nodes.append(_get(nodes[-1], key))
  for node in reversed(nodes[1:]):
    v = _first_variable(node)
    if v is not None:
      return v
  return None


def _stacked_ancestors(model: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], int]]:
  """``(path, length)`` of the modules on `path` (outermost first) whose whole state is stacked on axis 0."""
  out, node = [], model
  for j, key in enumerate(path):
    node = _get(node, key)
    sizes = _leading_sizes(node)
    if len(sizes) == 1 and () not in sizes:
      out.append((path[: j + 1], next(iter(sizes))[0]))
  return out


def install(tap: Any, model: Any, run: Any) -> Callable[[], None]:
  """Put a probe at each tapped layer of `model` (a private copy); returns `collect`, which after the forward pass
  fills ``run.record`` for the layers inside stacks (their value at the chosen iteration)."""
  stacked: list[tuple[int, Probe, int]] = []
  for i, path in enumerate(tap.layers):
    s = find_stack(model, path)
    target = path if s is None else s.prefix + s.rest
    parent = model
    for key in target[:-1]:
      parent = _get(parent, key)
    inner = _get(parent, target[-1])
    if s is None:
      probe = Probe(inner, _plain_hook(tap, run, i, _stacked_ancestors(model, path)), _witness(model, target))
    else:
      probe = Probe(inner, _stack_hook(tap, run, i, s.k), length=s.length)
      stacked.append((i, probe, s.k))
    _set(parent, target[-1], probe)

  def collect() -> None:
    for i, probe, k in stacked:
      if i in run.record:  # set by the hook during the trace: read the stacked value now
        value = probe.record.get_value()
        run.record[i] = run.replacements[i] if run.replacements is not None else value[k]

  return collect


def _plain_hook(tap: Any, run: Any, i: int, ancestors: list) -> Callable:
  def hook(probe: Probe, args: tuple, kwargs: dict) -> Any:
    length = probe.sliced()
    if length is not None:
      path = tap.layers[i]
      root = next((p for p, n in ancestors if n == length), path[:1])
      raise ValueError(stack_index_message(path, root, length, "nnx.scan / nnx.vmap"))
    return tap._substitute(i, run, probe.inner, args, kwargs)

  return hook


def _stack_hook(tap: Any, run: Any, i: int, k: int) -> Callable:
  def hook(probe: Probe, args: tuple, kwargs: dict) -> Any:
    out, grid = tap._substitute_step(i, run, probe.inner, args, kwargs, probe.step.get_value(), k)
    probe.record.set_value(grid)
    run.record[i] = None  # ran; `collect` reads the value once the scan has stacked it
    return out

  return hook


def list_calls(model: Any, paths: list[tuple[str, ...]], run_model: Callable) -> list[tuple[str, Any, str, Any]]:
  """``(path, shape, type, stack)`` of every submodule call of `model` (a private copy), in call order: each
  submodule is wrapped in a recording probe and ``run_model(model)`` runs (under ``jax.eval_shape``); `stack` is
  ``(prefix, length)`` for a call inside a stack's body, found as the first call whose state the transform slices."""
  found: dict[str, tuple[str, Any, str, Any]] = {}
  order: dict[str, int] = {}
  active: list[tuple[str, int]] = []  # the stack whose body is being traced

  def recorder(name: str) -> Callable:
    def hook(probe: Probe, args: tuple, kwargs: dict) -> Any:
      order.setdefault(name, len(order))
      length = None if active else probe.sliced()
      if length is not None:
        active.append((name, length))
      try:
        y = probe.inner(*args, **kwargs)
      finally:
        stack = active[-1] if active else None
        if length is not None:
          active.pop()
      shape = tuple(y.shape) if hasattr(y, "shape") else None
      found.setdefault(name, (name, shape, type(probe.inner).__name__, stack))
      return y

    return hook

  for path in sorted(paths, key=len, reverse=True):  # children first, so parents wrap patched children
    parent = model
    for key in path[:-1]:
      parent = _get(parent, key)
    inner = _get(parent, path[-1])
    _set(parent, path[-1], Probe(inner, recorder(format_path(path)), _first_variable(inner)))
  run_model(model)
  return sorted(found.values(), key=lambda e: order[e[0]])
