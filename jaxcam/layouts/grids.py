"""The layouts of grid-like values: the grid itself (`identity`), transformer tokens (`tokens`), 1-D sequences
(`sequence`) and channels-first maps (`channels_first`); see `jaxcam.layouts`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp


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
