"""`jaxcam.methods.factorization`: Eigen-CAM's projection, KPCA-CAM's kernels, the rows against
pytorch-grad-cam."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam.methods import factorization
from tests import reference as ref
from tests.reference import activations_and_grads


@pytest.mark.fast
@pytest.mark.parametrize("name", ["fem", "kpcacam", "segeigencam"])
def test_rows_match_pytorch_grad_cam(fam, name):
  d, tap, x, ids, _ = fam
  maps = getattr(jaxcam, name)(tap, x, target=ids)
  np.testing.assert_allclose(maps, d[f"pgc/{name}/maps"], atol=2e-5)


@pytest.mark.fast
@pytest.mark.parametrize("kernel", ["rbf", "poly", "linear", "cosine"])
def test_kpca_kernels_against_numpy(fam, kernel):
  """The other scikit-learn kernels, by a float64 numpy KernelPCA written from sklearn's definitions."""
  d, *_ = fam
  a = d["block2/A"][0].astype(np.float64).reshape(-1, d["block2/A"].shape[-1])
  x = a - a.mean(axis=0)
  gamma = 1.0 / x.shape[1]
  dot = x @ x.T
  if kernel == "rbf":
    sq = (x * x).sum(1)
    k = np.exp(-gamma * np.maximum(sq[:, None] + sq[None, :] - 2 * dot, 0))
  elif kernel == "poly":
    k = (gamma * dot + 1.0) ** 3
  elif kernel == "linear":
    k = dot
  else:
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = u @ u.T
  n = len(k)
  one = np.full((n, n), 1.0 / n)
  kc = k - one @ k - k @ one + one @ k @ one
  lam, vec = np.linalg.eigh(kc)
  v = vec[:, -1] * np.sign(vec[np.argmax(np.abs(vec[:, -1])), -1])
  expected = (v * np.sqrt(max(lam[-1], 0))).reshape(d["block2/A"].shape[1:3])
  ours = factorization.kpcacam_map(jnp.asarray(d["block2/A"][:1, None]), kernel=kernel)[0, 0]  # (B, K, h, w, C)
  np.testing.assert_allclose(ours, expected, atol=2e-4 * np.abs(expected).max())


@pytest.mark.fast
def test_option_errors(fam):
  _, tap, x, _, _ = fam
  with pytest.raises(ValueError, match="`k`"):
    jaxcam.fem(tap, x, k=0)
  with pytest.raises(ValueError, match="`kernel`"):
    jaxcam.kpcacam(tap, x, kernel="rbff")
  with pytest.raises(ValueError, match="`num_samples`"):
    jaxcam.smooth_gradcam_pp(tap, x, key=jax.random.key(0), num_samples=0)
  with pytest.raises(ValueError, match="key=jax.random.key"):
    jaxcam.smooth_gradcam_pp(tap, x)


@pytest.mark.fast
def test_eigen_projection_matches_numpy_svd(strict_promotion):
  """The projection is numpy's SVD one up to the sign of the singular vector, per image; the sign is the documented
  rule: the projection correlates non-negatively with the centred channel-sum energy of the features."""
  a, g = activations_and_grads(2, (2, 1, 6, 5, 7))  # (B, K, h, w, C), as a row receives them
  for got, f in ((factorization.eigencam_map(a), a), (factorization.eigengradcam_map(a, g), a * g)):
    got = np.asarray(got, np.float64)
    np.testing.assert_allclose(got, ref.up_to_sign(ref.eigen_raw(f), got), rtol=1e-4, atol=1e-5)
    energy = f.astype(np.float64).sum(-1)
    energy = energy - energy.mean(axis=(-2, -1), keepdims=True)
    assert np.all(np.sum(got * energy, axis=(-2, -1)) >= 0)
