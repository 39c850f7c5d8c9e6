"""The README is a front page (issue 29): at most 250 lines, its two commands are the ones CI runs, and every
relative link and picture it has resolves (anchors included)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _anchor(heading: str) -> str:
  """The anchor MkDocs / GitHub give a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.fast
def test_readme_is_a_front_page():
  assert len(README.splitlines()) <= 250


@pytest.mark.fast
def test_the_two_commands_are_the_ones_ci_runs():
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
  assert 'pip install -e ".[pretrained]" && jaxcam demo --out jaxcam-demo' in README
  assert 'pip install -e ".[test]" && python -m pytest' in README
  assert "bash -c 'pip install -e \".[test]\" && python -m pytest'" in ci


@pytest.mark.fast
def test_every_relative_link_resolves():
  links = re.findall(r"\]\(([^)\s]+)\)", README)
  relative = [link for link in links if not re.match(r"[a-z]+://", link)]
  assert relative, "the README links into the docs"
  for link in relative:
    path, _, anchor = link.partition("#")
    target = ROOT / path
    assert target.exists(), f"README links to {link!r}, which does not exist"
    if anchor:
      headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), flags=re.M)
      assert anchor in {_anchor(h) for h in headings}, f"README links to {link!r}: no such heading"


@pytest.mark.fast
def test_every_notebook_named_exists():
  for name in re.findall(r"`(?:notebooks/)?(\w+\.ipynb)`", README):
    assert (ROOT / "notebooks" / name).exists(), name
