"""`jaxcam.metrics.localization`: pointing game, pixel AUROC and IoU against hand cases and numpy."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcam import metrics


def _auroc_pairs(s, y):
  pos, neg = s[y], s[~y]
  return ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


@pytest.mark.fast
def test_pointing_game_hand_cases():
  maps = np.zeros((3, 10, 10), np.float32)
  maps[0, 5, 5] = 1.0  # inside the box
  maps[1, 5, 9] = 1.0  # 3 pixels right of the box's last column (6)
  maps[2, 2, 2] = maps[2, 7, 7] = 1.0  # a tie: the first in row-major order, (2, 2), counts
  boxes = np.array([[4, 4, 7, 7]] * 3)  # x0, y0, x1, y1: rows and cols 4..6
  p = metrics.pointing_game(maps, boxes, tolerance=2)
  assert list(np.asarray(p.hits)) == [True, False, False]
  assert np.asarray(p.peaks).tolist() == [[5, 5], [5, 9], [2, 2]]
  assert list(np.asarray(metrics.pointing_game(maps, boxes, tolerance=3).hits)) == [True, True, True]  # (2,2)->(4,4)
  np.testing.assert_allclose(p.energy, [1.0, 0.0, 0.0], atol=1e-6)
  masks = np.asarray(metrics.boxes_to_masks(boxes, (10, 10)))
  assert masks.sum() == 3 * 9 and masks[0, 4:7, 4:7].all()
  np.testing.assert_array_equal(metrics.pointing_game(maps, masks, tolerance=2).hits, p.hits)
  half = np.zeros((1, 10, 10), np.float32)
  half[0, 5, 5], half[0, 0, 0] = 3.0, 1.0
  np.testing.assert_allclose(metrics.pointing_game(half, boxes[:1]).energy, [0.75], atol=1e-6)
  with pytest.raises(ValueError, match="`tolerance`"):
    metrics.pointing_game(maps, boxes, tolerance=-1)


@pytest.mark.fast
def test_auroc_and_iou_against_numpy():
  rng = np.random.default_rng(0)
  maps = np.round(rng.uniform(size=(3, 6, 7)), 1).astype(np.float32)  # many ties
  masks = rng.uniform(size=(3, 6, 7)) < 0.3
  masks[2] = False  # no positive: AUROC undefined
  loc = metrics.localization(maps, masks, thresholds=[0.25, 0.5])
  for b in range(2):
    np.testing.assert_allclose(loc.auroc[b], _auroc_pairs(maps[b].ravel(), masks[b].ravel()), rtol=1e-6)
    for j, t in enumerate((0.25, 0.5)):
      pred = maps[b] >= t
      np.testing.assert_allclose(loc.iou[b, j], (pred & masks[b]).sum() / (pred | masks[b]).sum(), rtol=1e-6)
  assert np.isnan(loc.auroc[2]) and list(np.asarray(loc.valid)) == [True, True, False]
  perfect = metrics.localization(masks[:2].astype(np.float32), masks[:2])
  np.testing.assert_allclose(perfect.auroc, 1.0, atol=1e-6)
  np.testing.assert_allclose(perfect.best_iou, 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="boolean masks"):
    metrics.localization(maps, masks.astype(np.float32))
