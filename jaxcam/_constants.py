"""Constants shared across the package, defined once (a second copy drifts: the CLI's image extensions once did)."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""The per-channel mean torchvision's ImageNet models (and Hugging Face's ResNet / RegNet / DINOv2) normalize by."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The per-channel standard deviation that goes with `IMAGENET_MEAN`."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
"""File extensions read as images from a folder (case-insensitive), by the CLI and `jaxcam.explain_model` alike."""
