"""`jaxcam.chunking`: chunked map and sum against Python loops, and their errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 50])
def test_chunked_map_and_sum_equal_python_loops(chunk_size):
  xs = {"a": jnp.arange(7.0)[:, None] * jnp.ones((7, 3)), "b": jnp.arange(7)}
  fn = lambda e: jnp.sin(e["a"]) * (e["b"] + 1).astype(jnp.float32)
  expected = np.stack([np.sin(np.arange(3) * 0 + i) * (i + 1) for i in range(7)])
  with jax.numpy_dtype_promotion("strict"):
    np.testing.assert_allclose(jaxcam.chunked_map(fn, xs, chunk_size=chunk_size), expected, rtol=1e-6)
    np.testing.assert_allclose(jaxcam.chunked_sum(fn, xs, chunk_size=chunk_size), expected.sum(0), rtol=1e-5)
    # under jit and grad as well
    g = jax.grad(lambda s: jaxcam.chunked_sum(lambda v: jnp.sum((s * v) ** 2), jnp.arange(5.0), chunk_size=2))(2.0)
  np.testing.assert_allclose(g, 2 * 2.0 * np.sum(np.arange(5.0) ** 2), rtol=1e-6)


@pytest.mark.fast
def test_chunked_map_errors():
  with pytest.raises(ValueError, match="`chunk_size` to be a positive int.*got 0"):
    jaxcam.chunked_map(jnp.sin, jnp.ones(3), chunk_size=0)
  with pytest.raises(ValueError, match="`chunk_size`.*got 2.5"):
    jaxcam.chunked_sum(jnp.sin, jnp.ones(3), chunk_size=2.5)
