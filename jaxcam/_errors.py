"""Error types and message helpers shared across jaxcam."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence


class UnknownNameError(KeyError, ValueError):
  """An unknown name (method, layer, model, class): a `KeyError` that prints its message as is."""

  def __str__(self) -> str:  # KeyError would print the repr of the message.
    return str(self.args[0]) if self.args else ""


class LayerNotFoundError(UnknownNameError):
  """A layer path that names no submodule of the model."""


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
