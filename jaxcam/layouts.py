"""Layouts: how a tapped layer's value becomes the channels-last grid ``(B, h, w, C)`` that every method reads, and
how a perturbed or replaced grid goes back into the model.

- `identity()` (the default): the value already is the grid. A tuple, dict or dataclass value is refused with
  its fields listed (pick one with `pick`).
- `tokens(prefix=1, grid=None)`: transformer tokens ``(B, P + N, D)``: the P prefix tokens (CLS, distillation,
  registers) are dropped, the N patch tokens laid out on a square grid (or ``grid=(h, w)``); downstream the prefix
  is kept as it was and the patch tokens come from the grid.
- `channels_first()`: a ``(B, C, h, w)`` layer (Equinox, PyTorch-style models) moved to channels-last and back.
- `sequence()`: a 1-D layer ``(B, L, C)`` as a ``(B, L, 1, C)`` grid; the default for taps with
  ``input_layout="NLC"`` (time series, audio), whose maps come back as ``(B, L_in)``.
- `pick(selector, then=None)`: a layer returning a tuple / dict / dataclass (Hugging Face encoder layers, scanned
  blocks returning ``(x, None)``): the field `selector` (an index, a key or attribute name, or a path of them),
  then an inner layout.
- `transform(fn)`: pytorch-grad-cam's ``reshape_transform``, any function ``value -> grid`` that is linear (a
  reshape, transpose, slice, concatenation); downstream the change of the grid is mapped back through its
  transpose (`jax.vjp`), so entries the grid does not show are left as they were.

A plain function given as ``layout=`` is taken as `transform(fn)`. Layouts are static (hashable): define them once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
  "ChannelsFirst",
  "Identity",
  "Pick",
  "Sequence",
  "Tokens",
  "Transform",
  "as_layout",
  "channels_first",
  "identity",
  "pick",
  "sequence",
  "tokens",
  "transform",
]


def describe(value: Any) -> str:
  """What a non-array value holds, for error messages: its keys, fields, or items' shapes."""
  if isinstance(value, Mapping):
    return f"keys {list(value)}"
  if dataclasses.is_dataclass(value):
    return f"fields {[f.name for f in dataclasses.fields(value)]}"
  if isinstance(value, (tuple, list)):
    shapes = [getattr(v, "shape", type(v).__name__) for v in value]
    return f"a {type(value).__name__} of {len(value)}: {shapes}"
  return type(value).__name__


def _check_array(value: Any, where: str) -> None:
  if not hasattr(value, "shape") or not hasattr(value, "dtype"):
    raise ValueError(
      f"Expected {where} to be an array, got {describe(value)}. Pick the array with "
      "layout=jaxcam.layouts.pick(0) (an index, key or attribute name; pick(0, then=jaxcam.layouts.tokens()) for "
      "tokens)."
    )


@dataclasses.dataclass(frozen=True)
class Identity:
  """The layer's value is the ``(B, h, w, C)`` grid (the default layout; ``jaxcam.IdentityLayout``).

  Every layout has the same two methods: ``to_grid(value) -> grid`` reads the channels-last grid from the layer's
  value, ``from_grid(grid, value) -> value`` puts a changed grid back into a value of the layer's structure.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.layouts import Identity
    >>> layout, a = Identity(), jnp.zeros((1, 2, 2, 3))
    >>> layout.to_grid(a).shape, layout.from_grid(a + 1, a).shape
    ((1, 2, 2, 3), (1, 2, 2, 3))
  """

  def to_grid(self, value: Any) -> Any:
    """The grid of the layer's value: the value itself.

    Args:
      value: the tapped layer's output ``(B, h, w, C)``.

    Returns:
      `value`, unchanged.

    Raises:
      ValueError: `value` is not an array (a tuple, dict or dataclass: the message lists its fields).
    """
    _check_array(value, "the tapped layer's output")
    return value

  def from_grid(self, grid: Any, value: Any) -> Any:
    """The layer's new value: the grid itself.

    Args:
      grid: the changed grid ``(B, h, w, C)``.
      value: the layer's original value (unused).

    Returns:
      `grid`, unchanged.
    """
    del value
    return grid


def identity() -> Identity:
  """The default layout: the layer's value already is ``(B, h, w, C)``.

  Returns:
    An `Identity` layout.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import layouts
    >>> layouts.identity().to_grid(jnp.zeros((1, 2, 2, 3))).shape
    (1, 2, 2, 3)
  """
  return Identity()


@dataclasses.dataclass(frozen=True)
class Tokens:
  """``(B, P + N, D)`` tokens <-> the ``(B, h, w, D)`` grid of the N patch tokens; see `tokens`.

  Args:
    prefix: P, the leading tokens that are not patches (CLS, distillation, registers).
    grid: ``(h, w)`` of the patch tokens; None: a square.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.layouts import Tokens
    >>> layout, value = Tokens(prefix=1), jnp.zeros((2, 5, 3))  # CLS + 4 patch tokens of width 3
    >>> grid = layout.to_grid(value)
    >>> grid.shape
    (2, 2, 2, 3)
    >>> new = layout.from_grid(grid + 1, value)  # the CLS token is kept as it was
    >>> new.shape, new[:, 0].sum().tolist(), new[:, 1:].sum().tolist()
    ((2, 5, 3), 0.0, 24.0)
  """

  prefix: int = 1
  grid: tuple[int, int] | None = None

  def shape_for(self, n: int) -> tuple[int, int]:
    """The grid ``(h, w)`` of `n` patch tokens: `grid` if set, else the square.

    Args:
      n: the number of patch tokens (prefix dropped).

    Returns:
      ``(h, w)`` with ``h * w == n``.

    Raises:
      ValueError: `n` does not match `grid`, or (no `grid`) is not a square number.

    Examples:
      >>> from jaxcam.layouts import Tokens
      >>> Tokens().shape_for(16), Tokens(0, (2, 3)).shape_for(6)
      ((4, 4), (2, 3))
    """
    if self.grid is not None:
      h, w = self.grid
      if h * w != n:
        raise ValueError(
          f"Expected {h} x {w} = {h * w} patch tokens for grid={self.grid}, got {n} after dropping {self.prefix} "
          "prefix token(s)."
        )
      return h, w
    side = math.isqrt(n)
    if side * side != n:
      raise ValueError(
        f"Expected a square number of patch tokens, got {n} after dropping prefix={self.prefix} token(s): wrong "
        "prefix (CLS, distillation, register tokens)? Otherwise pass grid=(h, w), e.g. for non-square images."
      )
    return side, side

  def to_grid(self, value: Any) -> Any:
    """The patch tokens laid out on their grid.

    Args:
      value: tokens ``(B, P + N, D)``.

    Returns:
      The grid ``(B, h, w, D)`` of the N patch tokens (row-major).

    Raises:
      ValueError: `value` is not an array of rank 3, or N does not fit the grid (see `shape_for`).
    """
    _check_array(value, "the tapped layer's output")
    if value.ndim != 3:
      raise ValueError(
        f"Expected tokens (B, N, D) for layouts.tokens, got shape {tuple(value.shape)}"
        + (" (already a grid: drop layout=)." if value.ndim == 4 else ".")
      )
    b, n, d = value.shape
    h, w = self.shape_for(n - self.prefix)
    return value[:, self.prefix :].reshape(b, h, w, d)

  def from_grid(self, grid: Any, value: Any) -> Any:
    """Tokens with the grid as the patch tokens and the prefix of `value`.

    Args:
      grid: the changed grid ``(B, h, w, D)``.
      value: the layer's original tokens ``(B, P + N, D)``.

    Returns:
      Tokens ``(B, P + N, D)`` in `value`'s dtype.
    """
    b, h, w, d = grid.shape
    patches = grid.reshape(b, h * w, d).astype(value.dtype)
    return jnp.concatenate([value[:, : self.prefix], patches], axis=1) if self.prefix else patches


def tokens(prefix: int = 1, grid: tuple[int, int] | None = None) -> Tokens:
  """Transformer tokens ``(B, P + N, D)`` as a ``(B, h, w, D)`` grid: `prefix` leading tokens dropped (1: ViT's CLS;
  2: DeiT's CLS + distillation; 0: Swin, no CLS), the rest on a square grid or ``grid=(h, w)``.

  Args:
    prefix: how many leading tokens are not patches (a non-negative int).
    grid: ``(h, w)`` of the patch tokens (positive ints), for non-square grids; None: a square.

  Returns:
    A `Tokens` layout.

  Raises:
    ValueError: `prefix` is not a non-negative int, or `grid` is not two positive ints.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import layouts
    >>> layouts.tokens().to_grid(jnp.zeros((1, 1 + 16, 8))).shape  # ViT: CLS + 4 x 4 patches
    (1, 4, 4, 8)
    >>> layouts.tokens(prefix=0, grid=(2, 3)).to_grid(jnp.zeros((1, 6, 8))).shape
    (1, 2, 3, 8)
  """
  if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
    raise ValueError(f"Expected `prefix` to be a non-negative int (the CLS/register tokens), got {prefix!r}.")
  if grid is not None:
    if not (isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
      raise ValueError(f"Expected `grid` to be (h, w) positive ints or None, got {grid!r}.")
    grid = (int(grid[0]), int(grid[1]))
  return Tokens(prefix, grid)


@dataclasses.dataclass(frozen=True)
class Sequence:
  """``(B, L, C)`` <-> the ``(B, L, 1, C)`` grid; see `sequence`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.layouts import Sequence
    >>> layout, value = Sequence(), jnp.zeros((1, 4, 3))
    >>> grid = layout.to_grid(value)
    >>> grid.shape, layout.from_grid(grid, value).shape
    ((1, 4, 1, 3), (1, 4, 3))
  """

  def to_grid(self, value: Any) -> Any:
    """The sequence as a grid of width 1.

    Args:
      value: a 1-D layer's output ``(B, L, C)``.

    Returns:
      The grid ``(B, L, 1, C)``.

    Raises:
      ValueError: `value` is not an array of rank 3.
    """
    _check_array(value, "the tapped layer's output")
    if value.ndim != 3:
      raise ValueError(
        f"Expected a 1-D layer (B, L, C) for layouts.sequence / input_layout='NLC', got {tuple(value.shape)}."
      )
    return value[:, :, None, :]

  def from_grid(self, grid: Any, value: Any) -> Any:
    """The sequence of a grid of width 1.

    Args:
      grid: the changed grid ``(B, L, 1, C)``.
      value: the layer's original value ``(B, L, C)`` (for its dtype).

    Returns:
      ``(B, L, C)`` in `value`'s dtype.
    """
    return grid[:, :, 0, :].astype(value.dtype)


def sequence() -> Sequence:
  """A 1-D layer ``(B, L, C)`` (a sequence of L positions with C channels) as a ``(B, L, 1, C)`` grid.

  Returns:
    A `Sequence` layout.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import layouts
    >>> layouts.sequence().to_grid(jnp.zeros((2, 16, 8))).shape
    (2, 16, 1, 8)
  """
  return Sequence()


@dataclasses.dataclass(frozen=True)
class ChannelsFirst:
  """``(B, C, *spatial)`` <-> ``(B, *spatial, C)``; see `channels_first`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.layouts import ChannelsFirst
    >>> layout, value = ChannelsFirst(), jnp.zeros((1, 3, 4, 5))
    >>> grid = layout.to_grid(value)
    >>> grid.shape, layout.from_grid(grid, value).shape
    ((1, 4, 5, 3), (1, 3, 4, 5))
  """

  def to_grid(self, value: Any) -> Any:
    """The channels moved last.

    Args:
      value: a channels-first layer's output ``(B, C, *spatial)`` (one to three spatial axes).

    Returns:
      The grid ``(B, *spatial, C)``.

    Raises:
      ValueError: `value` is not an array of rank >= 3.
    """
    _check_array(value, "the tapped layer's output")
    if value.ndim < 3:
      raise ValueError(f"Expected a channels-first layer (B, C, *spatial), got shape {tuple(value.shape)}.")
    return jnp.moveaxis(value, 1, -1)

  def from_grid(self, grid: Any, value: Any) -> Any:
    """The channels moved back to axis 1.

    Args:
      grid: the changed grid ``(B, *spatial, C)``.
      value: the layer's original value ``(B, C, *spatial)`` (for its dtype).

    Returns:
      ``(B, C, *spatial)`` in `value`'s dtype.
    """
    return jnp.moveaxis(grid, -1, 1).astype(value.dtype)


def channels_first() -> ChannelsFirst:
  """A channels-first layer ``(B, C, h, w)`` (Equinox, PyTorch-style models; 1-D and 3-D too) as the channels-last
  grid: a transpose each way, so CAM's head check and the structured exact derivatives still see the pooling.

  Returns:
    A `ChannelsFirst` layout.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import layouts
    >>> layouts.channels_first().to_grid(jnp.zeros((2, 8, 4, 4))).shape
    (2, 4, 4, 8)
  """
  return ChannelsFirst()


def _get(value: Any, key: Any) -> Any:
  if isinstance(key, int) and isinstance(value, (tuple, list)):
    if not -len(value) <= key < len(value):
      raise ValueError(f"Expected an index into {describe(value)}, got {key}.")
    return value[key]
  if isinstance(value, Mapping):
    if key in value:
      return value[key]
  elif isinstance(key, str) and hasattr(value, key):
    return getattr(value, key)
  raise ValueError(f"No {key!r} in {describe(value)}.")


def _set(value: Any, key: Any, new: Any) -> Any:
  if isinstance(value, (tuple, list)):
    items = list(value)
    items[key] = new
    return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)
  if isinstance(value, Mapping):
    out = dict(value)
    out[key] = new
    try:
      return type(value)(out)  # type: ignore[call-arg]
    except TypeError:
      return out
  return dataclasses.replace(value, **{key: new})


def select(value: Any, selector: Any) -> Any:
  """``value[selector]``: an index, a key or attribute name, or a tuple path of them (the `output=` rule).

  Args:
    value: a tuple, list, dict or dataclass (nested for a path).
    selector: an index, a key or attribute name, or a tuple path of them.

  Returns:
    The selected field.

  Raises:
    ValueError: a step of the path names no field (the message lists what there is).
  """
  path = selector if isinstance(selector, tuple) else (selector,)
  for key in path:
    value = _get(value, key)
  return value


@dataclasses.dataclass(frozen=True)
class Pick:
  """One field of a tuple / dict / dataclass layer value, then an inner layout; see `pick`.

  Args:
    selector: an index, a key or attribute name, or a tuple path of them.
    then: the layout of the picked field (None: identity).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.layouts import Pick
    >>> layout, value = Pick(0), (jnp.zeros((1, 2, 2, 3)), None)  # e.g. a scanned block's (x, None)
    >>> grid = layout.to_grid(value)
    >>> new = layout.from_grid(grid + 1, value)  # the same structure, with the field replaced
    >>> grid.shape, type(new).__name__, new[0].shape, new[1]
    ((1, 2, 2, 3), 'tuple', (1, 2, 2, 3), None)
  """

  selector: Any
  then: Any = None

  def _inner(self):
    return as_layout(self.then)

  def to_grid(self, value: Any) -> Any:
    """The grid of the picked field, through the inner layout.

    Args:
      value: the layer's output, a tuple, list, dict or dataclass (nested for a path).

    Returns:
      The inner layout's grid ``(B, h, w, C)`` of the field.

    Raises:
      ValueError: the selector names no field of `value`, or the inner layout refuses the field.
    """
    return self._inner().to_grid(select(value, self.selector))

  def from_grid(self, grid: Any, value: Any) -> Any:
    """`value` with the picked field replaced by the inner layout's value of `grid`.

    Args:
      grid: the changed grid ``(B, h, w, C)``.
      value: the layer's original output.

    Returns:
      A value of `value`'s structure (tuple, named tuple, list, dict or dataclass), the other fields as they were.

    Raises:
      ValueError: the selector names no field of `value`.
    """
    path = self.selector if isinstance(self.selector, tuple) else (self.selector,)
    parents = [value]
    for key in path[:-1]:
      parents.append(_get(parents[-1], key))
    new = self._inner().from_grid(grid, _get(parents[-1], path[-1]))
    for parent, key in zip(reversed(parents), reversed(path)):
      new = _set(parent, key, new)
    return new


def pick(selector: Any, then: Any = None) -> Pick:
  """A field of a layer value that is a tuple, dict or dataclass (e.g. ``pick(0)`` for ``(hidden, attn)``), read
  through the inner layout `then` (default identity; e.g. ``then=tokens()``).

  Args:
    selector: the field: an index, a key or attribute name, or a tuple path of them (``("encoder", 0)``).
    then: the layout of the field (None: identity; any layout, or a function as for `as_layout`).

  Returns:
    A `Pick` layout.

  Raises:
    ValueError: `selector` is not an int, a str or a tuple.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import layouts
    >>> value = {"hidden": jnp.zeros((1, 5, 8)), "attention": jnp.zeros((1, 2, 5, 5))}
    >>> layouts.pick("hidden", then=layouts.tokens()).to_grid(value).shape
    (1, 2, 2, 8)
  """
  if not isinstance(selector, (int, str, tuple)) or isinstance(selector, bool):
    raise ValueError(f"Expected `selector` to be an index, a key / attribute name or a tuple path, got {selector!r}.")
  return Pick(selector, then)


@dataclasses.dataclass(frozen=True)
class Transform:
  """pytorch-grad-cam's ``reshape_transform``: a linear ``value -> grid``; see `transform`.

  Args:
    fn: the function ``value -> (B, h, w, C)``, linear in the value (static: define it once).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.layouts import Transform
    >>> layout = Transform(lambda v: v["p3"])  # one level of an FPN dict
    >>> value = {"p3": jnp.zeros((1, 2, 2, 3)), "p4": jnp.ones((1, 1, 1, 3))}
    >>> grid = layout.to_grid(value)
    >>> new = layout.from_grid(grid + 1, value)  # p3 changed, p4 left as it was
    >>> grid.shape, new["p3"].sum().tolist(), new["p4"].sum().tolist()
    ((1, 2, 2, 3), 12.0, 3.0)
  """

  fn: Callable[[Any], Any]

  def to_grid(self, value: Any) -> Any:
    """The grid the function makes of the value.

    Args:
      value: the tapped layer's output (any pytree the function takes).

    Returns:
      ``fn(value)``, a grid ``(B, h, w, C)``.

    Raises:
      ValueError: the function returns something other than a rank-4 array.
    """
    grid = self.fn(value)
    if getattr(grid, "ndim", None) != 4:
      raise ValueError(
        f"Expected the layout function {getattr(self.fn, '__name__', self.fn)!r} to return a channels-last grid "
        f"(B, h, w, C), got {getattr(grid, 'shape', type(grid).__name__)}."
      )
    return grid

  def from_grid(self, grid: Any, value: Any) -> Any:
    """`value` plus the change of the grid mapped back through the function's transpose (`jax.vjp`).

    Args:
      grid: the changed grid ``(B, h, w, C)``.
      value: the layer's original output.

    Returns:
      A value of `value`'s structure; entries the grid does not show are left as they were (exact for a linear
      function that reads each entry at most once, such as a reshape, transpose or slice).
    """
    current, pullback = jax.vjp(self.fn, value)
    (change,) = pullback((grid - current).astype(current.dtype))
    return jax.tree.map(jnp.add, value, change)


def transform(fn: Callable[[Any], Any]) -> Transform:
  """A layout from a function ``value -> (B, h, w, C)`` (pytorch-grad-cam's ``reshape_transform``; e.g. one level of
  an FPN dict, or tokens with a custom order). It must be linear in the value (reshapes, transposes, slices) for
  perturbation methods; define it once (a new lambda per call recompiles).

  Args:
    fn: a function ``value -> (B, h, w, C)``, linear in the value.

  Returns:
    A `Transform` layout.

  Raises:
    TypeError: `fn` is not callable.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import layouts
    >>> to_nhwc = lambda v: v.transpose(0, 2, 3, 1)
    >>> layouts.transform(to_nhwc).to_grid(jnp.zeros((1, 3, 4, 4))).shape
    (1, 4, 4, 3)
  """
  if not callable(fn):
    raise TypeError(f"Expected a callable for `transform`, got {type(fn).__name__}.")
  return Transform(fn)


def as_layout(layout: Any) -> Any:
  """None -> `identity()`; a layout object as it is; a plain function -> `transform(fn)`.

  Args:
    layout: None, a layout (any object with ``to_grid`` and ``from_grid``) or a function ``value -> grid``.

  Returns:
    A layout object.

  Raises:
    TypeError: `layout` is none of these.

  Examples:
    >>> from jaxcam import layouts
    >>> layouts.as_layout(None), layouts.as_layout(layouts.tokens(2))
    (Identity(), Tokens(prefix=2, grid=None))
    >>> type(layouts.as_layout(lambda v: v)).__name__
    'Transform'
  """
  if layout is None:
    return Identity()
  if hasattr(layout, "to_grid") and hasattr(layout, "from_grid"):
    return layout
  if callable(layout):
    return Transform(layout)
  raise TypeError(
    f"Expected `layout` to be None, a jaxcam.layouts object (tokens(), pick(...)) or a function value -> grid, got "
    f"{type(layout).__name__}."
  )
