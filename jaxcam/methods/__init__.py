"""CAM weight functions grouped by family; the method table lives in `jaxcam.methods.table`."""

from jaxcam.methods.classic import cam_weights, check_gap_dense_head
from jaxcam.methods.factorization import eigencam_map, eigengradcam_map, first_component_projection
from jaxcam.methods.gradient import (
  gradcam_elementwise_weights,
  gradcam_pp_weights,
  gradcam_weights,
  hirescam_weights,
  layercam_weights,
  xgradcam_weights,
)

__all__ = [
  "cam_weights",
  "check_gap_dense_head",
  "eigencam_map",
  "eigengradcam_map",
  "first_component_projection",
  "gradcam_elementwise_weights",
  "gradcam_pp_weights",
  "gradcam_weights",
  "hirescam_weights",
  "layercam_weights",
  "xgradcam_weights",
]
