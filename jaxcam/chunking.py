"""One chunked map for everything that evaluates many copies: derivative directions, noisy or masked inputs.

`chunked_map(fn, xs, chunk_size=n)` is ``jnp.stack([fn(x) for x in xs])`` computed `n` elements at a time
(`jax.vmap` inside `jax.lax.map`), so peak memory grows with `n`, not with ``len(xs)``. `chunked_sum` reduces as it
goes (a `jax.lax.scan` over chunks), so not even the stacked results are held. Both compile to one program,
work under `jax.jit`, `jax.vmap` and `jax.grad`, and give the same result for every chunk size (up to the order
of floating-point additions in `chunked_sum`). Given a ``progress=`` label (jaxcam passes one for eager calls of
expensive methods, or ``progress=True``) each chunk also advances a progress bar through a host callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _progress

__all__ = ["chunked_map", "chunked_sum", "check_chunk_size"]


def check_chunk_size(chunk_size: Any, *, argname: str = "chunk_size") -> int:
  """`chunk_size` as a positive int, or a clear error naming the argument.

  Args:
    chunk_size: the value to check (a bool is refused, though Python counts it as an int).
    argname: the argument's name in the error message.

  Returns:
    `chunk_size`, unchanged.

  Raises:
    ValueError: not an int, a bool, or less than 1.

  Examples:
    >>> from jaxcam.chunking import check_chunk_size
    >>> check_chunk_size(4)
    4
    >>> check_chunk_size(0, argname="batch_size")
    Traceback (most recent call last):
    ...
    ValueError: Expected `batch_size` to be a positive int (copies evaluated at once), got 0.
  """
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
    raise ValueError(f"Expected `{argname}` to be a positive int (copies evaluated at once), got {chunk_size!r}.")
  return chunk_size


def _length(xs: Any) -> int:
  leaves = jax.tree_util.tree_leaves(xs)
  if not leaves:
    raise ValueError("Expected `xs` to hold at least one array to map over, got an empty pytree.")
  return leaves[0].shape[0]


def _split(xs: Any, size: int) -> tuple[Any, Any, int, int]:
  """(full chunks ``(n // size, size, ...)``, the rest ``(n % size, ...)`` or None, their counts)."""
  n = _length(xs)
  full, rest = divmod(n, size)
  head = jax.tree.map(lambda v: v[: full * size].reshape((full, size) + v.shape[1:]), xs)
  tail = jax.tree.map(lambda v: v[full * size :], xs) if rest else None
  return head, tail, full, rest


def chunked_map(
  fn: Callable[[Any], Any], xs: Any, *, chunk_size: int, vectorized: bool = False, progress: str | None = None
) -> Any:
  """``fn`` over the leading axis of `xs` (a pytree), `chunk_size` elements at a time.

  Args:
    fn: ``fn(element) -> pytree`` (one element of `xs`), or ``fn(chunk) -> pytree`` with ``vectorized=True``.
    xs: a pytree of arrays sharing a leading axis (the elements).
    chunk_size: elements evaluated at once (>= 1); peak memory grows with it, not with ``len(xs)``.
    vectorized: `fn` already takes a whole chunk (a leading axis of up to `chunk_size`), e.g. to mix sequential
      and batched work inside it; otherwise it takes one element and is `jax.vmap`-ed.
    progress: a label to show a progress bar under on stderr, one tick per chunk (host callbacks); None: none.

  Returns:
    ``fn``'s outputs stacked along a new leading axis, as ``jnp.stack([fn(x) for x in xs])``.

  Raises:
    ValueError: `chunk_size` is not a positive int.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.chunking import chunked_map
    >>> chunked_map(lambda v: v * 2, jnp.arange(5.0), chunk_size=2)  # chunks of 2, 2 and 1
    Array([0., 2., 4., 6., 8.], dtype=float32)
  """
  chunk_size = check_chunk_size(chunk_size)
  n = _length(xs)
  size = max(1, min(chunk_size, n))
  head, tail, full, rest = _split(xs, size)
  batched = fn if vectorized else jax.vmap(fn)
  report = _progress.tick(n, size, progress)

  def body(chunk):
    out = batched(chunk)
    if report is not None:
      report(out, size)
    return out

  outs = jax.lax.map(body, head)
  outs = jax.tree.map(lambda v: v.reshape((full * size,) + v.shape[2:]), outs)
  if rest:
    last = batched(tail)
    if report is not None:
      report(last, rest)
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), outs, last)
  return outs


def chunked_sum(fn: Callable[[Any], Any], xs: Any, *, chunk_size: int, progress: str | None = None) -> Any:
  """``sum_i fn(xs[i])`` (a pytree sum), `chunk_size` elements at a time; memory bounded by the chunk (`progress`
  as in `chunked_map`).

  A last, shorter chunk is evaluated on its own (no padding, no wasted work).

  Args:
    fn: ``fn(element) -> pytree`` of one element of `xs` (it is `jax.vmap`-ed over each chunk).
    xs: a pytree of arrays sharing a leading axis (the elements).
    chunk_size: elements evaluated at once (>= 1).
    progress: a label for a progress bar on stderr (see `chunked_map`); None: none.

  Returns:
    The pytree sum of ``fn(x)`` over the elements (the shapes of one ``fn(x)``).

  Raises:
    ValueError: `chunk_size` is not a positive int.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.chunking import chunked_sum
    >>> chunked_sum(lambda v: v ** 2, jnp.arange(5.0), chunk_size=2)  # 0 + 1 + 4 + 9 + 16
    Array(30., dtype=float32)
  """
  chunk_size = check_chunk_size(chunk_size)
  n = _length(xs)
  size = max(1, min(chunk_size, n))
  head, tail, full, rest = _split(xs, size)
  batched = jax.vmap(fn)
  report = _progress.tick(n, size, progress)

  def add_chunk(total, chunk, count):
    part = jax.tree.map(lambda v: jnp.sum(v, axis=0), batched(chunk))
    if report is not None:
      report(part, count)
    return part if total is None else jax.tree.map(jnp.add, total, part)

  total = add_chunk(None, jax.tree.map(lambda v: v[0], head), size)
  if full > 1:
    total, _ = jax.lax.scan(lambda t, c: (add_chunk(t, c, size), None), total, jax.tree.map(lambda v: v[1:], head))
  if rest:
    total = add_chunk(total, tail, rest)
  return total
