"""The documentation site (mkdocs.yml, docs/): every public name is on an API page with a docstring, every page is in
the navigation, relative links resolve, and the generated pages (CLI, method rows) cover the parser and the table.
`.ci/run` builds the site itself in strict mode; these checks run without mkdocs."""

from __future__ import annotations

import argparse
import os
import re
import sys

import pytest

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), os.pardir))
DOCS = os.path.join(ROOT, "docs")
# docs/ files that are not pages of the site
NOT_PAGES: frozenset[str] = frozenset()


def hooks():
  sys.path.insert(0, os.path.join(ROOT, "scripts"))
  try:
    import docs_hooks
  finally:
    sys.path.pop(0)
  return docs_hooks


def pages() -> list[str]:
  """Every markdown file under docs/, relative to it."""
  out = []
  for folder, _, files in os.walk(DOCS):
    out += [os.path.relpath(os.path.join(folder, f), DOCS).replace(os.sep, "/") for f in files if f.endswith(".md")]
  return sorted(out)


def nav_pages() -> list[str]:
  """The pages mkdocs.yml's nav lists (read as text: the file is plain YAML, each entry `- [Title: ]page.md`)."""
  with open(os.path.join(ROOT, "mkdocs.yml"), encoding="utf-8") as f:
    text = f.read()
  nav = text[text.index("\nnav:") :]
  return re.findall(r"^\s*-\s+(?:[^\n]*?:\s+)?([\w./-]+\.md)\s*$", nav, re.M)


@pytest.mark.fast
def test_every_page_is_in_the_navigation_and_every_entry_exists():
  listed = nav_pages()
  assert len(listed) > 30 and "index.md" in listed and "api/index.md" in listed, listed
  assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml's nav"
  missing = sorted(set(pages()) - set(listed) - NOT_PAGES)
  assert not missing, f"docs pages missing from mkdocs.yml's nav: {missing}"
  absent = sorted(set(listed) - set(pages()))
  assert not absent, f"mkdocs.yml's nav lists pages that do not exist: {absent}"


@pytest.mark.fast
def test_relative_links_and_images_resolve():
  broken = []
  for page in pages():
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
      text = re.sub(r"```.*?```", "", f.read(), flags=re.S)  # code blocks hold no links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      path = os.path.normpath(os.path.join(DOCS, os.path.dirname(page), target.split("#")[0]))
      if not path.startswith(DOCS + os.sep) or not os.path.exists(path):
        broken.append(f"{page}: {target}")
  assert not broken, f"links that resolve to no file under docs/: {broken}"
  # the check can fail: a made-up link is reported
  assert not os.path.exists(os.path.join(DOCS, "no-such-page.md"))


def test_every_public_name_is_on_an_api_page_with_a_docstring():
  h = hooks()
  assert h.undocumented_names() == []
  # the check can fail: without the entry-points page, explain (and the others there) are reported
  pages = {k: v for k, v in h.api_pages().items() if k != "api/entry-points.md"}
  assert {"explain", "explain_many", "explain_model"} <= set(h.undocumented_names(pages))
  missing = h.missing_docstrings()
  new = sorted(set(missing) - set(h.KNOWN_UNDOCUMENTED))
  assert not new, f"objects rendered on the API pages without a docstring: {new}"
  fixed = sorted(set(h.KNOWN_UNDOCUMENTED) - set(missing))
  assert not fixed, f"these have docstrings now: delete them from KNOWN_UNDOCUMENTED in scripts/docs_hooks.py: {fixed}"


def test_the_generated_pages_cover_the_parser_and_the_method_table():
  h = hooks()
  import jaxcam
  from jaxcam.cli import build_parser

  cli = h.cli_reference()
  subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
  assert len(subs.choices) >= 5
  for name, sub in subs.choices.items():
    assert f"## `jaxcam {name}`" in cli, name
    for action in sub._actions:
      for flag in action.option_strings:
        if flag not in ("-h", "--help"):
          assert f"`{flag}`" in cli, (name, flag)
  rows = h.method_rows()
  for name in jaxcam.METHODS:
    assert f"### `jaxcam.{name}`" in rows, name
  with open(os.path.join(DOCS, "cli.md"), encoding="utf-8") as f:
    assert h.CLI_MARKER in f.read()
  with open(os.path.join(DOCS, "api", "methods.md"), encoding="utf-8") as f:
    assert h.ROWS_MARKER in f.read()
