"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml): pages generated from the code at build time,
so they cannot drift, and the checks mkdocstrings does not make.

- ``<!-- cli-reference -->`` in docs/cli.md becomes every subcommand's usage and options, rendered from
  `jaxcam.cli.build_parser`.
- ``<!-- method-rows -->`` in docs/api/methods.md becomes one section per registered method row
  (``jaxcam.<name>``: its title, needs, options and cost, then its row function through mkdocstrings).
- Before any page is built, every name in ``jaxcam.__all__`` must be documented on an API page (a ``::: path``
  block resolving to the same object, or a method row), and everything those blocks render must have a docstring;
  otherwise the build fails.

tests/test_site.py runs the same checks without building the site.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import sys
import types

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
DOCS = os.path.join(ROOT, "docs")
API = os.path.join(DOCS, "api")
CLI_MARKER = "<!-- cli-reference -->"
ROWS_MARKER = "<!-- method-rows -->"
# Names of jaxcam.__all__ that are data, not functions, classes or modules: Python gives them no docstring, so the
# API pages describe them in prose, under a heading naming them.
DATA_NAMES = ("METHODS", "__version__")
# Rendered objects that had no docstring when the site was set up (protocol methods of the layout and target
# classes, mostly). Write the docstring, then delete the entry: tests/test_site.py fails while a listed object has
# one, and the build fails on any object missing one that is not listed.
KNOWN_UNDOCUMENTED: tuple[str, ...] = ()  # objects on the API pages allowed without a docstring (keep it empty)
_IDENT = re.compile(r"^:::\s+([\w.]+)\s*$", re.M)


def _import() -> types.ModuleType:
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  return importlib.import_module("jaxcam")


def resolve(path: str):
  """The object a ``::: path`` block documents (modules imported, then attributes followed)."""
  parts = path.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    for name in parts[i:]:
      obj = getattr(obj, name)
    return obj
  raise ImportError(f"cannot import {path!r}")


def api_pages() -> dict[str, str]:
  """``{path relative to docs/: text}`` of every API page."""
  pages = {}
  for name in sorted(os.listdir(API)):
    if name.endswith(".md"):
      with open(os.path.join(API, name), encoding="utf-8") as f:
        pages[f"api/{name}"] = f.read()
  return pages


def identifiers(pages: dict[str, str]) -> list[str]:
  """Every ``::: path`` block's path, in page order."""
  return [m.group(1) for text in pages.values() for m in _IDENT.finditer(text)]


def undocumented_names(pages: dict[str, str] | None = None) -> list[str]:
  """Names of ``jaxcam.__all__`` that no API page documents."""
  jaxcam = _import()
  from jaxcam.methods.table import METHODS

  pages = api_pages() if pages is None else pages
  documented = {id(resolve(path)) for path in identifiers(pages)}
  text = "\n".join(pages.values())
  rows_page = any(ROWS_MARKER in t for t in pages.values())
  missing = []
  for name in jaxcam.__all__:
    if name in DATA_NAMES:
      ok = re.search(rf"^#+ .*`jaxcam\.{re.escape(name)}`", text, re.M) is not None
    elif name in METHODS and name not in vars(jaxcam):  # generated from the table: the rows page
      ok = rows_page
    else:
      ok = id(getattr(jaxcam, name)) in documented
    if not ok:
      missing.append(name)
  return missing


def _own_doc(obj) -> str:
  """An object's own docstring ('' when it has none; a class does not inherit one, nor a dataclass' signature)."""
  if inspect.isclass(obj):
    doc = obj.__dict__.get("__doc__") or ""
    if doc.startswith(f"{obj.__name__}("):  # dataclasses and NamedTuples write their signature
      return ""
    return doc.strip()
  if isinstance(obj, property):
    obj = obj.fget
  return (inspect.getdoc(obj) or "").strip()  # a method overriding a documented one inherits its docstring


def _class_members(cls) -> list[tuple[str, object]]:
  """Public methods and properties a class defines itself (what mkdocstrings renders under it)."""
  out = []
  for name, value in vars(cls).items():
    if name.startswith("_"):
      continue
    if isinstance(value, (staticmethod, classmethod)):
      value = value.__func__
    if inspect.isfunction(value) or isinstance(value, property):
      out.append((name, value))
  return out


def missing_docstrings(pages: dict[str, str] | None = None) -> list[str]:
  """Everything the API pages render that has no docstring: each ``:::`` object, a module's exported functions and
  classes, and a class's public methods."""
  _import()
  pages = api_pages() if pages is None else pages
  missing: list[str] = []

  def check(path: str, obj, depth: int = 0) -> None:
    if isinstance(obj, (str, int, float, tuple, dict, list, frozenset)) or obj is None:
      return  # data: described in prose
    if not _own_doc(obj):
      missing.append(path)
    if inspect.ismodule(obj) and depth == 0:
      for name in getattr(obj, "__all__", ()):
        member = getattr(obj, name)
        if inspect.isfunction(member) or inspect.isclass(member):
          check(f"{path}.{name}", member, 1)
    elif inspect.isclass(obj) and depth <= 1:
      for name, member in _class_members(obj):
        check(f"{path}.{name}", member, 2)

  from jaxcam.methods.table import METHODS

  for path in identifiers(pages):
    check(path, resolve(path))
  for name, spec in METHODS.items():
    check(f"{spec.fn.__module__}.{spec.fn.__qualname__} (row {name})", spec.fn)
  return sorted(set(missing))


def cli_reference() -> str:
  """Every ``jaxcam`` subcommand: its usage and a table of its arguments, from the argparse parser."""
  _import()
  from jaxcam.cli import build_parser

  parser = build_parser()
  fmt = argparse.HelpFormatter("jaxcam", width=100)
  lines = []
  subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
  helps = {c.dest: c.help for c in subs._choices_actions}
  for name, sub in subs.choices.items():
    sub.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    lines += [f"## `jaxcam {name}`", "", helps.get(name) or sub.description or "", ""]
    lines += ["```text", sub.format_usage().strip(), "```", ""]
    lines += ["| argument | default | help |", "|---|---|---|"]
    for action in sub._actions:
      if isinstance(action, argparse._HelpAction):
        continue
      flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}`"
      if action.option_strings and action.nargs != 0:
        flags += f" `{action.metavar or action.dest.upper()}`"
      default = "" if action.default in (None, False, argparse.SUPPRESS) else f"`{action.default!r}`"
      text = fmt._expand_help(action) if action.help else ""
      if action.choices and "{" not in text:
        text += " (one of " + ", ".join(f"`{c}`" for c in action.choices) + ")"
      cells = (flags, default, text)
      lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    lines.append("")
  return "\n".join(lines)


def method_rows() -> str:
  """One section per registered method row: the public function ``jaxcam.<name>`` and its row function."""
  _import()
  from jaxcam.methods.table import METHODS

  lines = []
  seen: dict[str, str] = {}  # row function path -> the first row showing it (one rendering: one anchor)
  for name, spec in METHODS.items():
    fn = spec.fn
    path = f"{fn.__module__}.{fn.__qualname__}"
    opts = ", ".join(f"`{k}={v!r}`" for k, v in spec.defaults().items() if not callable(v)) or "none"
    lines += [
      f"### `jaxcam.{name}`",
      "",
      f"**{spec.title}**. `jaxcam.{name}(tap, x, target=None, **options)` returns the maps of "
      f'`jaxcam.explain("{name}", tap, x, target, **options)`. Output: {spec.output}; needs: '
      f"{', '.join(f'`{n}`' for n in spec.needs) or 'activations only'}; options: {opts}.",
      "",
      f"Cost per image: {spec.cost()}.",
      "",
    ]
    if path in seen:
      lines += [f"Row function: `{path}`, shown under [`jaxcam.{seen[path]}`](#jaxcam{seen[path]}).", ""]
    else:
      seen[path] = name
      lines += [f"::: {path}", "    options:", "      heading_level: 4", ""]
  return "\n".join(lines)


def _fail(message: str) -> None:
  from mkdocs.exceptions import PluginError

  raise PluginError(message)


def on_pre_build(config, **kwargs) -> None:
  """Fail the build when a public name is not on an API page or something rendered has no docstring."""
  missing = undocumented_names()
  if missing:
    _fail(f"jaxcam.__all__ names on no API page (docs/api/*.md): {missing}")
  no_doc = [p for p in missing_docstrings() if p not in KNOWN_UNDOCUMENTED]
  if no_doc:
    _fail(f"objects documented on the API pages without a docstring: {no_doc}")


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
  """Expand the generated sections."""
  if CLI_MARKER in markdown:
    markdown = markdown.replace(CLI_MARKER, cli_reference())
  if ROWS_MARKER in markdown:
    markdown = markdown.replace(ROWS_MARKER, method_rows())
  return markdown
