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
