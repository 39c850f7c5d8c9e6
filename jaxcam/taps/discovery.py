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
)
from jaxcam.taps.keras import is_keras_model, list_keras_layers
from jaxcam.taps.linen import captured_calls
from jaxcam.taps.nnx import _nnx_paths
from jaxcam.taps.paths import format_path
from jaxcam.taps.stacked import _sliced_length, expand_stacks


def _shape_of(y) -> tuple[int, ...] | None:
  return tuple(y.shape) if hasattr(y, "shape") else None


def list_layers(module, variables=None, x=None, **apply_kwargs) -> list[LayerInfo]:
  """Every submodule path with its output shape, in call order, to choose a layer.

  ``list_layers(module, variables, x, **apply_kwargs)`` for linen; ``list_layers(model, x)`` for nnx and Keras
  models (Keras: the layers that run, named as ``model.summary()`` prints them, nested models' layers as
  "model/layer"). Costs one abstract trace (no FLOPs).

  Args:
    module: a linen module, an nnx module or a Keras model. variables: linen's variables (nnx / Keras: the input).
    x: an example input (an array or ``jax.ShapeDtypeStruct``). **apply_kwargs: the call's keyword arguments.

  Returns:
    A list of `LayerInfo` (path, output shape, type, the layout a tap would need, calls per forward pass).

  Raises:
    TypeError: a model of another kind, or no example input for linen.

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcam
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))
    ...     return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net, x = Net(), jnp.ones((2, 8, 8, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> [(i.path, i.shape) for i in jaxcam.list_layers(net, variables, x)]
    [('conv', (2, 4, 4, 4)), ('head', (2, 3))]
  """
  import flax.linen as nn
  from flax import nnx

  if is_keras_model(module):
    return list_keras_layers(module, variables if x is None else x)
  if isinstance(module, nnx.Module):
    if x is None:
      x = variables
    return _list_nnx(module, x, **apply_kwargs)
  if not isinstance(module, nn.Module):
    raise TypeError(f"Expected a flax.linen.Module, an nnx.Module or a keras.Model, got {type(module).__name__}.")
  if x is None:
    raise TypeError("`list_layers(module, variables, x)` needs an example input `x` for linen modules.")
  types: dict[str, str] = {}
  inside: dict[str, tuple] = {}  # calls inside a stack's body (nn.scan / nn.vmap): (shape, (stack, length))
  active: list[tuple[str, int]] = []

  def interceptor(next_fun, args, kwargs, context):  # call order (parents first) and module types
    if context.method_name != "__call__" or not context.module.path:
      return next_fun(*args, **kwargs)
    path = format_path(context.module.path)
    types.setdefault(path, type(context.module).__name__)
    length = None if active else _sliced_length(context.module, variables["params"], tuple(context.module.path))
    if length is not None:  # the first call whose parameters the transform slices: the body of a stack
      active.append((path, length))
    try:
      y = next_fun(*args, **kwargs)
    finally:
      stack = active[-1] if active else None
      if length is not None:
        active.pop()
    if stack is not None:
      inside.setdefault(path, (_shape_of(y), stack))
    return y

  with nn.intercept_methods(interceptor):
    calls = captured_calls(module, variables, x, True, **apply_kwargs)  # Flax's own capture_intermediates
  entries: list[tuple] = []
  for p, t in types.items():
    if p in inside:
      entries.append((p, inside[p][0], t, inside[p][1]))
      continue
    shapes = calls.get(p, (None,))
    shape = shapes[0] if isinstance(shapes[0], tuple) and all(isinstance(d, int) for d in shapes[0]) else None
    entries.append((p, shape, t, None, len(shapes)))
  return expand_stacks(entries)


def _list_nnx(model, x, method: str | None = None, **call_kwargs) -> list[LayerInfo]:
  from flax import nnx

  model = nnx.clone(model)
  model.eval()
  paths = _nnx_paths(model)
  from jaxcam.taps import nnx_stacks

  graphdef, state = nnx.split(model)

  def run(state, x):
    m = nnx.merge(graphdef, jax.tree.map(lambda a: a, state))  # variables of this trace (see nnx._fresh)
    calls = lambda m: (m if method is None else getattr(m, method))(x, **call_kwargs)
    found.extend(nnx_stacks.list_calls(m, paths, calls))  # probes are nnx modules: nnx.scan / nnx.vmap carry them

  found: list = []
  jax.eval_shape(run, state, x)
  return expand_stacks(found)


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


def _grid_like(shape: tuple[int, ...], image: tuple[int, ...]) -> bool:
  """A layer output ``(B, *s, C)`` on a grid of the input's ``image`` spatial shape: several positions, none past
  the input's, the same stride along every axis (within 1.5x)."""
  s = shape[1:-1]
  if len(s) != len(image) or math.prod(s) <= 1 or any(a > b for a, b in zip(s, image)):
    return False
  strides = [math.log(b / a) for a, b in zip(s, image)]
  return max(strides) - min(strides) <= math.log(1.5)


def _candidates(infos: list, image: tuple[int, ...]) -> list[tuple[str, Any]]:
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
    if len(shape) == len(image) + 2 and _grid_like(shape, image):
      out.append((info.path, None))
    elif len(image) == 2 and len(shape) == 3 and (prefix := token_prefix(shape[1])) is not None:
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
  gradient is non-zero. One forward and one backward pass. `model`: anything `jaxcam.explain_model` takes.

  Args:
    model: anything `jaxcam.explain_model` takes. x: images ``(B, H, W, C)`` in [0, 1] (or the model's 1-D / 3-D
      inputs). target: as for `jaxcam.explain` (None: each image's top class).

  Returns:
    ``(layer path, layout or None, the reason in words)``.

  Raises:
    ValueError: no layer with a spatial output, or every candidate's gradient is zero (pass ``layer=``).

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcam
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))
    ...     return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net, x = Net(), jnp.ones((2, 8, 8, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> jaxcam.find_layer((net, variables), x)[0]
    'conv'
  """
  from jaxcam.autoexplain import as_model

  m = as_model(model)
  if m.list_layers is None:
    raise ValueError(f"{m.name} cannot list its layers: pass `layer=`.")
  x = jnp.asarray(x)
  infos = m.list_layers(x)
  found = _candidates(infos, tuple(x.shape[1:-1]))  # x: (B, *spatial, C), one to three spatial axes
  if not found:
    listed = abbreviate([f"{i.path} {i.shape}" for i in infos])
    raise ValueError(
      f"No layer of {m.name} has a spatial output to explain (a grid (B, h, w, C) with several positions, or "
      f"tokens (B, P + N, D) with N a square). Pass `layer=`; layers: {listed}."
    )
  checked = found[-MAX_CANDIDATES:]
  paths = [p for p, _ in checked]
  tap = m.make_tap(paths, None)
  xt = x[:, :, None, :] if getattr(tap, "input_layout", "NHWC") == "NLC" else x  # 1-D travels as (B, L, 1, C)
  shapes = tap.activation_shape(xt)
  grads = _target_grads(tap, xt, targets_lib.as_target(target))
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
