"""Taps on `flax.nnx` modules: the layer's submodule is swapped for a probe on a throwaway copy, inside one traced
call (`nnx.split` / `nnx.merge`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxcam._errors import LayerNotFoundError, abbreviate, unknown_name_message
from jaxcam.taps.base import (
  _WHERE,
  Tap,
  _check_input_layout,
  _check_output_selector,
  _Run,
  tap_dataclass,
)
from jaxcam.taps.paths import _parse_layers, format_path, parse_path


def _fresh(state: Any) -> Any:
  """`state` with its variables rebuilt in the current trace: ``nnx.merge`` reuses the variable objects, and nnx
  transforms inside the model (``nnx.scan``) refuse variables made in an outer trace (e.g. under ``jax.grad`` of a
  perturbation, inside the ``jax.jit`` that traced the tap)."""
  return jax.tree.map(lambda a: a, state)


def _nnx_get(node, key: str):
  if key.isdigit() and not hasattr(node, key):
    return node[int(key)]
  return getattr(node, key)


def _nnx_set(node, key: str, value) -> None:
  if key.isdigit() and not hasattr(node, key):
    node[int(key)] = value
  else:
    object.__setattr__(node, key, value)  # bypass nnx's attribute checks: this copy is never split


@tap_dataclass("state")
@dataclasses.dataclass(frozen=True, eq=False)
class NnxTap(Tap):
  """A tap on a `flax.nnx` model snapshot; see `nnx_tap`. A pytree: the state is its leaves.

  Args:
    graphdef, state, layers, ...: as `nnx_tap` builds them (build it with `nnx_tap`).

  Examples:
    >>> import jaxcam
    >>> from flax import nnx
    >>> net = nnx.Sequential(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 2, rngs=nnx.Rngs(1)))
    >>> isinstance(jaxcam.nnx_tap(net, "layers/0"), jaxcam.NnxTap)
    True
  """

  graphdef: Any
  state: Any
  layers: tuple[tuple[str, ...], ...]
  multi: bool
  where: str = "output"
  method: str | None = None
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"
  call_kwargs: tuple[tuple[str, Any], ...] = ()  # static keyword arguments of the call (explain_model's model_kwargs)

  def __repr__(self) -> str:
    return f"NnxTap(layer={self.layer!r}, where={self.where!r})"

  def _call(self, model, x):
    fn = model if self.method is None else getattr(model, self.method)
    return fn(x, **dict(self.call_kwargs))

  def _plain(self, x):
    from flax import nnx

    return self._call(nnx.merge(self.graphdef, _fresh(self.state)), x)

  def dense(self, path: Any = None) -> tuple[jax.Array, jax.Array | None]:
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.merge(self.graphdef, self.state)
    node = model
    for p in parse_path(self._dense_path(path, model), argname="fc"):
      node = _nnx_get(node, p)
    bias = getattr(node, "bias", None)
    return jnp.asarray(node.kernel[...]), None if bias is None else jnp.asarray(bias[...])

  def _run(self, x, run: _Run):
    from flax import nnx

    from jaxcam.taps import nnx_stacks

    model = nnx.merge(self.graphdef, _fresh(self.state))
    collect = nnx_stacks.install(self, model, run)  # probes are nnx modules: nnx.scan / nnx.vmap carry them
    out = self._call(model, x)
    collect()
    missing = self._missing(run)
    if missing:
      raise ValueError(
        f"Layer {format_path(self.layers[missing[0]])!r} exists but did not run in the forward pass of "
        f"{type(model).__name__}; tap a submodule that the forward pass calls."
      )
    return out, tuple(run.record[i] for i in range(len(self.layers)))


def _nnx_paths(model) -> list[tuple[str, ...]]:
  from flax import nnx

  return [tuple(str(p) for p in path) for path, _ in nnx.iter_modules(model) if path]


def nnx_tap(
  model,
  layer: Any = None,
  *,
  where: str = "output",
  method: str | None = None,
  eval_mode: bool = True,
  layout: Any = None,
  output: Any = None,
  input_layout: str = "NHWC",
):
  """A tap on a `flax.nnx` model.

  The tap holds a *snapshot* of the model's state, taken now (on a clone switched to eval mode, so the user's
  model is never mutated): after updating the model in place (an optimizer step), build a new tap; or build
  it from ``(graphdef, state)`` returned by ``nnx.split`` and swap the state, which never recompiles. Each
  traced call merges a private copy and substitutes the layer there.

  Args:
    model: an ``nnx.Module``, or a ``(graphdef, state)`` pair from ``nnx.split``.
    layer: path such as "blocks/6" or ("blocks", 6) (ints index lists), a list of paths, or None for the
      model's ``default_layer`` attribute.
    where: "output" or "input" (the submodule's first positional argument).
    method: name of the method to call instead of ``__call__``.
    eval_mode: call ``.eval()`` on the clone (BatchNorm running statistics, no dropout).
    layout, output, input_layout: as for `linen_tap`.

  Returns:
    An `NnxTap` (a pytree: the state is its leaves), with the methods of `linen_tap`'s taps.

  Raises:
    LayerNotFoundError: an unknown layer (the closest paths listed). TypeError: not an nnx module. ValueError: no
      layer and no ``default_layer``.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> from flax import nnx
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.conv, self.head = nnx.Conv(3, 4, (3, 3), rngs=rngs), nnx.Linear(4, 2, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.head(nnx.relu(self.conv(x)).mean(axis=(1, 2)))
    >>> tap = jaxcam.nnx_tap(Net(nnx.Rngs(0)), "conv")
    >>> jaxcam.layercam(tap, jnp.ones((1, 6, 6, 3))).shape
    (1, 6, 6)
  """
  from flax import nnx

  if where not in _WHERE:
    raise ValueError(f"Expected `where` to be one of {_WHERE}, got {where!r}.")
  if isinstance(model, tuple) and len(model) == 2:
    graphdef, state = model
    model = nnx.merge(graphdef, state)
  elif not isinstance(model, nnx.Module):
    raise TypeError(f"Expected `model` to be an nnx.Module or a (graphdef, state) pair, got {type(model).__name__}.")
  model = nnx.clone(model)
  if eval_mode:
    model.eval()
  available = _nnx_paths(model)
  if layer is None:
    layer = getattr(model, "default_layer", None)
    if layer is None:
      raise ValueError(
        f"`layer` is None and {type(model).__name__} declares no `default_layer`. Pass `layer=`; submodules: "
        f"{abbreviate([format_path(p) for p in available])}."
      )
  from jaxcam.taps import nnx_stacks

  layers, multi = _parse_layers(layer)
  names = [format_path(p) for p in available]
  for p in layers:
    s = nnx_stacks.find_stack(model, p)  # "blocks/3/norm1": iteration 3 of a stack (checks the index's range)
    if (p if s is None else s.prefix + s.rest) not in available:
      if s is not None:  # spell the stack's layers with the iteration asked for
        n = len(s.prefix)
        names = [format_path(q[:n] + (str(s.k),) + q[n:]) if q[:n] == s.prefix else format_path(q) for q in available]
      raise LayerNotFoundError(
        unknown_name_message("layer", format_path(p), names, f"a submodule of {type(model).__name__}")
      )
  graphdef, state = nnx.split(model)
  return NnxTap(
    graphdef, state, layers, multi, where, method, layout, _check_output_selector(output),
    _check_input_layout(input_layout),
  )  # fmt: skip
