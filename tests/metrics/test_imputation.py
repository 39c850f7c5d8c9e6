"""`jaxcam.metrics.imputation`: noisy linear imputation against pytorch-grad-cam and scipy."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxcam import metrics


def _scipy_imputation(x, kept):
  """The 8-neighbour system solved by scipy in float64, written from the ROAD paper's definition."""
  import scipy.sparse
  import scipy.sparse.linalg

  h, w, _ = x.shape
  idx = -np.ones((h, w), int)
  holes = np.argwhere(~kept)
  idx[tuple(holes.T)] = np.arange(len(holes))
  weights = {(dy, dx): (1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
  rows, cols, vals = [], [], []
  b = np.zeros((len(holes), x.shape[2]))
  for n, (i, j) in enumerate(holes):
    total = 0.0
    for (dy, dx), wt in weights.items():
      if (dy, dx) == (0, 0) or not (0 <= i + dy < h and 0 <= j + dx < w):
        continue
      total += wt
      if kept[i + dy, j + dx]:
        b[n] += wt * x[i + dy, j + dx]
      else:
        rows.append(n), cols.append(idx[i + dy, j + dx]), vals.append(-wt)
    rows.append(n), cols.append(n), vals.append(total)
  a = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(len(holes), len(holes)))
  out = np.array(x, np.float64)
  out[tuple(holes.T)] = scipy.sparse.linalg.spsolve(a, b)
  return out


@pytest.mark.fast
def test_imputation_matches_pytorch_grad_cam(road_fix):
  d, _, x = road_fix
  for order in ("morf", "lerf"):
    for p in (10, 50, 90):
      imputed, kept = metrics.remove_and_impute(x, d["maps"], p, order=order, noise=0.0)
      np.testing.assert_array_equal(kept, d[f"{order}/{p}/kept"])
      np.testing.assert_allclose(imputed, d[f"{order}/{p}/imputed"], atol=1e-3)


def test_imputation_on_a_large_hole_against_scipy():
  rng = np.random.default_rng(0)
  x = rng.random((64, 72, 3)).astype(np.float32)
  yy, xx = np.mgrid[:64, :72]
  kept = ((yy - 30) ** 2 + (xx - 40) ** 2 > 26**2) | (rng.random((64, 72)) < 0.02)  # a big disc, a few inside
  ours, iters = metrics.noisy_linear_imputation(jnp.asarray(x), kept, noise=0.0, return_iterations=True)
  np.testing.assert_allclose(ours, _scipy_imputation(x, kept), atol=1e-4)
  assert int(iters) < 40  # the multigrid preconditioner: plain CG needs hundreds here
  np.testing.assert_array_equal(np.asarray(ours)[kept], x[kept])  # kept pixels untouched
  # nothing kept: every pixel the image's mean colour (scipy: a singular matrix); nothing removed: x itself
  none = metrics.noisy_linear_imputation(jnp.asarray(x), np.zeros((64, 72), bool), noise=0.0)
  np.testing.assert_allclose(none, np.broadcast_to(x.mean(axis=(0, 1)), x.shape), atol=1e-6)
  np.testing.assert_array_equal(metrics.noisy_linear_imputation(jnp.asarray(x), np.ones((64, 72), bool)), x)
