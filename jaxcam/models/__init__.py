"""Models with real or converted weights, preprocessing and ImageNet class names.

``module, variables = jaxcam.models.efficientnet_lite0(pretrained=True)`` gives a flax.linen module and its
variables. Shipped models declare ``default_layer`` (a conv + BN + activation block, so the default map is
post-activation), ``fc_layer`` (for classic CAM), ``input_size`` and ``head_structure``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxcam._errors import UnknownNameError, unknown_name_message
from jaxcam.models.efficientnet_lite import EfficientNetLite, efficientnet_lite
from jaxcam.models.imagenet import class_name, imagenet_class, imagenet_classes
from jaxcam.models.resnet import VGG, ResNet, convert_resnet, convert_vgg, resnet18, resnet50, vgg16

__all__ = [
  "EfficientNetLite",
  "ResNet",
  "VGG",
  "MODELS",
  "get_model",
  "get_module",
  "efficientnet_lite0",
  "efficientnet_lite1",
  "efficientnet_lite2",
  "resnet18",
  "resnet50",
  "vgg16",
  "convert_resnet",
  "convert_vgg",
  "preprocess",
  "input_size",
  "imagenet_classes",
  "imagenet_class",
  "class_name",
  "sample_images",
]

efficientnet_lite0 = functools.partial(efficientnet_lite, "efficientnet_lite0")
efficientnet_lite1 = functools.partial(efficientnet_lite, "efficientnet_lite1")
efficientnet_lite2 = functools.partial(efficientnet_lite, "efficientnet_lite2")

# name -> (constructor(pretrained=..., weights=...), input size, has packaged weights)
MODELS = {
  "efficientnet_lite0": (efficientnet_lite0, 224),
  "efficientnet_lite1": (efficientnet_lite1, 240),
  "efficientnet_lite2": (efficientnet_lite2, 260),
  "resnet18": (resnet18, 224),
  "resnet50": (resnet50, 224),
  "vgg16": (vgg16, 224),
}


def _model_entry(name: str):
  if name not in MODELS:
    raise UnknownNameError(unknown_name_message("model", name, list(MODELS), "a shipped model"))
  return MODELS[name]


def get_module(name: str):
  """The unbound flax module of a shipped model (no weights)."""
  from jaxcam.models.efficientnet_lite import VARIANTS
  from jaxcam.models.resnet import BasicBlock, Bottleneck

  _model_entry(name)
  if name in VARIANTS:
    width, depth, size, _, _ = VARIANTS[name]
    return EfficientNetLite(width=width, depth=depth, input_size=size)
  builders: dict[str, Callable[[], Any]] = {
    "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
    "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
    "vgg16": VGG,
  }
  return builders[name]()


def get_model(name: str, **kwargs):
  """``(module, variables)`` of a shipped model by name (see `MODELS`)."""
  return _model_entry(name)[0](**kwargs)


def input_size(name: str) -> int:
  """The square input size a shipped model was trained at."""
  return _model_entry(name)[1]


def _to_uint8_rgb(image: Any) -> np.ndarray:
  from PIL import Image

  if isinstance(image, Image.Image):
    return np.asarray(image.convert("RGB"))
  arr = np.asarray(image)
  if arr.ndim == 2:
    arr = np.stack([arr] * 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ValueError(f"Expected an image of shape (H, W, 3) (or grayscale (H, W)), got {arr.shape}.")
  if arr.dtype != np.uint8:
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
      arr = np.round(arr * 255)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
  return arr[..., :3]


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """PIL bilinear resize to (size, size): the policy all shipped models (and the fixtures) use."""
  from PIL import Image

  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def preprocess(images: Any, model: str | int = "efficientnet_lite0") -> np.ndarray:
  """Images -> float32 ``(B, S, S, 3)`` in [0, 1] at the model's input size (bilinear resize, PIL).

  `images`: a PIL image, an ``(H, W, 3)`` uint8/float array, or a list of those (sizes may differ); a
  ``(B, H, W, 3)`` array. `model`: a shipped model's name or an int size. Normalization is inside the models.
  """
  size = model if isinstance(model, int) else input_size(model)
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif not isinstance(images, (list, tuple)):
    images = [images]
  return np.stack([resize_uint8(_to_uint8_rgb(im), size) for im in images]).astype(np.float32) / 255.0


SAMPLES = {
  "chelsea": "chelsea",
  "coffee": "coffee",
  "rocket": "rocket",
  "astronaut": "astronaut",
  "motorcycle": "stereo_motorcycle",
}


def sample_images(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """scikit-image's bundled photos as uint8 RGB arrays (no network): chelsea, coffee, rocket, astronaut,
  motorcycle (the left image of ``stereo_motorcycle``)."""
  try:
    from skimage import data
  except ImportError:
    raise ImportError("The sample photos come from scikit-image: `pip install 'jaxcam-xai[pretrained]'`.") from None
  out = {}
  for name in names or SAMPLES:
    if name not in SAMPLES:
      raise UnknownNameError(unknown_name_message("sample", name, list(SAMPLES), "a bundled photo"))
    img = getattr(data, SAMPLES[name])()
    if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
      img = img[0]
    out[name] = _to_uint8_rgb(img)
  return out
