"""Evaluation on device: faithfulness (confidence change, deletion, insertion), localization (pointing game, AUROC,
IoU) and sanity-check (cascading randomization: Spearman, SSIM) metrics as pure JAX functions."""

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
from jaxcam.metrics.sanity import Randomization, randomization_check, spearman, ssim

__all__ = [
  "ConfidenceChange",
  "Curve",
  "Localization",
  "Pointing",
  "Randomization",
  "auroc",
  "blur_baseline",
  "boxes_to_masks",
  "confidence_change",
  "deletion",
  "insertion",
  "localization",
  "pointing_game",
  "randomization_check",
  "spearman",
  "ssim",
  "step_counts",
]
