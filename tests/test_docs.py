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
