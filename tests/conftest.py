"""Strict JAX settings and session-scoped models shared by the test suite."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import nets
from tests.nets import Net3d, TinyViT
from tests.seeded import seeded_state_dict

# Strict rank promotion everywhere; float64 only inside tests that ask for it (jax.enable_x64).
jax.config.update("jax_numpy_rank_promotion", "raise")
# Opt-in: JAXCAM_TEST_CACHE=DIR keeps XLA compilations across runs (.ci/run sets it); by default nothing is
# written outside the repository.
# the CLI and explain_model turn on jaxcam's caches in the user's cache folder: the suite never uses them (XLA's
# cache is JAXCAM_TEST_CACHE's, set below; tests/test_compile_cache.py turns jaxcam's on in temporary folders)
os.environ.setdefault("JAXCAM_CACHE_DIR", "off")
if os.environ.get("JAXCAM_TEST_CACHE"):
  jax.config.update("jax_compilation_cache_dir", os.environ["JAXCAM_TEST_CACHE"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def pytest_collection_modifyitems(config, items):
  """The fast tier (``-m fast``) never holds a slow test: an item marked both would run in the three-minute loop."""
  both = [item.nodeid for item in items if item.get_closest_marker("fast") and item.get_closest_marker("slow")]
  if both:
    raise pytest.UsageError(f"tests marked both fast and slow (pick one): {both}")


def light_options(name: str) -> dict:
  """Options that make a method cheap enough for the table-driven tests: a key where it draws noise, one sample
  where it averages over many, two channels where it masks each (the formulas are checked at their defaults
  against peers and numpy elsewhere)."""
  defaults = jaxcam.get_method(name).defaults()
  opts: dict = {}
  if "key" in defaults:
    opts["key"] = jax.random.key(0)
  if "num_samples" in defaults:
    opts["num_samples"] = 1
  if "top_n" in defaults:
    opts["top_n"] = 2
  if "k" in defaults:  # gScoreCAM's channel count
    opts["k"] = 2
  if "steps" in defaults:  # Opti-CAM's optimisation steps
    opts["steps"] = 3
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
  module = nets.ConvNet()
  x = jax.random.normal(jax.random.key(0), (3, 12, 12, 3))
  variables = module.init(jax.random.key(1), x)
  return module, variables, x


@pytest.fixture(scope="session")
def vit():
  """A tiny linen ViT (CLS token, two blocks) at 16 x 16, its variables and two images."""
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3))
  module = TinyViT()
  return module, module.init(jax.random.key(1), x), x


@pytest.fixture(scope="session")
def net3d():
  """A small 3-D conv net on (2, 6, 10, 8, 2) volumes, its variables and the volumes."""
  module = Net3d()
  x = jax.random.normal(jax.random.key(0), (2, 6, 10, 8, 2))
  return module, module.init(jax.random.key(1), x), x


@pytest.fixture(scope="session")
def net(small_linen):
  """ConvNet tapped at body_2 (GAP + Dense after it) as a linen, an nnx and a function tap, same weights."""
  module, variables, x = small_linen
  taps = {
    "linen": jaxcam.linen_tap(module, variables, "body_2"),
    "nnx": jaxcam.nnx_tap(nets.convnet_nnx(variables), "body_2"),
    "function": jaxcam.function_tap(nets.convnet_body, nets.convnet_head, variables),
  }
  return taps, variables, x, jnp.array([1, 0, 4])


def _parity_cnn_fixture(name: str):
  """A peer fixture (`name`.npz) and the ParityCNN holding its weights: data, module, variables."""
  with np.load(os.path.join(FIXTURES, name)) as f:
    d = {k: f[k] for k in f.files}
  return d, nets.ParityCNN(), nets.parity_variables(d)


@pytest.fixture(scope="session")
def fam():
  """The family fixture from pytorch-grad-cam / torchcam (family.npz): data, a tap at block2, x, ids, model."""
  d, module, variables = _parity_cnn_fixture("family.npz")
  return d, jaxcam.linen_tap(module, variables, "block2"), jnp.asarray(d["x"]), d["ids"], (module, variables)


@pytest.fixture(scope="session")
def resnet():
  """The fixture's seeded torchvision ResNet-18 as jaxcam's linen ResNet-18 (normalization inside)."""
  with np.load(os.path.join(FIXTURES, "converters.npz")) as c:
    keys_shapes = list(zip([str(k) for k in c["resnet18/keys"]], json.loads(str(c["resnet18/shapes"]))))
  module, variables = jaxcam.models.resnet18(weights=seeded_state_dict(keys_shapes, seed=7))
  return module, variables


@pytest.fixture(scope="session")
def convnet_b2(small_linen):
  """ConvNet tapped at body_2: module, variables, tap, x."""
  module, variables, x = small_linen
  return module, variables, jaxcam.linen_tap(module, variables, "body_2"), x


@pytest.fixture(scope="session")
def common(small_linen):
  """ConvNet tapped at body_2 (GAP + Dense after it), x and three class ids."""
  module, variables, x = small_linen
  return jaxcam.linen_tap(module, variables, "body_2"), x, jnp.array([1, 0, 4])


@pytest.fixture(scope="session")
def road_fix():
  """The ROAD fixture from pytorch-grad-cam (road.npz): data, a tap at block2, x."""
  d, module, variables = _parity_cnn_fixture("road.npz")
  return d, jaxcam.linen_tap(module, variables, "block2"), jnp.asarray(d["x"])


@pytest.fixture(scope="session")
def parity(parity_data):
  """The parity fixture (cam_parity.npz) with the same network in linen: data, module, variables."""
  d = parity_data
  module = nets.ParityCNN()
  variables = nets.parity_variables(d)
  return d, module, variables


@pytest.fixture(scope="session")
def convnet_b1(small_linen):
  """ConvNet at body_1: the head after it is conv + ReLU + GAP + Dense."""
  module, variables, x = small_linen
  return jaxcam.linen_tap(module, variables, "body_1"), variables, x, jnp.array([1, 0, 4])
