"""Strict JAX settings and session-scoped models shared by the test suite."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

# Strict rank promotion everywhere; float64 only inside tests that ask for it (jax.enable_x64).
jax.config.update("jax_numpy_rank_promotion", "raise")
# Opt-in: JAXCAM_TEST_CACHE=DIR keeps XLA compilations across runs (.ci/run sets it); by default nothing is
# written outside the repository.
if os.environ.get("JAXCAM_TEST_CACHE"):
  jax.config.update("jax_compilation_cache_dir", os.environ["JAXCAM_TEST_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def light_options(name: str) -> dict:
  """Options that make a method cheap enough for the table-driven tests: a key where it draws noise, one sample
  where it averages over many, two channels where it masks each (the formulas are checked at their defaults
  against peers and numpy elsewhere)."""
  import jaxcam

  defaults = jaxcam.get_method(name).defaults()
  opts: dict = {}
  if "key" in defaults:
    opts["key"] = jax.random.key(0)
  if "num_samples" in defaults:
    opts["num_samples"] = 1
  if "top_n" in defaults:
    opts["top_n"] = 2
  return opts


@pytest.fixture
def strict_promotion():
  """Strict dtype promotion, around jaxcam's own pure functions (Flax itself breaks under it, e.g. nn.avg_pool)."""
  with jax.numpy_dtype_promotion("strict"):
    yield


@pytest.fixture(scope="session")
def parity_data():
  with np.load(os.path.join(FIXTURES, "cam_parity.npz")) as d:
    return {k: d[k] for k in d.files}


@pytest.fixture(scope="session")
def small_linen():
  """A conv net with a non-linear head after its 'body/1' layer, and its variables, at fixed shapes."""
  from tests import models

  module = models.ConvNet()
  x = jax.random.normal(jax.random.key(0), (3, 12, 12, 3))
  variables = module.init(jax.random.key(1), x)
  return module, variables, x
