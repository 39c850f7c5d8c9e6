"""`jaxcam.concepts`: Deep Feature Factorization against a numpy NMF, and its errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam


def test_dff_against_numpy_nmf_on_the_same_initialization(fam):
  d, tap, x, _, (module, variables) = fam
  from jaxcam import concepts as concepts_lib

  out = jaxcam.dff(tap, x, n_components=4, iterations=50, key=jax.random.key(2))
  a = d["block2/A"].astype(np.float64)
  v = np.moveaxis(a, -1, 0).reshape(a.shape[-1], -1)  # (C, B h w), image-major as pytorch-grad-cam's
  offset = v.min(axis=1, keepdims=True)
  v = v - offset
  w0, h0 = concepts_lib.nmf_init(jnp.asarray(v, jnp.float32), 4, jax.random.key(2))
  w, h = np.asarray(w0, np.float64), np.asarray(h0, np.float64)
  for _ in range(50):
    h = h * (w.T @ v) / (w.T @ w @ h + 1e-10)
    w = w * (v @ h.T) / (w @ h @ h.T + 1e-10)
  np.testing.assert_allclose(out.concepts, w + offset, atol=1e-4 * np.abs(w).max())
  maps = np.moveaxis(h.reshape(4, 2, 8, 8), 0, 1)
  maps = (maps - maps.min(axis=(2, 3), keepdims=True)) / (np.ptp(maps, axis=(2, 3), keepdims=True) + 1e-7)
  at_layer = jaxcam.dff(tap, x, n_components=4, iterations=50, key=jax.random.key(2), upsample=False)
  np.testing.assert_allclose(at_layer.maps, maps, atol=1e-3)
  assert out.maps.shape == (2, 4, 16, 16)
  np.testing.assert_allclose(out.error, np.linalg.norm(v - w @ h) / np.linalg.norm(v), rtol=1e-3)
  kernel, bias = variables["params"]["fc"]["kernel"], variables["params"]["fc"]["bias"]  # the declared fc head
  np.testing.assert_allclose(out.scores, (w + offset).T @ np.asarray(kernel) + np.asarray(bias), rtol=1e-3, atol=1e-3)


@pytest.mark.fast
def test_dff_errors_and_viz(fam):
  _, tap, x, _, _ = fam
  with pytest.raises(ValueError, match="`n_components`"):
    jaxcam.dff(tap, x, n_components=17)
  with pytest.raises(ValueError, match="`n_components`"):
    jaxcam.dff(tap, x, n_components=0)
  out = jaxcam.dff(tap, x, n_components=3, iterations=5)
  img = np.asarray(x[0] - x[0].min()) / float(np.ptp(np.asarray(x[0])))
  rgb = jaxcam.viz.concept_overlay(img, out.maps[0])
  assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
  fig = jaxcam.viz.show_concepts(img, out.maps[0], ["a", "b", "c"])
  assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b", "c"]
  g = jaxcam.viz.deprocess_gradient(np.random.default_rng(0).standard_normal((8, 8, 3)))
  assert g.dtype == np.uint8 and abs(float(g.mean()) - 127.5) < 5
