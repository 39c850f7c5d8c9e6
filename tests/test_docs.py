"""The reference pages generated from the code are up to date (docs/methods.md from the method, provider and metric
tables)."""

from __future__ import annotations

import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.mark.fast
def test_the_method_reference_page_is_generated_from_the_tables():
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  try:
    import method_reference
  finally:
    sys.path.pop(0)
  with open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8") as f:
    page = f.read()
  expected = method_reference.render()
  assert page == expected, "docs/methods.md is out of date: run python scripts/method_reference.py"
  assert "| `gradcam_pp_exact` |" in page and "| `masked_scores` |" in page and "| `road` |" in page


def cited_tests(text: str) -> list[tuple[str, str]]:
  """``(module path under tests/, test name)`` of every ``module::test_name`` a page cites (a bare ``::test`` cites
  the module named last in the same table cell)."""
  import re

  found = []
  for cell in re.findall(r"\|([^|\n]*::[^|\n]*)", text):
    module = None
    for m in re.finditer(r"`(?:([\w/]+)::)?(test_\w+)", cell):
      module = m.group(1) or module
      if module is not None:
        found.append((module, m.group(2)))
  return found


@pytest.mark.fast
def test_every_guarantee_names_tests_that_exist(tmp_path):
  """docs/guarantees.md: each test a promise cites exists (a renamed or deleted test fails here, not silently)."""
  import ast

  with open(os.path.join(ROOT, "docs", "guarantees.md"), encoding="utf-8") as f:
    cited = cited_tests(f.read())
  assert len(cited) > 30
  missing = []
  for module, name in cited:
    path = os.path.join(ROOT, "tests", module + ".py")
    names = set()
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        names = {n.name for n in ast.walk(ast.parse(f.read())) if isinstance(n, ast.FunctionDef)}
    if name not in names:
      missing.append(f"{module}::{name}")
  assert not missing, f"docs/guarantees.md cites tests that do not exist: {missing}"
  assert cited_tests("| a | `test_io::test_x`, `test_y` |") == [("test_io", "test_x"), ("test_io", "test_y")]
