"""Rules the test suite keeps about itself (read from its source, no JAX): float comparisons state a tolerance, and
no test is in the fast tier and the slow tier at once."""

from __future__ import annotations

import ast
import pathlib

import pytest

pytestmark = pytest.mark.fast

TESTS = pathlib.Path(__file__).parent
SAME_PROGRAM = "same program"  # the comment that allows exact equality: the same compiled program runs twice


def loose_comparisons(paths) -> list[str]:
  """`path:line` of each `assert_allclose` call with neither rtol nor atol, and no comment on or up to two lines
  above it saying the same program runs twice."""
  loose = []
  for path in paths:
    source = pathlib.Path(path).read_text()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
      if not (
        isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "assert_allclose"
      ):
        continue
      if {k.arg for k in node.keywords} & {"rtol", "atol"} or len(node.args) > 2:
        continue
      if SAME_PROGRAM not in "\n".join(lines[max(0, node.lineno - 3) : node.end_lineno]).lower():
        loose.append(f"{path}:{node.lineno}")
  return loose


def test_every_assert_allclose_states_a_tolerance():
  """`assert_allclose`'s default rtol=1e-7 is exact equality in float32: between two different programs it passes on
  one CPU and fails on another. A tolerance, or a comment saying the same program runs twice."""
  loose = loose_comparisons(sorted(TESTS.rglob("*.py")))
  assert not loose, f"assert_allclose without rtol/atol (or a '{SAME_PROGRAM}' comment) at {loose}"


def test_the_rule_catches_a_loose_comparison(tmp_path):
  """The check above can fail: a loose call is found; a toleranced one and a commented one are not."""
  path = tmp_path / "test_example.py"
  path.write_text(
    "np.testing.assert_allclose(a, b)\n"
    "np.testing.assert_allclose(a, b, atol=1e-6)\n"
    "# the same program runs twice: exact\n"
    "np.testing.assert_allclose(a, c)\n"
    "x = 1\ny = 2\nassert_allclose(\n  a,\n  d,\n)\n"
  )
  assert loose_comparisons([path]) == [f"{path}:1", f"{path}:7"]


def test_a_test_marked_fast_and_slow_stops_the_collection():
  """conftest's collection hook refuses an item with both marks (a slow parameter of a fast test, say)."""
  from tests import conftest

  class Item:
    nodeid = "tests/test_x.py::test_y[big]"

    def get_closest_marker(self, name):
      return name in ("fast", "slow") or None

  conftest.pytest_collection_modifyitems(None, [])  # nothing marked twice: no error
  with pytest.raises(pytest.UsageError, match=r"test_y\[big\]"):
    conftest.pytest_collection_modifyitems(None, [Item()])
