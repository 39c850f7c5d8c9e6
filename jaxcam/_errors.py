"""Error types and message helpers shared across jaxcam."""

from __future__ import annotations

import difflib
import os
import sys
import types
import warnings
from collections.abc import Iterable, Sequence
from typing import Any


class UnknownNameError(KeyError, ValueError):
  """An unknown name (method, layer, model, class): a `KeyError` that prints its message as is.

  Also a `ValueError`, so ``except KeyError`` and ``except ValueError`` both catch it.

  Args:
    message: the whole message (what was asked for, the closest names, the available ones).

  >>> import jaxcam
  >>> try:
  ...   jaxcam.get_method("gradcamm")
  ... except jaxcam.UnknownNameError as e:
  ...   print(isinstance(e, KeyError) and isinstance(e, ValueError), "gradcam" in str(e))
  True True
  """

  def __str__(self) -> str:  # KeyError would print the repr of the message.
    return str(self.args[0]) if self.args else ""


class LayerNotFoundError(UnknownNameError):
  """A layer path that names no submodule of the model (an `UnknownNameError`).

  Args:
    message: the whole message: the path given, the closest paths and the available ones.

  >>> import jaxcam
  >>> err = jaxcam.LayerNotFoundError("Expected `layer` to name a submodule, got 'layer9'. Closest: 'layer4'.")
  >>> isinstance(err, KeyError), str(err).endswith("'layer4'.")  # printed as is, not as a KeyError repr
  (True, True)
  """


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
  """The closest matches of `name` among `choices` (difflib ratio, best first)."""
  return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


def abbreviate(items: Sequence[str], limit: int = 40) -> str:
  """`a, b, ..., z` with at most `limit` entries, for error messages."""
  items = list(items)
  if len(items) <= limit:
    return ", ".join(items)
  head = items[: limit - 5]
  return ", ".join(head) + f", ... ({len(items) - limit + 1} more) ..., " + ", ".join(items[-4:])


def unknown_name_message(what: str, given: str, choices: Sequence[str], owner: str) -> str:
  """'Expected `what` to name ... of owner, got 'given'. Closest: ... Available: ...'."""
  msg = f"Expected `{what}` to name {owner}, got {given!r}."
  near = closest(given, choices)
  if near:
    msg += " Closest: " + ", ".join(repr(c) for c in near) + "."
  msg += " Available: " + abbreviate(choices) + "."
  return msg


def check_key(key: Any, *, method: str) -> Any:
  """`key` if it is a JAX PRNG key (new-style or a raw uint32 (2,) key; a tracer is fine), else a clear error."""
  import jax
  import jax.numpy as jnp

  if key is None:
    raise ValueError(
      f"{method} draws noise: pass `key=jax.random.key(0)` (an explicit PRNG key; jaxcam has no global RNG)."
    )
  if not isinstance(key, jax.Array) or not (
    jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) or (key.dtype == jnp.uint32 and key.shape == (2,))
  ):
    raise TypeError(f"Expected `key` to be a jax.random key, got {getattr(key, 'dtype', type(key).__name__)}.")
  return key


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
  """`warnings.warn`, attributed to the first caller outside jaxcam (the user's line, whatever the call depth)."""
  level = 2
  frame: types.FrameType | None = sys._getframe(1)
  while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
    frame, level = frame.f_back, level + 1
  warnings.warn(message, category, stacklevel=level)
