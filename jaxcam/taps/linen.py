"""Taps on `flax.linen` modules: `nn.intercept_methods` routes the layer's call through the tap; `sow` carries the
value out of lifted transforms."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxcam._errors import LayerNotFoundError, abbreviate, unknown_name_message
from jaxcam.taps.base import (
  _COLLECTION,
  _WHERE,
  Tap,
  _check_input_layout,
  _check_output_selector,
  _Run,
  tap_dataclass,
)
from jaxcam.taps.paths import _linen_module_path, _parse_layers, format_path, linen_aliases, parse_path
from jaxcam.taps.stacked import _Calls, _find_stack, _with_steps


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


@tap_dataclass("variables")
@dataclasses.dataclass(frozen=True, eq=False)
class LinenTap(Tap):
  """A tap on a `flax.linen` module; see `linen_tap`. A pytree: the variables are its leaves.

  Args:
    module, variables, layers, ...: as `linen_tap` builds them (build it with `linen_tap`).

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcam
    >>> net = nn.Sequential([nn.Dense(4), nn.Dense(2)])
    >>> tap = jaxcam.linen_tap(net, net.init(jax.random.key(0), jnp.ones((1, 3))), "layers_0")
    >>> isinstance(tap, jaxcam.LinenTap), len(jax.tree_util.tree_leaves(tap))  # the variables are its leaves
    (True, 4)
  """

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

  def program_token(self) -> Any:
    """A shipped model's description (its class is jaxcam's, so jaxcam's source digest covers its code) and the
    tap's settings; None for anything else (see `Tap.program_token`)."""
    from jaxcam import compile_cache

    if not compile_cache.shipped_module(self.module):
      return None
    settings = {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("module", "variables")
    }
    if not compile_cache.plain(settings):
      return None
    return ["LinenTap", compile_cache.module_key(self.module), compile_cache.canonical(settings)]

  def _apply_kwargs(self) -> dict[str, Any]:
    kwargs = dict(self.apply_kwargs)
    if self.method is not None:
      kwargs["method"] = self.method
    return kwargs

  def _apply(self, x, **extra):
    return self.module.apply(self.variables, x, **self._apply_kwargs(), **extra)

  def _plain(self, x):
    return self._apply(x)

  def dense(self, path: Any = None) -> tuple[jax.Array, jax.Array | None]:
    path = self._dense_path(path, self.module)
    parts = parse_path(path, argname="fc")
    node = self.variables["params"]
    try:
      for p in _linen_module_path(node, parts):
        node = node[p]
    except (KeyError, TypeError):
      raise LayerNotFoundError(
        unknown_name_message("fc", format_path(parts), _param_paths(self.variables), "a Dense layer with parameters")
      ) from None
    if not hasattr(node, "keys") or "kernel" not in node:
      raise ValueError(f"Expected `fc` to name a Dense layer with a 'kernel', got {path!r} with {list(node)}.")
    return node["kernel"], node.get("bias")

  def layer_index(self, path: Sequence[str]) -> int | None:
    joined = "/".join(str(p) for p in path)
    for i, names in enumerate(linen_aliases(p) for p in self.layers):
      if joined in names:
        return i
    return None

  can_intercept = True

  def intercept(self, x: jax.Array, interceptor: Callable) -> Any:
    import flax.linen as nn

    def route(next_fun, args, kwargs, context):
      if context.method_name != "__call__" or not context.module.path:
        return next_fun(*args, **kwargs)
      return interceptor(next_fun, args, kwargs, context.module, tuple(context.module.path))

    with nn.intercept_methods(route):
      return self._select(self._apply(self._model_input(x)))

  def _run(self, x, run: _Run):
    import flax.linen as nn

    stacks = tuple(_find_stack(self.variables["params"], p) for p in self.layers)
    calls = _Calls(self, run, stacks)
    with nn.intercept_methods(calls.interceptor):
      if any(stacks):  # the iterations' values leave the scan as (stacked) variables of the scanned collection
        out, state = self.module.apply(
          _with_steps(self.variables, stacks), x, mutable=[_COLLECTION, "params"], **self._apply_kwargs()
        )
      else:
        out, state = self._apply(x, mutable=[_COLLECTION])
    calls.collect(state)
    missing = self._missing(run)
    if missing:
      given = format_path(self.layers[missing[0]])
      raise LayerNotFoundError(
        unknown_name_message(
          "layer", given, list(dict.fromkeys(calls.seen)), f"a submodule called by {type(self.module).__name__}"
        )
        + " Lists become 'name_i' in linen; 'name/i' is accepted too; a layer inside nn.scan is 'scanned/i/layer'."
      )
    if run.replacements is not None:
      return out, tuple(run.replacements)
    acts = []
    for i, path in enumerate(self.layers):
      if stacks[i] is not None:
        acts.append(run.record[i])
        continue
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
          "caller, or the layer just before or after it; nn.remat passes the value through; a layer of a stack "
          "scanned over stacked parameters is spelled with its iteration, e.g. 'blocks/3/norm1'."
        ) from None
    return out, tuple(acts)


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
          # per call: an array's shape, any other output as it is (rebuilding a frozen output object around
          # shapes fails: Hugging Face 4.57's ModelOutput refuses it)
          found[name] = tuple(v.shape if hasattr(v, "shape") else v for v in value)
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

  Raises:
    TypeError: `module` is not an unbound linen module, `variables` lack a 'params' collection. ValueError: no
      layer and no ``default_layer``, a bad `where` / `output` / `input_layout`.

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcam
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))
    ...     return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net, x = Net(), jnp.ones((2, 8, 8, 3))
    >>> variables = net.init(jax.random.key(0), x)
    >>> tap = jaxcam.linen_tap(net, variables, "conv")
    >>> logits, a = tap(x)
    >>> logits.shape, a.shape, jaxcam.gradcam(tap, x).shape
    ((2, 3), (2, 4, 4, 4), (2, 8, 8))
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
