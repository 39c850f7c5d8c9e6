"""Finding layers: `list_layers` (every path with its shape, call count and the layout a tap on it would need) and
`find_layer` (the layer `jaxcam.explain_model` explains when none is given)."""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import layouts
from jaxcam import targets as targets_lib
from jaxcam._errors import abbreviate
from jaxcam.taps.base import (
  LayerInfo,
  suggest_layout,
)
from jaxcam.taps.keras import is_keras_model, list_keras_layers
from jaxcam.taps.linen import captured_calls
from jaxcam.taps.nnx import _nnx_get, _nnx_paths, _nnx_set
from jaxcam.taps.paths import format_path


def _shape_of(y) -> tuple[int, ...] | None:
  return tuple(y.shape) if hasattr(y, "shape") else None


def list_layers(module, variables=None, x=None, **apply_kwargs) -> list[LayerInfo]:
  """Every submodule path with its output shape, in call order, to choose a layer.

  ``list_layers(module, variables, x, **apply_kwargs)`` for linen; ``list_layers(model, x)`` for nnx and Keras
  models (Keras: the layers that run, named as ``model.summary()`` prints them, nested models' layers as
  "model/layer"). Costs one abstract trace (no FLOPs).
  """
  import flax.linen as nn
  from flax import nnx

  if is_keras_model(module):
    return list_keras_layers(module, variables if x is None else x)
  if isinstance(module, nnx.Module):
    if x is None:
      x = variables
    return _list_nnx(module, x)
  if not isinstance(module, nn.Module):
    raise TypeError(f"Expected a flax.linen.Module, an nnx.Module or a keras.Model, got {type(module).__name__}.")
  if x is None:
    raise TypeError("`list_layers(module, variables, x)` needs an example input `x` for linen modules.")
  types: dict[str, str] = {}

  def interceptor(next_fun, args, kwargs, context):  # call order (parents first) and module types
    if context.method_name == "__call__" and context.module.path:
      types.setdefault(format_path(context.module.path), type(context.module).__name__)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    calls = captured_calls(module, variables, x, True, **apply_kwargs)  # Flax's own capture_intermediates
  out = []
  for p, t in types.items():
    shapes = calls.get(p, (None,))
    shape = shapes[0] if isinstance(shapes[0], tuple) and all(isinstance(d, int) for d in shapes[0]) else None
    out.append(LayerInfo(p, shape, t, suggest_layout(shape), len(shapes)))
  return out


def _list_nnx(model, x) -> list[LayerInfo]:
  from flax import nnx

  model = nnx.clone(model)
  model.eval()
  paths = _nnx_paths(model)
  found: dict[str, LayerInfo] = {}
  order: dict[str, int] = {}

  class Rec:
    def __init__(self, inner, name):
      self.inner, self.name = inner, name

    def __call__(self, *a, **k):
      order.setdefault(self.name, len(order))
      y = self.inner(*a, **k)
      found.setdefault(self.name, LayerInfo(self.name, _shape_of(y), type(self.inner).__name__))
      return y

    # containers (nnx.List, nnx.Sequential, nnx.Dict) are iterated, indexed and read by the model's own code
    def __getattr__(self, name):
      return getattr(self.inner, name)

    def __iter__(self):
      return iter(self.inner)

    def __len__(self):
      return len(self.inner)

    def __getitem__(self, key):
      return self.inner[key]

  graphdef, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graphdef, state)
    for path in sorted(paths, key=len, reverse=True):  # children first, so parents wrap patched children
      parent = m
      for key in path[:-1]:
        parent = _nnx_get(parent, key)
      _nnx_set(parent, path[-1], Rec(_nnx_get(parent, path[-1]), format_path(path)))
    return m(x)

  jax.eval_shape(run, state, x)
  return sorted(found.values(), key=lambda info: order[info.path])


# ---------------------------------------------------------------------------------------- choosing a layer

MAX_CANDIDATES = 16
"""`find_layer` checks the gradient at the last this many candidate layers (one compiled pass)."""


def token_prefix(n: int) -> int | None:
  """The prefix count P <= 16 that leaves a square of at least 4 tokens, or None."""
  for p in range(17):
    side = math.isqrt(max(n - p, 0))
    if side >= 2 and side * side == n - p:
      return p
  return None


def _grid_like(shape: tuple[int, ...], image: tuple[int, int]) -> bool:
  _, h, w, _ = shape
  if h * w <= 1 or h > image[0] or w > image[1]:
    return False
  return abs(math.log((image[0] / h) / (image[1] / w))) <= math.log(1.5)


def _candidates(infos: list, image: tuple[int, int]) -> list[tuple[str, Any]]:
  """(path, layout) of the layers that may be explained, in the order their outputs are produced."""
  kinds = {i.path: i.type for i in infos}
  start = {i.path: k for k, i in enumerate(infos)}
  out: list[tuple[str, Any]] = []
  for info in infos:
    shape = info.shape
    if info.calls != 1 or shape is None:
      continue
    ancestors = [info.path[:k] for k in range(len(info.path)) if info.path[k] == "/"]
    if any("Attention" in kinds.get(a, "") for a in ancestors):
      continue
    if len(shape) == 4 and _grid_like(shape, image):
      out.append((info.path, None))
    elif len(shape) == 3 and (prefix := token_prefix(shape[1])) is not None:
      out.append((info.path, layouts.tokens(prefix=prefix)))

  def ends_before(p: str, q: str) -> int:  # post-order: a module's output comes after its submodules'
    if q.startswith(p + "/"):
      return 1
    if p.startswith(q + "/"):
      return -1
    return start[p] - start[q]

  def order(a: tuple[str, Any], b: tuple[str, Any]) -> int:
    return ends_before(a[0], b[0])

  return sorted(out, key=functools.cmp_to_key(order))


@jax.jit
def _target_grads(tap, x, target):
  """The target's gradient w.r.t. each tapped layer's value (one forward and one backward pass)."""
  zeros = tuple(jnp.zeros(s.shape, s.dtype) for s in tap.activation_shape(x))

  def score(deltas):
    out, _ = tap(x, deltas)
    return jnp.sum(target.evaluate(out)[1])

  return jax.grad(score)(zeros)


def find_layer(model: Any, x: Any, target: Any = None) -> tuple[str, Any, str]:
  """``(layer, layout, reason)``: the layer `explain_model` explains for `x` (channels-last, in [0, 1]) and
  `target`: among layers that run once with a grid output (several positions, the input's aspect) or square tokens
  after a prefix, outside attention modules, the last (in output order, of the last `MAX_CANDIDATES`) whose target
  gradient is non-zero. One forward and one backward pass. `model`: anything `jaxcam.explain_model` takes."""
  from jaxcam.autoexplain import as_model

  m = as_model(model)
  if m.list_layers is None:
    raise ValueError(f"{m.name} cannot list its layers: pass `layer=`.")
  x = jnp.asarray(x)
  infos = m.list_layers(x)
  found = _candidates(infos, tuple(x.shape[1:3]))
  if not found:
    listed = abbreviate([f"{i.path} {i.shape}" for i in infos])
    raise ValueError(
      f"No layer of {m.name} has a spatial output to explain (a grid (B, h, w, C) with several positions, or "
      f"tokens (B, P + N, D) with N a square). Pass `layer=`; layers: {listed}."
    )
  checked = found[-MAX_CANDIDATES:]
  paths = [p for p, _ in checked]
  tap = m.make_tap(paths, None)
  shapes = tap.activation_shape(x)
  grads = _target_grads(tap, x, targets_lib.as_target(target))
  norms = []
  for (_, layout), g in zip(checked, grads):
    g = g[:, layout.prefix :] if layout is not None else g
    norms.append(float(jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))))
  top = max(norms)
  alive = [k for k, n in enumerate(norms) if n > 0 and n > 1e-10 * top]
  if not alive:
    raise ValueError(
      f"The target does not depend on any of the last {len(checked)} spatial layers of {m.name} "
      f"({abbreviate(paths)}): every gradient is zero. Pass `layer=`."
    )
  k = alive[-1]
  path, layout = checked[k]
  shape = tuple(shapes[k].shape)
  what = f"tokens {shape} read as tokens(prefix={layout.prefix})" if layout is not None else f"a grid {shape}"
  skipped = paths[k + 1 :]
  reason = (
    f"the last layer whose output is {'transformer tokens' if layout is not None else 'a spatial grid'} and whose "
    f"target gradient is non-zero: {path!r}, {what}"
    + (f"; after it, {abbreviate(skipped)} had zero gradient (e.g. a head that reads only CLS)" if skipped else "")
  )
  return path, layout, reason
