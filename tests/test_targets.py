"""`jaxcam.targets`: score functions against pytorch-grad-cam's targets, detection padding, class names and the
errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import targets
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def tfix():
  with np.load(os.path.join(FIXTURES, "targets.npz")) as f:
    return {k: f[k] for k in f.files}


@pytest.mark.fast
def test_targets_match_pytorch_grad_cam(tfix):
  d = tfix
  np.testing.assert_allclose(targets.rest(np.array([0, 4, 5]))(jnp.asarray(d["logits"])), d["rest"], atol=1e-5)
  np.testing.assert_allclose(targets.binary()(jnp.asarray(d["binary_logit"])), d["binary_pos"], atol=1e-7)
  np.testing.assert_allclose(targets.binary(False)(jnp.asarray(d["binary_logit"])), d["binary_neg"], atol=1e-7)
  np.testing.assert_allclose(
    targets.binary(probability=True)(jnp.asarray(d["binary_logit"])[:, None]),
    1 / (1 + np.exp(-d["binary_logit"])),
    atol=1e-6,
  )
  seg = jnp.asarray(np.moveaxis(d["seg_out"], 1, -1))  # jaxcam's segmentation outputs are channels-last
  np.testing.assert_allclose(targets.segmentation(2, d["seg_mask"])(seg), d["seg"], atol=1e-5)
  sim = targets.similarity(d["emb_ref"])
  np.testing.assert_allclose(sim(jnp.asarray(d["emb"])), d["similarity"], atol=1e-6)
  np.testing.assert_allclose(targets.regression(3)(jnp.asarray(d["logits"])), d["logits"][:, 3], rtol=1e-6)


@pytest.mark.fast
def test_detection_target_matches_pytorch_grad_cam_with_padding(tfix):
  d = tfix
  t = targets.detection(d["det_ref_boxes"], d["det_ref_labels"], iou=0.5)

  def total(boxes, scores):
    out = {"boxes": boxes, "scores": scores, "labels": jnp.asarray(d["det_labels"]), "valid": d["det_valid"]}
    return jnp.sum(t(out)), t(out)

  (_, per_image), (gb, gs) = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(
    jnp.asarray(d["det_boxes"]), jnp.asarray(d["det_scores"])
  )
  np.testing.assert_allclose(per_image, d["det"][:, 0], atol=1e-5)  # the invalid decoys never win
  np.testing.assert_allclose(gs, d["det_grad_scores"], atol=1e-6)
  np.testing.assert_allclose(gb, d["det_grad_boxes"], atol=1e-6)  # the IoU term is differentiated too
  with pytest.raises(ValueError, match="'boxes'"):
    t({"bbox": 1})


@pytest.mark.fast
def test_target_errors():
  with pytest.raises(ValueError, match="rank 4"):
    targets.segmentation(1, np.ones((4, 4), bool))(jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="`index`"):
    targets.regression()(jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"\(M, 4\)"):
    targets.detection(np.zeros((3,)), np.zeros((3,)))
  with pytest.raises(ValueError, match="reference"):
    targets.similarity(np.zeros((1, 2, 3)))


@pytest.mark.fast
def test_class_names_as_targets_and_int_scores_refused(convnet_b2):
  _, _, tap, x = convnet_b2
  assert int(targets.as_target("Egyptian cat").classes) == 285
  np.testing.assert_array_equal(targets.as_target(["tabby", "Egyptian cat"]).classes, [281, 285])
  with pytest.raises(KeyError, match="Closest: 'Egyptian cat'"):
    targets.as_target("egyptian kat")
  with pytest.raises(TypeError, match="return float scores, got int32 .*argmax"):
    jaxcam.gradcam(tap, x, target=lambda out: jnp.argmax(out, -1))
