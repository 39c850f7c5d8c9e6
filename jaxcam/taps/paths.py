"""Layer paths, one syntax everywhere: a "/"-separated string ("layer4/1/conv2") or a tuple of names and ints
(("blocks", 6)); linen names list entries `blocks_6`, and "blocks/6" matches it too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxcam._errors import LayerNotFoundError


def parse_path(layer: Any, *, argname: str = "layer") -> tuple[str, ...]:
  """Canonical tuple-of-strings form of one layer path ("a/b/0" or ("a", "b", 0))."""
  if isinstance(layer, str):
    parts = tuple(p for p in layer.split("/") if p)
  elif isinstance(layer, tuple) and all(isinstance(p, (str, int)) for p in layer):
    parts = tuple(str(p) for p in layer)
  else:
    raise TypeError(
      f"Expected `{argname}` to be a '/'-separated path string or a tuple of names and ints, got "
      f"{type(layer).__name__} {layer!r}. Example: 'layer4/1' or ('blocks', 6); a list of paths asks for "
      "several layers."
    )
  if not parts:
    raise ValueError(f"Expected `{argname}` to name a submodule, got an empty path {layer!r}.")
  return parts


def format_path(path: Sequence[Any]) -> str:
  """ "/"-joined string form of a path tuple."""
  return "/".join(str(p) for p in path)


def _parse_layers(layer: Any) -> tuple[tuple[tuple[str, ...], ...], bool]:
  """(paths, multi): a list of paths gives several layers, anything else one."""
  if isinstance(layer, list):
    if not layer:
      raise ValueError("Expected `layer` to be a path or a non-empty list of paths, got [].")
    paths = tuple(parse_path(l) for l in layer)
    if len(set(paths)) != len(paths):
      raise ValueError(f"Expected distinct layer paths in `layer`, got duplicates in {layer!r}.")
    return paths, True
  return (parse_path(layer),), False


def linen_aliases(parts: tuple[str, ...]) -> set[str]:
  """Strings a linen module path may have for `parts`: "blocks/6" also matches linen's "blocks_6"."""
  merged: list[str] = []
  for p in parts:
    if p.isdigit() and merged:
      merged[-1] = f"{merged[-1]}_{p}"
    else:
      merged.append(p)
  return {"/".join(parts), "/".join(merged)}


def _linen_module_path(tree, parts: tuple[str, ...]) -> list[str]:
  """Keys leading to the sown value for a requested path, resolving 'blocks/6' vs 'blocks_6'."""
  keys: list[str] = []
  node = tree
  i = 0
  while i < len(parts):
    p = parts[i]
    if p in node:
      keys.append(p)
      node = node[p]
      i += 1
    elif i + 1 < len(parts) and f"{p}_{parts[i + 1]}" in node:
      keys.append(f"{p}_{parts[i + 1]}")
      node = node[keys[-1]]
      i += 2
    else:
      raise LayerNotFoundError(f"No submodule {format_path(parts)!r} (stopped at {p!r}).")
  return keys
