"""Rules the package keeps about its own shape (read from its source, no JAX): modules that fit in a head, and taps
reached only through their public protocol."""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.fast

PACKAGE = pathlib.Path(__file__).parent.parent / "jaxcam"
MAX_LINES = 500


def _modules():
  return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_500_lines():
  long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
  assert not long, f"split these by concern (at most {MAX_LINES} lines each): {long}"


def private_taps_uses(path: pathlib.Path) -> list[str]:
  """`name` of each private taps name that `path` imports or reads (``from jaxcam.taps... import _x``,
  ``taps._x``, ``taps_lib._x``)."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxcam.taps"):
      found += [a.name for a in node.names if a.name.startswith("_")]
    if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
      if isinstance(node.value, ast.Name) and node.value.id in ("taps", "taps_lib"):
        found.append(node.attr)
  return found


def test_no_module_outside_the_taps_reaches_for_their_private_names(tmp_path):
  outside = [p for p in _modules() if "taps" not in p.relative_to(PACKAGE).parts]
  uses = {str(p.relative_to(PACKAGE)): u for p in outside if (u := private_taps_uses(p))}
  assert not uses, f"use the Tap protocol (dense, layer_index, intercept) instead: {uses}"
  # the check can fail: it finds both spellings
  probe = tmp_path / "probe.py"
  probe.write_text("from jaxcam.taps.nnx import _nnx_get\nfrom jaxcam import taps as taps_lib\ntaps_lib._param_paths\n")
  assert private_taps_uses(probe) == ["_nnx_get", "_param_paths"]


def hidden_state(path: pathlib.Path) -> list[str]:
  """Each use of `contextvars` in `path` (an import, or an attribute of the module): state that would change what
  a public function computes without appearing in its arguments."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [a.name for a in node.names if a.name == "contextvars"]
    if isinstance(node, ast.ImportFrom) and node.module == "contextvars":
      found += [f"contextvars.{a.name}" for a in node.names]
  return found


def test_no_hidden_state_in_the_package(tmp_path):
  """No `ContextVar`: the spatial rank and the progress label travel as arguments (read from the shapes)."""
  uses = {str(p.relative_to(PACKAGE)): u for p in _modules() if (u := hidden_state(p))}
  assert not uses, f"pass these explicitly instead: {uses}"
  probe = tmp_path / "probe.py"
  probe.write_text("import contextvars\nfrom contextvars import ContextVar\n")
  assert hidden_state(probe) == ["contextvars", "contextvars.ContextVar"]


MAX_FUNCTION_LINES = 80
LONG_REASON = "Long on purpose:"


def long_functions(path: pathlib.Path) -> dict[str, int]:
  """``{name: code lines}`` of the functions in `path` longer than `MAX_FUNCTION_LINES` (the docstring not
  counted) whose docstring does not give a reason (a sentence starting with `LONG_REASON`)."""
  found = {}
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node) or ""
      first = node.body[0]
      doc_lines = first.end_lineno - first.lineno + 1 if doc and isinstance(first, ast.Expr) else 0
      lines = node.end_lineno - node.lineno + 1 - doc_lines
      if lines > MAX_FUNCTION_LINES and LONG_REASON not in doc:
        found[node.name] = lines
  return found


def test_no_function_is_over_80_lines_without_a_reason(tmp_path):
  long = {str(p.relative_to(PACKAGE)): f for p in _modules() if (f := long_functions(p))}
  assert not long, f"split these (or say why not: '{LONG_REASON} ...' in the docstring): {long}"
  probe = tmp_path / "probe.py"
  body = "\n".join(f"  x{i} = {i}" for i in range(81))
  probe.write_text(f'def f():\n  """Short doc."""\n{body}\n\n\ndef g():\n  """{LONG_REASON} a table."""\n{body}\n')
  assert long_functions(probe) == {"f": 82}
