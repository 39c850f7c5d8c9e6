"""Every public callable documents its arguments, its result and an example (issue 29), and the generated method
functions (``jaxcam.gradcam``, ...) show their row's own options, with defaults, in their signature and docstring."""

from __future__ import annotations

import doctest
import inspect
import types

import pytest

import jaxcam
from jaxcam._public import COMMON_ARGS, public_function

ALLOWED: dict[str, str] = {}  # name -> why its docstring may lack Args / Returns / an example (empty: keep it so)


def _callables():
  out = []
  for name in jaxcam.__all__:
    obj = getattr(jaxcam, name)
    if callable(obj) and not isinstance(obj, types.ModuleType):
      out.append((name, obj))
  return out


def _takes_arguments(obj) -> bool:
  try:
    params = inspect.signature(obj).parameters
  except (TypeError, ValueError):
    return True
  return bool(params)


def _missing(name, obj) -> list[str]:
  doc = inspect.getdoc(obj) or ""
  missing = []
  if _takes_arguments(obj) and "Args:" not in doc:
    missing.append("Args:")
  if not inspect.isclass(obj) and "Returns:" not in doc:
    missing.append("Returns:")
  if ">>>" not in doc:
    missing.append(">>> example")
  return missing


@pytest.mark.fast
def test_public_callables_document_args_returns_and_an_example():
  callables = _callables()
  assert len(callables) > 60  # the 76 callables of jaxcam.__all__ (today), method functions included
  missing = {name: m for name, obj in callables if name not in ALLOWED for m in [_missing(name, obj)] if m}
  assert not missing, f"docstrings missing sections (add them, do not grow ALLOWED): {missing}"


SUBMODULES = (
  "batch", "chunking", "compile_cache", "core", "derivatives", "guided", "io", "layouts", "lrp", "metrics", "models",
  "postprocess", "providers", "stream", "study", "targets", "viz",
)  # fmt: skip  # the submodules with their own API-reference sections (docs/api/*.md)


def _submodule_callables():
  import importlib

  out = []
  for mod_name in SUBMODULES:
    mod = importlib.import_module(f"jaxcam.{mod_name}")
    for name in mod.__all__:
      obj = getattr(mod, name)
      if (
        callable(obj) and not isinstance(obj, types.ModuleType) and getattr(obj, "__module__", "").startswith("jaxcam")
      ):
        out.append((f"jaxcam.{mod_name}.{name}", obj))
  return out


@pytest.mark.fast
def test_submodule_public_callables_document_args_returns_and_an_example():
  callables = _submodule_callables()
  assert len(callables) > 140  # 155 when this test was written
  missing = {name: m for name, obj in callables for m in [_missing(name, obj)] if m}
  assert not missing, f"docstrings missing sections: {missing}"


@pytest.mark.fast
def test_allow_list_is_current():
  names = dict(_callables())
  stale = sorted(n for n in ALLOWED if n not in names or not _missing(n, names[n]))
  assert not stale, f"remove from ALLOWED (gone, or documented now): {stale}"


@pytest.mark.fast
@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "scorecam", "sscam", "kpcacam", "finercam", "refinecam"])
def test_method_function_signature_lists_the_row_options(name):
  fn = getattr(jaxcam, name)
  params = inspect.signature(fn).parameters
  defaults = jaxcam.get_method(name).defaults()
  common = [n for n, _ in COMMON_ARGS]
  assert list(params)[: len(common)] == common  # explain's arguments first, in explain's order
  assert list(params)[len(common) :] == list(defaults)  # then the row's options, nothing else (no **options)
  for option, default in defaults.items():
    assert params[option].kind is inspect.Parameter.KEYWORD_ONLY
    assert params[option].default == default
  explain = inspect.signature(jaxcam.explain).parameters
  for n in common[2:]:
    assert params[n].default == explain[n].default, n


@pytest.mark.fast
def test_scorecam_help_shows_its_options_with_defaults():
  doc = inspect.getdoc(jaxcam.scorecam)
  for option, default in {"chunk_size": 32, "top_n": None, "convention": "pgc", "baseline": 0.0}.items():
    assert f"{option} (default {default!r}):" in doc
  assert "Same arguments as" not in doc
  sig = str(inspect.signature(jaxcam.scorecam))
  assert "chunk_size=32" in sig and "top_n=None" in sig and "**" not in sig


@pytest.mark.fast
def test_every_row_option_has_a_real_description():
  generic = {
    (name, option)
    for name, spec in jaxcam.METHODS.items()
    for option in spec.defaults()
    if "an option of the" in inspect.getdoc(public_function(spec)).split(f"{option} (default", 1)[1].split("\n")[0]
  }
  assert not generic, f"add these options to jaxcam._public.OPTION_DOCS: {sorted(generic)}"


@pytest.mark.fast
def test_wrapped_row_function_documents_its_extra_option():
  fn = public_function(jaxcam.smooth("gradcam", num_samples=2))
  assert fn.__name__ == "smooth(gradcam)"
  assert inspect.signature(fn).parameters["key"].default is None
  assert "key (default None): a `jax.random` key for the noisy copies" in inspect.getdoc(fn)


def _run_example(fn):
  runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
  tests = doctest.DocTestFinder().find(fn, fn.__name__, globs={})
  assert tests and tests[0].examples, f"{fn.__name__} has no example"
  for t in tests:
    runner.run(t)
  result = runner.summarize(verbose=False)
  assert result.attempted > 0 and result.failed == 0, f"{fn.__name__}'s example failed: {result}"


_DEFAULT_EXAMPLES = ("gradcam", "layercam", "fem")  # ~1 s each after the first compile; the rest run in slow


@pytest.mark.parametrize(
  "name", [n if n in _DEFAULT_EXAMPLES else pytest.param(n, marks=pytest.mark.slow) for n in sorted(jaxcam.METHODS)]
)
def test_method_function_example_runs(name):
  _run_example(public_function(name))  # the generated functions live in no module: pytest's doctests miss them
