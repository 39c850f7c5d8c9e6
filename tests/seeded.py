"""Numpy-seeded state dicts shared by scripts/make_fixtures.py (torch side) and the tests (JAX side)."""

from __future__ import annotations

import numpy as np


def seeded_state_dict(keys_shapes, seed: int = 0) -> dict[str, np.ndarray]:
  """Deterministic weights for (key, shape) pairs in torch layout: He-scaled weights, BN stats near 1."""
  out = {}
  for i, (key, shape) in enumerate(keys_shapes):
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng([seed, i])
    if key.endswith("num_batches_tracked"):
      out[key] = np.zeros(shape, np.int64)
    elif key.endswith("running_var"):
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif key.endswith(("running_mean", "bias")):
      out[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    elif len(shape) == 1:  # BN scale
      out[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
    else:
      fan_in = int(np.prod(shape[1:]))
      out[key] = (rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)).astype(np.float32)
  return out
