"""Listing a model's layers (`list_layers`) with shapes, call counts and the layout a tap on each would need."""

from __future__ import annotations

import jax

from jaxcam.taps.base import (
  LayerInfo,
  suggest_layout,
)
from jaxcam.taps.linen import captured_calls
from jaxcam.taps.nnx import _nnx_get, _nnx_paths, _nnx_set
from jaxcam.taps.paths import format_path


def _shape_of(y) -> tuple[int, ...] | None:
  return tuple(y.shape) if hasattr(y, "shape") else None


def list_layers(module, variables=None, x=None, **apply_kwargs) -> list[LayerInfo]:
  """Every submodule path with its output shape, in call order, to choose a layer.

  ``list_layers(module, variables, x, **apply_kwargs)`` for linen; ``list_layers(model, x)`` for nnx. Costs
  one abstract trace (no FLOPs).
  """
  import flax.linen as nn
  from flax import nnx

  if isinstance(module, nnx.Module):
    if x is None:
      x = variables
    return _list_nnx(module, x)
  if not isinstance(module, nn.Module):
    raise TypeError(f"Expected a flax.linen.Module or an nnx.Module, got {type(module).__name__}.")
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
