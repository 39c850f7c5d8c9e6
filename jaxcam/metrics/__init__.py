"""Evaluation on device: faithfulness (confidence change, deletion, insertion, ROAD), composite (Complexity,
Coherency, ADCC, ARCC), localization (pointing game, AUROC, IoU) and sanity-check (cascading randomization:
Spearman, SSIM) metrics as pure JAX functions, and the metric table (`METRICS`, `register_metric`) that
`jaxcam evaluate` and `evaluate` read."""

from jaxcam.metrics.composite import Adcc, Arcc, adcc, arcc, coherency, complexity, pearson
from jaxcam.metrics.faithfulness import (
  ConfidenceChange,
  Curve,
  blur_baseline,
  confidence_change,
  deletion,
  insertion,
  step_counts,
)
from jaxcam.metrics.imputation import noisy_linear_imputation
from jaxcam.metrics.localization import Localization, Pointing, auroc, boxes_to_masks, localization, pointing_game
from jaxcam.metrics.removal import Road, remove_and_impute, road
from jaxcam.metrics.sanity import Randomization, randomization_check, spearman, ssim
from jaxcam.metrics.table import (
  DEFAULT_METRICS,
  METRICS,
  MetricContext,
  MetricSpec,
  evaluate,
  get_metric,
  register_metric,
)

__all__ = [
  "DEFAULT_METRICS",
  "METRICS",
  "MetricContext",
  "MetricSpec",
  "evaluate",
  "get_metric",
  "register_metric",
  "Adcc",
  "Arcc",
  "ConfidenceChange",
  "Curve",
  "Localization",
  "Pointing",
  "Randomization",
  "Road",
  "adcc",
  "arcc",
  "auroc",
  "blur_baseline",
  "boxes_to_masks",
  "coherency",
  "complexity",
  "confidence_change",
  "deletion",
  "insertion",
  "localization",
  "noisy_linear_imputation",
  "pearson",
  "pointing_game",
  "randomization_check",
  "remove_and_impute",
  "road",
  "spearman",
  "ssim",
  "step_counts",
]
