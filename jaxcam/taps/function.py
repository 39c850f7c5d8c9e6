"""Taps on a network split by hand into a body and a head (Equinox, plain JAX)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxcam.taps.base import (
  Tap,
  _check_input_layout,
  _check_output_selector,
  _Run,
  tap_dataclass,
)


@tap_dataclass("params")
@dataclasses.dataclass(frozen=True, eq=False)
class FunctionTap(Tap):
  """A tap on a network split by hand into `body_fn` and `head_fn`; see `function_tap`.

  Args:
    body_fn, head_fn, params, name, layout, output, input_layout: as `function_tap` takes them.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> tap = jaxcam.function_tap(lambda p, x: x * p, lambda p, x, a: a.sum((1, 2)), jnp.float32(2.0))
    >>> isinstance(tap, jaxcam.FunctionTap), tap.layer
    (True, 'A')
  """

  body_fn: Callable
  head_fn: Callable
  params: Any
  name: str = "A"
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"

  @property
  def layers(self) -> tuple[tuple[str, ...], ...]:  # type: ignore[override]
    """``((name,),)``: the one tapped layer's path, as a tuple of path components (read-only).

    Examples:
      >>> import jax.numpy as jnp, jaxcam
      >>> jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.sum((1, 2)), None, name="features").layers
      (('features',),)
    """
    return ((self.name,),)

  @property
  def multi(self) -> bool:  # type: ignore[override]
    """Always False: a function tap taps one layer, so activations and gradients come as one array each.

    Examples:
      >>> import jaxcam
      >>> jaxcam.function_tap(lambda p, x: x, lambda p, x, a: a.sum((1, 2)), None).multi
      False
    """
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

  Args:
    body_fn: ``(params, x) -> A``, the input to the layer to explain (channels-last grid, or any value `layout` maps).
    head_fn: ``(params, x, A) -> output``, the rest of the network.
    params: the pytree both read (its arrays are the tap's leaves).
    name: the layer's name (what `tap.layer` reports). layout, output, input_layout: as for `linen_tap`.

  Returns:
    A `FunctionTap`.

  Raises:
    TypeError: `body_fn` or `head_fn` is not callable.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> params = {"w": jnp.ones((3, 4)), "v": jnp.ones((4, 2))}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> jaxcam.gradcam(tap, jnp.arange(48.0).reshape(1, 4, 4, 3)).shape
    (1, 4, 4)
  """
  if not callable(body_fn) or not callable(head_fn):
    raise TypeError(
      f"Expected `body_fn` and `head_fn` to be callables, got {type(body_fn).__name__} and {type(head_fn).__name__}."
    )
  return FunctionTap(
    body_fn, head_fn, params, name, layout, _check_output_selector(output), _check_input_layout(input_layout)
  )
