"""The layouts of structured values: a field of a tuple, dict or dataclass (`pick`) and any linear function
(`transform`); `as_layout` turns what a user passes as ``layout=`` into a layout. See `jaxcam.layouts`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam.layouts.grids import Identity, describe


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
