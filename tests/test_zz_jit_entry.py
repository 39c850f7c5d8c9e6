"""Every entry point under the user's jax.jit, with x as an argument and as a closed-over constant."""

import jax
import numpy as np
import pytest

import jaxcam


@pytest.fixture(scope="module")
def setup(small_linen):
  module, variables, x = small_linen
  return module, variables, jaxcam.linen_tap(module, variables, "body_1"), x


ENTRY = {
  "gradcam": lambda tap, x, k: jaxcam.gradcam(tap, x, target=1),
  "explain": lambda tap, x, k: jaxcam.explain("gradcam_pp", tap, x, 1).maps,
  "smooth": lambda tap, x, k: jaxcam.explain(jaxcam.smooth("gradcam", num_samples=2, std=0.1), tap, x, key=k).maps,
  "explain_many": lambda tap, x, k: jaxcam.explain_many(["gradcam", "layercam"], tap, x, 1)["layercam"].maps,
  "scorecam": lambda tap, x, k: jaxcam.scorecam(tap, x, target=1),
  "guided_backprop": lambda tap, x, k: jaxcam.guided_backprop(tap, x, 1),
  "guided_gradcam": lambda tap, x, k: jaxcam.guided_gradcam(tap, None, x, 1),
  "sess": lambda tap, x, k: jaxcam.sess(tap, x, 1, scales=(12,)),
}


@pytest.mark.parametrize("name", sorted(ENTRY))
def test_entry_points_under_jit_with_x_as_argument_or_constant(setup, name):
  _, _, tap, x = setup
  f = ENTRY[name]
  key = jax.random.key(0)
  eager = np.asarray(f(tap, x, key))
  as_arg = jax.jit(f)(tap, x, key)
  closed = jax.jit(lambda k: f(tap, x, k))(key)
  nothing = jax.jit(lambda: f(tap, x, key))()
  for got in (as_arg, closed, nothing):
    np.testing.assert_allclose(got, eager, atol=1e-5)
