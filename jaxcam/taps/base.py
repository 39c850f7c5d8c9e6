"""The base tap: one traced call of a model with a layer read, replaced or perturbed (`Tap._substitute`), and the
protocol every backend implements."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp

from jaxcam import layouts as layouts_lib
from jaxcam.taps.paths import format_path

_T = TypeVar("_T")
_COLLECTION = "jaxcam_taps"
_WHERE = ("output", "input")


class LayerInfo(NamedTuple):
  """One entry of `list_layers`: the path, the output shape, the module type, the layout a tap on it would use (see
  `suggest_layout`) and how many times it runs in one forward pass (a layer called more than once, e.g. a shared
  module, cannot be tapped; a layer inside ``nn.scan`` / ``nnx.scan`` over stacked parameters is listed once per
  iteration, as "blocks/3/norm1").

  Args:
    path, shape, type, layout, calls: the fields.

  Examples:
    >>> import jaxcam
    >>> info = jaxcam.LayerInfo("layer4", (1, 7, 7, 512), "Bottleneck")
    >>> info.path, info.calls
    ('layer4', 1)
  """

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


def tap_dataclass(*data_fields: str) -> Callable[[type[_T]], type[_T]]:
  """Register a tap dataclass as a pytree in one place: `data_fields` (the arrays: variables, state, params) are
  its leaves, every other field is static metadata, read from the class's own fields (declared once, on the
  class, under ``@dataclasses.dataclass(frozen=True, eq=False)``)."""

  def wrap(cls: type[_T]) -> type[_T]:
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [n for n in data_fields if n not in names]
    if unknown:
      raise TypeError(f"{cls.__name__} has no field(s) {unknown} to make its leaves.")
    meta = [n for n in names if n not in data_fields]
    return jax.tree_util.register_dataclass(cls, data_fields=list(data_fields), meta_fields=meta)

  return wrap


class _Run:
  """State of one traced call: the deltas and replacements to apply, the grids recorded so far."""

  def __init__(self, deltas, replacements):
    self.deltas, self.replacements = deltas, replacements
    self.record: dict[int, Any] = {}


class Tap:
  """Base class of taps.

  Subclasses call the model and route the tapped layer's call through `_substitute` (the one place that reads,
  replaces and perturbs a layer's value); they implement `_run(x, run) -> (output, grids)` and `_plain(x)`.

  Args:
    layers: the tapped paths. multi: several layers. where, layout, output, input_layout: as for `linen_tap`.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.sum((1, 2)), ())
    >>> isinstance(tap, jaxcam.Tap), tap.forward(jnp.ones((1, 2, 2, 3))).tolist()
    (True, [[4.0, 4.0, 4.0]])
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
      return x[:, :, 0, :] if x.ndim == 4 else x  # (B, L, 1, C) inside jaxcam, or (B, L, C) as the user has it
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
        "or a module inside a scan whose parameters are not stacked), so it has no single output to explain. Tap a "
        "module that runs once, e.g. one of its callers; a layer of a stack scanned over stacked parameters is "
        "spelled with its iteration, e.g. 'blocks/3/norm1'."
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

  def _substitute_step(self, i: int, run: _Run, call: Callable, args: tuple, kwargs: dict, step: Any, k: int):
    """`_substitute` for a layer inside a scanned or vmapped stack (``nn.scan``, ``nnx.scan``, ``nn.vmap``, ...):
    the body is traced once for every iteration, `step` is the traced iteration index and only iteration `k` is
    replaced / perturbed (``jnp.where(step == k, ...)``). Returns ``(value for downstream, grid)``: the caller
    carries the per-iteration grids out of the loop (stacked on axis 0) and reads row `k`."""
    layout = layouts_lib.as_layout(
      layouts_lib.Sequence() if self.layout is None and self.input_layout == "NLC" else self.layout
    )
    if self.where == "input" and not args:
      raise ValueError(f"`where='input'` needs layer {format_path(self.layers[i])!r} to take its input positionally.")
    value = call(*args, **kwargs) if self.where == "output" else args[0]
    grid = layout.to_grid(value)
    here = step == k
    down = grid
    if run.replacements is not None:
      down = jnp.where(here, run.replacements[i].astype(grid.dtype), grid)
    if run.deltas is not None:
      down = down + jnp.where(here, run.deltas[i], jnp.zeros_like(run.deltas[i]))
    downstream = value if run.deltas is None and run.replacements is None else layout.from_grid(down, value)
    if self.where == "output":
      return downstream, grid
    return call(downstream, *args[1:], **kwargs), grid

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

  # The capabilities a backend implements beyond calling the model: methods and providers talk to a tap through
  # these, never through its class or private helpers.

  def dense(self, path: Any = None) -> tuple[jax.Array, jax.Array | None]:
    """``(kernel (C, classes), bias (classes,) or None)`` of the Dense layer at `path` (None: the layer the model
    declares as ``fc_layer``). Taps without named layers (`function_tap`) raise: pass the kernel array instead."""
    raise ValueError(
      f"A {type(self).__name__} has no named layers to read a Dense layer from: pass `fc=` as a (C, classes) kernel "
      "array."
    )

  @staticmethod
  def _dense_path(path: Any, model: Any) -> Any:
    """`path`, or the Dense layer `model` declares as ``fc_layer``; a clear error when there is neither."""
    path = path if path is not None else getattr(model, "fc_layer", None)
    if path is None:
      raise ValueError(
        f"CAM needs the Dense layer: pass `fc=` (a layer path or a (C, classes) kernel); "
        f"{type(model).__name__} declares no `fc_layer`."
      )
    return path

  def layer_index(self, path: Sequence[str]) -> int | None:
    """Which tapped layer a module `path` is (its index in `layers`), or None; each backend's spelling of paths is
    accepted (linen's ``blocks_6`` for ``blocks/6``)."""
    return self.layers.index(tuple(path)) if tuple(path) in self.layers else None

  def program_token(self) -> Any:
    """Plain data that, with the structure and shapes of its leaves, names everything this tap computes, or None
    when it cannot (the default: the model is the user's code). `jaxcam.compile_cache` keeps a traced program on
    disk only for taps that name themselves."""
    return None

  can_intercept = False
  """Whether `intercept` works on this tap (LeGrad reads attention, FullGrad biases through it)."""

  def intercept(self, x: jax.Array, interceptor: Callable) -> Any:
    """Run the plain model on `x` with every submodule call routed through ``interceptor(call, args, kwargs,
    module, path)`` (it calls ``call(*args, **kwargs)`` or returns something else); returns the model's output as
    `forward` does (``output=`` applied). Backends that can name their submodules' calls implement it (linen); LeGrad
    reads attention and FullGrad reads biases through it."""
    raise ValueError(f"A {type(self).__name__} cannot intercept its submodules' calls; use a linen_tap.")

  def _missing(self, run: _Run) -> list[int]:
    return [i for i in range(len(self.layers)) if i not in run.record]
