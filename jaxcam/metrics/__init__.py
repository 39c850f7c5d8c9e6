"""Evaluation on device: faithfulness (confidence change, deletion, insertion) and localization (pointing game,
AUROC, IoU) metrics as pure JAX functions (jit-compiled, their many forwards chunked)."""

from jaxcam.metrics.faithfulness import (
  ConfidenceChange,
  Curve,
  blur_baseline,
  confidence_change,
  deletion,
  insertion,
  step_counts,
)
from jaxcam.metrics.localization import Localization, Pointing, auroc, boxes_to_masks, localization, pointing_game

__all__ = [
  "ConfidenceChange",
  "Curve",
  "Localization",
  "Pointing",
  "auroc",
  "blur_baseline",
  "boxes_to_masks",
  "confidence_change",
  "deletion",
  "insertion",
  "localization",
  "pointing_game",
  "step_counts",
]
