"""`jaxcam.writers`: deterministic, loadable .npz files."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcam import io, writers


@pytest.mark.fast
def test_save_npz_is_deterministic_and_loadable(tmp_path):
  arrays = {"b": np.arange(6.0).reshape(2, 3), "a": np.ones(3, np.float16)}
  p1 = writers.save_npz(tmp_path / "one.npz", arrays)
  import time

  time.sleep(2.1)  # zip timestamps have 2-second resolution: numpy.savez would differ now
  p2 = writers.save_npz(tmp_path / "two.npz", arrays)
  assert open(p1, "rb").read() == open(p2, "rb").read()
  back = io.load_state_dict(p1)
  np.testing.assert_array_equal(back["b"], arrays["b"])
  np.testing.assert_array_equal(back["a"], arrays["a"])
  assert back["a"].dtype == np.float16
