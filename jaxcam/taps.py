"""Taps: one layer's activations of any Flax model, and a point to perturb them, without hooks.

A tap is a pytree whose leaves are the model's arrays (variables or nnx state) and whose static part is the
model structure and the layer path. It is a pure function of the input::

    out, A = tap(x)                  # A: the chosen layer's output, (B, h, w, C); out: the model's output
    out, A = tap(x, delta)           # the layer's output becomes A + delta downstream
    out = tap.head(x, A2)            # the network with the layer's output replaced by A2
    out = tap.forward(x)             # the plain forward pass: nothing recorded, nothing perturbed

The gradient of a score of `logits` with respect to a zero `delta` is exactly dS/dA, computed by the same
forward and backward pass that yields A. Because taps are pytrees they pass through `jax.jit`, `jax.vmap` and
`jax.grad` as ordinary arguments: new weights with the same structure never trigger a recompile.

Layer paths have one syntax everywhere: a "/"-separated string ("layer4/1/conv2") or a tuple of names and
ints (("blocks", 6)). Linen names list entries `blocks_6`; "blocks/6" matches it too. A *list* of paths asks
for several layers at once: A and delta are then tuples with one array per layer, all from one forward pass.

The model's output may be any pytree (logits, a dict, a dataclass); class-id targets check that it is
``(B, classes)`` logits, callable targets pick their score from whatever it is. A `layout` reshapes the layer's
value into the ``(B, h, w, C)`` grid that methods see and back (identity by default; token sequences later).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcam import layouts as layouts_lib
from jaxcam._errors import LayerNotFoundError, abbreviate, unknown_name_message

__all__ = [
  "Tap",
  "IdentityLayout",
  "LinenTap",
  "NnxTap",
  "FunctionTap",
  "LayerInfo",
  "linen_tap",
  "nnx_tap",
  "function_tap",
  "list_layers",
  "suggest_layout",
  "format_path",
  "parse_path",
]

_COLLECTION = "jaxcam_taps"
_WHERE = ("output", "input")


# ----------------------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------------------


def parse_path(layer: Any, *, argname: str = "layer") -> tuple[str, ...]:
  """Canonical tuple-of-strings form of one layer path ("a/b/0" or ("a", "b", 0))."""
  if isinstance(layer, str):
    parts = tuple(p for p in layer.split("/") if p)
  elif isinstance(layer, tuple) and all(isinstance(p, (str, int)) for p in layer):
    parts = tuple(str(p) for p in layer)
  else:
    raise TypeError(
      f"Expected `{argname}` to be a '/'-separated path string or a tuple of names and ints, got "
      f"{type(layer).__name__} {layer!r}. Example: 'layer4/1' or ('blocks', 6); a list of paths asks for "
      "several layers."
    )
  if not parts:
    raise ValueError(f"Expected `{argname}` to name a submodule, got an empty path {layer!r}.")
  return parts


def format_path(path: Sequence[Any]) -> str:
  """ "/"-joined string form of a path tuple."""
  return "/".join(str(p) for p in path)


def _parse_layers(layer: Any) -> tuple[tuple[tuple[str, ...], ...], bool]:
  """(paths, multi): a list of paths gives several layers, anything else one."""
  if isinstance(layer, list):
    if not layer:
      raise ValueError("Expected `layer` to be a path or a non-empty list of paths, got [].")
    paths = tuple(parse_path(l) for l in layer)
    if len(set(paths)) != len(paths):
      raise ValueError(f"Expected distinct layer paths in `layer`, got duplicates in {layer!r}.")
    return paths, True
  return (parse_path(layer),), False


def _linen_aliases(parts: tuple[str, ...]) -> set[str]:
  """Strings a linen module path may have for `parts`: "blocks/6" also matches linen's "blocks_6"."""
  merged: list[str] = []
  for p in parts:
    if p.isdigit() and merged:
      merged[-1] = f"{merged[-1]}_{p}"
    else:
      merged.append(p)
  return {"/".join(parts), "/".join(merged)}


# ----------------------------------------------------------------------------------------------------------
# Base class
# ----------------------------------------------------------------------------------------------------------


class LayerInfo(NamedTuple):
  """One entry of `list_layers`: the path, the output shape, the module type, the layout a tap on it would use (see
  `suggest_layout`) and how many times it runs in one forward pass (a layer called more than once, e.g. inside
  ``nn.scan``, cannot be tapped)."""

  path: str
  shape: tuple[int, ...] | None
  type: str
  layout: str = ""
  calls: int = 1

  def __str__(self) -> str:
    calls = f"  (called {self.calls}x: not tappable)" if self.calls > 1 else ""
    return f"{self.path:<40s} {str(self.shape):<22s} {self.type:<28s} {self.layout}{calls}"


def suggest_layout(shape: tuple[int, ...] | None) -> str:
  """The layout a tap on a layer of output `shape` needs, in words (what `jaxcam layers` prints)."""
  if shape is None:
    return "pick(i): not an array (a tuple, dict or dataclass)"
  if len(shape) == 4:
    return "grid (default)"
  if len(shape) == 5:
    return "volume: input_layout='NDHWC'"
  if len(shape) == 3:
    n = shape[1]
    for prefix in (1, 0, 2):
      if n > prefix and math.isqrt(n - prefix) ** 2 == n - prefix:
        return f"tokens(prefix={prefix}) or sequence: input_layout='NLC'"
    return "sequence: input_layout='NLC' (or tokens(prefix, grid=(h, w)))"
  return "no spatial axes"


IdentityLayout = layouts_lib.Identity  # the default layout (kept under its first name)
_INPUT_LAYOUTS = ("NHWC", "NCHW", "NLC", "NDHWC", "NCDHW")
_VOLUMES = ("NDHWC", "NCDHW")


def spatial_dims(tap: Any) -> int:
  """The spatial axes of the inputs and feature maps inside jaxcam: 3 for volumes, else 2 (1-D travels as (L, 1))."""
  return 3 if getattr(tap, "input_layout", "NHWC") in _VOLUMES else 2


def _check_output_selector(output: Any) -> Any:
  if output is None or callable(output):
    return output
  ok = lambda k: isinstance(k, (int, str)) and not isinstance(k, bool)
  if ok(output) or (isinstance(output, tuple) and output and all(ok(k) for k in output)):
    return output
  raise TypeError(
    f"Expected `output` to be None, a key / attribute name / index (or a tuple path of them), or a callable, got "
    f"{output!r}."
  )


def _check_input_layout(input_layout: str) -> str:
  if input_layout not in _INPUT_LAYOUTS:
    raise ValueError(f"Expected `input_layout` to be one of {_INPUT_LAYOUTS}, got {input_layout!r}.")
  return input_layout


class _Run:
  """State of one traced call: the deltas and replacements to apply, the grids recorded so far."""

  def __init__(self, deltas, replacements):
    self.deltas, self.replacements = deltas, replacements
    self.record: dict[int, Any] = {}


class Tap:
  """Base class of taps.

  Subclasses call the model and route the tapped layer's call through `_substitute` (the one place that reads,
  replaces and perturbs a layer's value); they implement `_run(x, run) -> (output, grids)` and `_plain(x)`.
  """

  layers: tuple[tuple[str, ...], ...]
  multi: bool
  where: str = "output"
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"

  def _run(self, x, run: _Run):
    raise NotImplementedError

  def _model_input(self, x):
    """The pixels as the model takes them: the methods and maps stay channels-last (1-D inputs (B, L, C) travel
    as (B, L, 1, C) inside jaxcam)."""
    if self.input_layout in ("NCHW", "NCDHW"):
      return jnp.moveaxis(x, -1, 1)
    if self.input_layout == "NLC":
      return x[:, :, 0, :]
    return x

  def _select(self, out):
    """The part of the model's output that targets read (`output=`)."""
    if self.output is None:
      return out
    if callable(self.output):
      return self.output(out)
    try:
      return layouts_lib.select(out, self.output)
    except ValueError as e:
      raise ValueError(f"`output={self.output!r}`: {e}") from None

  def _plain(self, x):
    raise NotImplementedError

  @property
  def layer(self) -> str | tuple[str, ...]:
    """The tapped layer's path as a string (a tuple of strings for a multi-layer tap)."""
    names = tuple(format_path(p) for p in self.layers)
    return names if self.multi else names[0]

  def _pack(self, acts: tuple) -> Any:
    return acts if self.multi else acts[0]

  def _unpack(self, value: Any, argname: str) -> tuple | None:
    if value is None:
      return None
    if self.multi:
      if not isinstance(value, (tuple, list)) or len(value) != len(self.layers):
        raise ValueError(
          f"Expected `{argname}` to be a tuple of {len(self.layers)} arrays (one per layer of a multi-layer "
          f"tap), got {type(value).__name__}."
        )
      return tuple(value)
    return (value,)

  def _substitute(self, i: int, run: _Run, call: Callable, args: tuple, kwargs: dict, record: Callable | None = None):
    """Call layer i (``call(*args, **kwargs)``) with its grid recorded, replaced and/or perturbed.

    where="output": the grid is ``layout.to_grid(output)``; downstream sees ``from_grid(grid + delta)``.
    where="input": the same for the layer's first positional argument. `record(i, grid)` stores the grid
    (linen sows it so that it survives lifted transforms); default: the run's record.
    """
    if i in run.record:
      raise ValueError(
        f"Layer {format_path(self.layers[i])!r} is called more than once in one forward pass (a shared module "
        "or a module inside nn.scan), so it has no single output to explain. Tap a module that runs once, e.g. "
        "one of its callers."
      )
    layout = layouts_lib.as_layout(
      layouts_lib.Sequence() if self.layout is None and self.input_layout == "NLC" else self.layout
    )
    if self.where == "output":
      value = call(*args, **kwargs)
    else:
      if not args:
        raise ValueError(f"`where='input'` needs layer {format_path(self.layers[i])!r} to take its input positionally.")
      value = args[0]
    grid = run.replacements[i] if run.replacements is not None else layout.to_grid(value)
    run.record[i] = grid
    if record is not None and run.replacements is None:
      record(i, grid)
    if run.deltas is not None:
      grid = grid + run.deltas[i]
    if run.deltas is None and run.replacements is None:
      downstream = value
    else:
      downstream = layout.from_grid(grid, value)
    if self.where == "output":
      return downstream
    return call(downstream, *args[1:], **kwargs)

  def __call__(self, x: jax.Array, delta: Any = None) -> tuple[Any, Any]:
    """`(output, A)`; with `delta`, the layer's output becomes `A + delta` downstream."""
    out, acts = self._run(self._model_input(x), _Run(self._unpack(delta, "delta"), None))
    return self._select(out), self._pack(acts)

  def head(self, x: jax.Array, activations: Any) -> Any:
    """Output of the network whose tapped layer outputs `activations` (the rest may still read `x`)."""
    out, _ = self._run(self._model_input(x), _Run(None, self._unpack(activations, "activations")))
    return self._select(out)

  def forward(self, x: jax.Array) -> Any:
    """The model's output for `x`: the plain forward pass, nothing recorded or perturbed (masked inputs, metrics)."""
    return self._select(self._plain(self._model_input(x)))

  def activation_shape(self, x: jax.Array) -> Any:
    """`jax.ShapeDtypeStruct` of A for input `x` (a tuple of them for a multi-layer tap); no FLOPs."""
    return jax.eval_shape(lambda t, x: t(x)[1], self, x)

  def _missing(self, run: _Run) -> list[int]:
    return [i for i in range(len(self.layers)) if i not in run.record]


# ----------------------------------------------------------------------------------------------------------
# flax.linen
# ----------------------------------------------------------------------------------------------------------


def _freeze_kwargs(kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
  items = tuple(sorted(kwargs.items()))
  for k, v in items:
    if k in ("mutable", "rngs"):
      raise ValueError(
        f"`linen_tap` evaluates the model in inference mode; got apply keyword {k!r}. Pass eval-mode "
        "arguments only (e.g. train=False), so BatchNorm uses its running statistics."
      )
    try:
      hash(v)
    except TypeError:
      raise TypeError(
        f"Expected the apply keyword {k!r} of `linen_tap` to be hashable (it is static), got "
        f"{type(v).__name__}. Pass arrays through a `function_tap` instead."
      ) from None
  return items


def _param_paths(variables: Any) -> list[str]:
  """Submodule paths that own parameters, from the variables tree (for hints without tracing)."""
  out: list[str] = []

  def walk(tree, prefix):
    if isinstance(tree, dict) or hasattr(tree, "items"):
      for k, v in tree.items():
        if hasattr(v, "items"):
          out.append(format_path(prefix + (k,)))
          walk(v, prefix + (k,))

  for coll in variables.values() if hasattr(variables, "values") else []:
    walk(coll, ())
  return sorted(set(out))


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["variables"],
  meta_fields=["module", "layers", "multi", "where", "method", "apply_kwargs", "layout", "output", "input_layout"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class LinenTap(Tap):
  """A tap on a `flax.linen` module; see `linen_tap`. A pytree: the variables are its leaves."""

  module: Any
  variables: Any
  layers: tuple[tuple[str, ...], ...]
  multi: bool
  where: str = "output"
  method: Any = None
  apply_kwargs: tuple[tuple[str, Any], ...] = ()
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"

  def __repr__(self) -> str:
    return f"LinenTap({type(self.module).__name__}, layer={self.layer!r}, where={self.where!r})"

  def _apply(self, x, **extra):
    kwargs = dict(self.apply_kwargs)
    if self.method is not None:
      kwargs["method"] = self.method
    return self.module.apply(self.variables, x, **kwargs, **extra)

  def _plain(self, x):
    return self._apply(x)

  def _run(self, x, run: _Run):
    import flax.linen as nn

    aliases = [_linen_aliases(p) for p in self.layers]
    seen: list[str] = []

    def match(path):
      s = "/".join(path)
      for i, names in enumerate(aliases):
        if s in names:
          return i
      return None

    def interceptor(next_fun, args, kwargs, context):
      if context.method_name != "__call__" or not context.module.path:
        return next_fun(*args, **kwargs)
      i = match(context.module.path)
      if i is None:
        seen.append("/".join(context.module.path))
        return next_fun(*args, **kwargs)
      # sow, not a closure: the value must survive lifted transforms (nn.remat) around the layer
      record = lambda _, grid: context.module.sow(_COLLECTION, "a", grid)
      return self._substitute(i, run, next_fun, args, kwargs, record)

    with nn.intercept_methods(interceptor):
      out, state = self._apply(x, mutable=[_COLLECTION])

    missing = self._missing(run)
    if missing:
      given = format_path(self.layers[missing[0]])
      raise LayerNotFoundError(
        unknown_name_message(
          "layer", given, list(dict.fromkeys(seen)), f"a submodule called by {type(self.module).__name__}"
        )
        + " Lists become 'name_i' in linen; 'name/i' is accepted too."
      )
    if run.replacements is not None:
      return out, tuple(run.replacements)
    acts = []
    for path in self.layers:
      try:
        node = state[_COLLECTION]
        # linen stores the sown value under the module's own path (possibly 'blocks_6' for 'blocks/6').
        for names in _linen_module_path(node, path):
          node = node[names]
        acts.append(node["a"][0])
      except (KeyError, IndexError):
        raise ValueError(
          f"Layer {format_path(path)!r} ran, but its value did not come out of the forward pass: it is inside a "
          f"lifted transform (nn.vmap, nn.scan, nn.jit, ...) that does not carry the {_COLLECTION!r} collection "
          "out (even the transformed module itself runs inside it). Tap a layer outside the transform: its "
          "caller, or the layer just before or after it; nn.remat passes the value through."
        ) from None
    return out, tuple(acts)


def _linen_module_path(tree, parts: tuple[str, ...]) -> list[str]:
  """Keys leading to the sown value for a requested path, resolving 'blocks/6' vs 'blocks_6'."""
  keys: list[str] = []
  node = tree
  i = 0
  while i < len(parts):
    p = parts[i]
    if p in node:
      keys.append(p)
      node = node[p]
      i += 1
    elif i + 1 < len(parts) and f"{p}_{parts[i + 1]}" in node:
      keys.append(f"{p}_{parts[i + 1]}")
      node = node[keys[-1]]
      i += 2
    else:
      raise LayerNotFoundError(f"No submodule {format_path(parts)!r} (stopped at {p!r}).")
  return keys


def captured_calls(module, variables, x, filter: Any = True, **apply_kwargs) -> dict[str, tuple]:
  """``{path: (value shapes, one per call)}`` of the submodule calls that Flax's ``capture_intermediates`` `filter`
  selects (True: every ``__call__``; or ``(module, method_name) -> bool``), from one abstract trace (no FLOPs).
  Methods other than ``__call__`` are listed as ``path.method``."""
  found: dict[str, tuple] = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, tuple):
        if prefix:
          name = "/".join(prefix) + ("" if key == "__call__" else f".{key}")
          found[name] = tuple(jax.tree.map(lambda v: v.shape, value, is_leaf=lambda v: hasattr(v, "shape")))
      else:
        walk(value, prefix + (key,))

  def run(v, x):
    return module.apply(v, x, capture_intermediates=filter, mutable=["intermediates"], **apply_kwargs)[1]

  walk(jax.eval_shape(run, variables, x).get("intermediates", {}), ())
  return found


def _resolve_filters(module, variables, layer: Any, example: Any, apply_kwargs: dict) -> Any:
  """`layer` with every capture_intermediates-style filter replaced by the one path it selects."""
  items = layer if isinstance(layer, list) else [layer]
  if not any(callable(item) for item in items):
    return layer
  if example is None:
    raise ValueError(
      "`layer` is a filter (module, method_name) -> bool: pass `example=` (an input or a jax.ShapeDtypeStruct) so "
      "that linen_tap can run it once and resolve it to a path (then a new lambda never recompiles)."
    )
  out = []
  for item in items:
    if not callable(item):
      out.append(item)
      continue
    calls = captured_calls(module, variables, example, item, **apply_kwargs)
    paths = [p for p in calls if "." not in p]
    if len(paths) != 1 or len(calls[paths[0]]) != 1:
      detail = (
        f"it selects {len(paths)}: {abbreviate(paths)}"
        if len(paths) != 1
        else f"{paths[0]!r} is called {len(calls[paths[0]])} times"
      )
      other = [p for p in calls if "." in p]
      raise ValueError(
        f"Expected the `layer` filter to select exactly one submodule __call__ that runs once, but {detail}"
        + (f" (and methods other than __call__, which taps do not read: {abbreviate(other)})" if other else "")
        + ". Narrow the filter, or pass a list of paths for a multi-layer tap."
      )
    out.append(paths[0])
  return out if isinstance(layer, list) else out[0]


def linen_tap(
  module,
  variables,
  layer: Any = None,
  *,
  where: str = "output",
  method: Callable | str | None = None,
  layout: Any = None,
  output: Any = None,
  input_layout: str = "NHWC",
  example: Any = None,
  **apply_kwargs,
) -> LinenTap:
  """A tap on any `flax.linen` module, at any depth, with no edits to the model.

  Args:
    module: the `flax.linen.Module` (unbound).
    variables: its variables, e.g. ``{"params": ..., "batch_stats": ...}`` (the tap's leaves).
    layer: the submodule path ("layer4", "blocks/6", ("blocks", 6)), a list of paths for several layers, None for
      the model's ``default_layer`` attribute, or a Flax ``capture_intermediates``-style filter
      ``(module, method_name) -> bool`` (also inside the list) that selects exactly one ``__call__``, e.g.
      ``lambda m, n: isinstance(m, nn.Conv) and m.name == "conv_head"``; it runs once on `example` and is
      replaced by the path it selects, so a new lambda never recompiles.
    where: "output" taps what the submodule returns; "input" taps its first positional argument (for tensors
      made by plain functions such as ``nn.relu`` that have no path of their own).
    method: passed to ``module.apply`` (a method or its name).
    layout: reshapes the layer's value to the ``(B, h, w, C)`` grid and back: `jaxcam.layouts` (``tokens(prefix=1)``
      for ViT tokens, ``pick(0)`` for a tuple-valued layer) or a function ``value -> grid`` (pytorch-grad-cam's
      ``reshape_transform``). Default: the value is the grid.
    output: what targets read from the model's output: None (all of it), a key / attribute name / index or a
      tuple path of them (``"logits"`` for Hugging Face outputs; static, nothing recompiles), or a callable
      (define it once: a fresh lambda per tap recompiles).
    input_layout: "NHWC" (default) or "NCHW" for models that take channels-first pixels (`x`, the maps and the
      CLI stay channels-last); "NLC" for 1-D models (sequences ``(B, L, C)``: `x` is ``(B, L, C)``, layers
      ``(B, l, C)`` read through `layouts.sequence`, maps ``(B, L)``); "NDHWC" (or channels-first "NCDHW") for
      volumes and video: `x` is ``(B, D, H, W, C)``, layers ``(B, d, h, w, C)``, maps ``(B, D, H, W)`` (trilinear
      upsampling).
    example: an input (or ``jax.ShapeDtypeStruct``) to resolve filters in `layer` with; only read then.
    **apply_kwargs: static keyword arguments of the forward pass, e.g. ``train=False`` so that BatchNorm uses
      running statistics. No mutable collections: the model is evaluated in inference mode.

  Flax's ``capture_intermediates`` reads what a submodule returns; a tap also replaces and perturbs it (the
  gradient is taken w.r.t. a zero perturbation of that value), which is what every method needs.

  Returns:
    A `LinenTap`: ``tap(x, delta=None) -> (output, A)``, ``tap.head(x, A)``, ``tap.forward(x)``,
    ``tap.activation_shape(x)``. The model's output may be any pytree.
    An unknown layer raises `LayerNotFoundError` when first called (the path is checked against the
    submodules that actually run), listing the available paths and the closest matches.
  """
  import flax.linen as nn

  if not isinstance(module, nn.Module):
    raise TypeError(f"Expected `module` to be a flax.linen.Module, got {type(module).__name__}.")
  if hasattr(module, "scope") and module.scope is not None:
    raise ValueError("Expected an unbound linen module for `module`; pass the module and its variables separately.")
  if where not in _WHERE:
    raise ValueError(f"Expected `where` to be one of {_WHERE}, got {where!r}.")
  if not hasattr(variables, "keys") or "params" not in variables:
    raise TypeError(
      "Expected `variables` to be the dict returned by `module.init` (with a 'params' collection), got "
      f"{type(variables).__name__}."
    )
  if layer is None:
    layer = getattr(module, "default_layer", None)
    if layer is None:
      raise ValueError(
        f"`layer` is None and {type(module).__name__} declares no `default_layer`. Pass `layer=`; submodules "
        f"with parameters: {abbreviate(_param_paths(variables))}. `jaxcam.list_layers(module, variables, x)` "
        "lists every path with its output shape."
      )
  call_kwargs = dict(apply_kwargs, **({"method": method} if method is not None else {}))
  layer = _resolve_filters(module, variables, layer, example, call_kwargs)
  layers, multi = _parse_layers(layer)
  return LinenTap(
    module,
    variables,
    layers,
    multi,
    where,
    method,
    _freeze_kwargs(apply_kwargs),
    layout,
    _check_output_selector(output),
    _check_input_layout(input_layout),
  )


# ----------------------------------------------------------------------------------------------------------
# flax.nnx
# ----------------------------------------------------------------------------------------------------------


class _Probe:
  """Stands in for an nnx submodule on a throwaway copy of the model, inside one traced call."""

  def __init__(self, tap, inner, index, run):
    self.tap, self.inner, self.index, self.run = tap, inner, index, run

  def __call__(self, *args, **kwargs):
    return self.tap._substitute(self.index, self.run, self.inner, args, kwargs)


def _nnx_get(node, key: str):
  if key.isdigit() and not hasattr(node, key):
    return node[int(key)]
  return getattr(node, key)


def _nnx_set(node, key: str, value) -> None:
  if key.isdigit() and not hasattr(node, key):
    node[int(key)] = value
  else:
    object.__setattr__(node, key, value)  # bypass nnx's attribute checks: this copy is never split


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["state"],
  meta_fields=["graphdef", "layers", "multi", "where", "method", "layout", "output", "input_layout"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class NnxTap(Tap):
  """A tap on a `flax.nnx` model snapshot; see `nnx_tap`. A pytree: the state is its leaves."""

  graphdef: Any
  state: Any
  layers: tuple[tuple[str, ...], ...]
  multi: bool
  where: str = "output"
  method: str | None = None
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"

  def __repr__(self) -> str:
    return f"NnxTap(layer={self.layer!r}, where={self.where!r})"

  def _call(self, model, x):
    fn = model if self.method is None else getattr(model, self.method)
    return fn(x)

  def _plain(self, x):
    from flax import nnx

    return self._call(nnx.merge(self.graphdef, self.state), x)

  def _run(self, x, run: _Run):
    from flax import nnx

    model = nnx.merge(self.graphdef, self.state)
    for i, path in enumerate(self.layers):
      parent = model
      for key in path[:-1]:
        parent = _nnx_get(parent, key)
      _nnx_set(parent, path[-1], _Probe(self, _nnx_get(parent, path[-1]), i, run))
    out = self._call(model, x)
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
  layers, multi = _parse_layers(layer)
  names = [format_path(p) for p in available]
  for p in layers:
    if p not in available:
      raise LayerNotFoundError(
        unknown_name_message("layer", format_path(p), names, f"a submodule of {type(model).__name__}")
      )
  graphdef, state = nnx.split(model)
  return NnxTap(
    graphdef, state, layers, multi, where, method, layout, _check_output_selector(output),
    _check_input_layout(input_layout),
  )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Plain functions
# ----------------------------------------------------------------------------------------------------------


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["params"],
  meta_fields=["body_fn", "head_fn", "name", "layout", "output", "input_layout"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class FunctionTap(Tap):
  """A tap on a network split by hand into `body_fn` and `head_fn`; see `function_tap`."""

  body_fn: Callable
  head_fn: Callable
  params: Any
  name: str = "A"
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"

  @property
  def layers(self) -> tuple[tuple[str, ...], ...]:  # type: ignore[override]
    return ((self.name,),)

  @property
  def multi(self) -> bool:  # type: ignore[override]
    return False

  def __repr__(self) -> str:
    return f"FunctionTap({getattr(self.body_fn, '__name__', 'body')}, {getattr(self.head_fn, '__name__', 'head')})"

  def _plain(self, x):
    return self.head_fn(self.params, x, self.body_fn(self.params, x))

  def _run(self, x, run: _Run):
    downstream = self._substitute(0, run, lambda: self.body_fn(self.params, x), (), {})
    return self.head_fn(self.params, x, downstream), (run.record[0],)


def function_tap(
  body_fn: Callable,
  head_fn: Callable,
  params: Any,
  *,
  name: str = "A",
  layout: Any = None,
  output: Any = None,
  input_layout: str = "NHWC",
) -> FunctionTap:
  """A tap from two plain functions: ``body_fn(params, x) -> A`` and ``head_fn(params, x, A) -> output``.

  `params` are the tap's leaves, so gradients reach them and a training loop that passes new params never
  retraces. `body_fn` and `head_fn` are static (hashable; define them once, not per step).
  """
  if not callable(body_fn) or not callable(head_fn):
    raise TypeError(
      f"Expected `body_fn` and `head_fn` to be callables, got {type(body_fn).__name__} and {type(head_fn).__name__}."
    )
  return FunctionTap(
    body_fn, head_fn, params, name, layout, _check_output_selector(output), _check_input_layout(input_layout)
  )


# ----------------------------------------------------------------------------------------------------------
# Listing layers
# ----------------------------------------------------------------------------------------------------------


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
