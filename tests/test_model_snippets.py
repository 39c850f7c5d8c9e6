"""Every snippet of docs/models.md's "One snippet per family" runs as it is (issue 27 item 7): the README's
"Explaining other models" table points there. Keras and Hugging Face models compile for a while: slow tier."""

from __future__ import annotations

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "models.md"
SLOW = ("keras", "transformers")


def _snippets() -> list[str]:
  text = DOC.read_text(encoding="utf-8")
  section = text.split("## One snippet per family", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def _id(code: str) -> str:
  for name in ("keras", "transformers", "equinox", "scan", "nnx", "linen"):
    if name in code:
      return name
  return "snippet"


SNIPPETS = _snippets()


def test_there_is_a_snippet_per_family():
  assert sorted(_id(s) for s in SNIPPETS) == sorted(["linen", "nnx", "equinox", "keras", "transformers", "scan"])


@pytest.mark.parametrize(
  "code", [pytest.param(s, id=_id(s), marks=[pytest.mark.slow] if _id(s) in SLOW + ("scan",) else []) for s in SNIPPETS]
)
def test_snippet_runs(code):
  import jax

  with jax.numpy_rank_promotion("allow"):  # as a user runs them (the suite raises on implicit rank promotion)
    exec(compile(code, f"docs/models.md[{_id(code)}]", "exec"), {"__name__": "snippet"})
