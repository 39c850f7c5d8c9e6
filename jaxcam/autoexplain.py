"""One line from a model to a picture: `explain_model`, with the layer found automatically (`find_layer`).

Built only on the public pieces: taps (`linen_tap`, `nnx_tap`, any `Tap`), layouts, `explain`, `viz` and the
deterministic writers. A model is adapted once (`as_model`: a shipped name, ``(linen_module, variables)``, an nnx
module, a Hugging Face Flax model object, or a tap you built), images of any kind and size are decoded by the rule
every jaxcam entry point uses (`jaxcam.models.to_uint8_rgb`) and resized to the model's input size, and the maps
come back at each image's own size.

Layer auto-detection (`find_layer`): the candidates are the layers that run once and whose output is a spatial grid
``(B, h, w, C)`` (more than one position, and the same stride along both axes as the input: this leaves out
attention's ``(B, N, heads, d)`` projections) or transformer tokens ``(B, P + N, D)`` with N a square after P
prefix tokens; layers inside attention modules (queries, keys, values) are skipped. One forward and one backward
pass over a multi-layer tap of the last `MAX_CANDIDATES` candidates (in the order their outputs are produced)
gives the target's gradient at each; the chosen layer is the last whose gradient is non-zero at its spatial
positions: the last feature map before global pooling, or, for a ViT whose head reads only the CLS token, the last
block's first LayerNorm (pytorch-grad-cam's advice, ``blocks[-1].norm1``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import api, layouts, taps, viz, writers
from jaxcam._constants import IMAGE_EXTENSIONS, IMAGENET_MEAN, IMAGENET_STD
from jaxcam._errors import UnknownNameError, closest, warn_user
from jaxcam.taps.discovery import MAX_CANDIDATES as MAX_CANDIDATES  # kept for users
from jaxcam.taps.discovery import find_layer, token_prefix

__all__ = ["Model", "ModelExplanation", "as_model", "explain_model", "find_layer", "load_images"]

# Hugging Face image processors' normalization by model type (the Flax models take normalized pixels)
HF_NORMALIZATION = {
  "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
  "beit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
  "resnet": (IMAGENET_MEAN, IMAGENET_STD),
  "regnet": (IMAGENET_MEAN, IMAGENET_STD),
  "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
}


# ------------------------------------------------------------------------------------------------ models


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as `explain_model` sees it.

  make_tap: ``(layer, layout) -> tap``. list_layers: ``x -> [LayerInfo]`` for channels-last `x` in [0, 1] (None:
  the layer must be given). input_size: ``(H, W)`` the model takes, if known. class_name / class_id: label lookups,
  if the model has labels. default_layer: the tap's own layer (a tap given as the model).
  """

  name: str
  make_tap: Callable[[Any, Any], Any]
  list_layers: Callable[[Any], list] | None = None
  input_size: tuple[int, int] | None = None
  class_name: Callable[[int], str] | None = None
  class_id: Callable[[str], int] | None = None
  default_layer: Any = None


@functools.cache
def _normalizing_method(mean: tuple, std: tuple, channels_first: bool, kwargs: tuple = ()):
  """``method=`` for linen's apply: normalize the pixels, then the module's ``__call__``. Cached, so one (mean,
  std) gives one function object (a static argument: nothing recompiles)."""
  shape = (1, -1, 1, 1) if channels_first else (1, 1, 1, -1)

  def method(module, x):
    m = jnp.asarray(mean, x.dtype).reshape(shape)
    s = jnp.asarray(std, x.dtype).reshape(shape)
    return module((x - m) / s, **dict(kwargs))

  return method


def _check_input_norm(input_norm: Any, argname: str = "input_norm") -> tuple[tuple, tuple] | None:
  if input_norm is None:
    return None
  try:
    mean, std = input_norm
    mean, std = tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std))
  except (TypeError, ValueError):
    raise ValueError(
      f"Expected `{argname}` as (mean, std) per channel, e.g. ({IMAGENET_MEAN}, {IMAGENET_STD})."
    ) from None
  if any(s <= 0 for s in std):
    raise ValueError(f"Expected a positive std in `{argname}`, got {std}.")
  return mean, std


def _input_norm_from(input_norm: Any, normalize: Any) -> tuple[Any, str]:
  """`input_norm`, or the deprecated spelling ``normalize=(mean, std)`` (warned): the value and its argument name."""
  if normalize is None:
    return input_norm, "input_norm"
  if input_norm is not None:
    raise ValueError("Pass the input's (mean, std) once, as `input_norm=`; `normalize=` is its deprecated spelling.")
  warn_user(
    "normalize=(mean, std) is deprecated: pass input_norm=(mean, std). In jaxcam `normalize` is the map's min-max "
    "(explain_model(normalize=False) passes it to jaxcam.explain).",
    DeprecationWarning,
  )
  return normalize, "normalize"


def _imagenet_lookups():
  from jaxcam import models

  return models.class_name, models.imagenet_class


def _labels_lookups(id2label: dict) -> tuple[Callable[[int], str], Callable[[str], int]]:
  names = {int(k): str(v) for k, v in id2label.items()}
  lower = {v.lower(): k for k, v in names.items()}

  def name(i: int) -> str:
    return names.get(int(i), str(i))

  def cid(label: str) -> int:
    key = str(label).strip().lower()
    if key in lower:
      return lower[key]
    near = closest(key, list(lower), n=5)
    raise UnknownNameError(
      f"Expected `target` to be a class id or one of the model's labels, got {label!r}."
      + (" Closest: " + ", ".join(repr(names[lower[n]]) for n in near) + "." if near else "")
    )

  return name, cid


def _linen_model(module, variables, normalize, name) -> Model:
  from jaxcam import models

  method = _normalizing_method(*normalize, False) if normalize else None
  size = getattr(module, "input_size", None)
  shipped = isinstance(module, (models.EfficientNetLite, models.ResNet, models.VGG))
  lookups = _imagenet_lookups() if shipped and getattr(module, "num_classes", None) == 1000 else (None, None)
  return Model(
    name=name,
    make_tap=lambda layer, layout: taps.linen_tap(module, variables, layer, layout=layout, method=method),
    list_layers=lambda x: taps.list_layers(module, variables, x, **({"method": method} if method else {})),
    input_size=(size, size) if isinstance(size, int) else None,
    class_name=lookups[0],
    class_id=lookups[1],
  )


def _hf_model(obj, normalize) -> Model:
  config = obj.config
  norm = normalize or HF_NORMALIZATION.get(getattr(config, "model_type", ""))
  method = _normalizing_method(*(norm or ((0.0,), (1.0,))), False)  # the module takes NHWC (its wrapper transposes)
  params = obj.params
  variables = dict(params) if "params" in params else {"params": params}  # BatchNorm models hold batch_stats too
  size = getattr(config, "image_size", None)
  if isinstance(size, int):
    size = (size, size)
  elif isinstance(size, (tuple, list)) and len(size) == 2:
    size = (int(size[0]), int(size[1]))
  else:
    size = None
  id2label = getattr(config, "id2label", None) or {}
  generic = all(str(v) == f"LABEL_{k}" for k, v in id2label.items())
  name_fn, id_fn = _labels_lookups(id2label) if id2label and not generic else (None, None)

  def list_layers(x):
    return taps.list_layers(obj.module, variables, x, method=method)

  return Model(
    name=type(obj).__name__,
    make_tap=lambda layer, layout: taps.linen_tap(
      obj.module, variables, layer, layout=layout, method=method, output="logits"
    ),
    list_layers=list_layers,
    input_size=size,
    class_name=name_fn,
    class_id=id_fn,
  )


def as_model(model: Any, *, input_norm: Any = None, normalize: Any = None) -> Model:
  """Adapt `model` for `explain_model` (see its docstring for what `model` may be); ``input_norm=(mean, std)`` is
  applied inside linen and Hugging Face models (``normalize=`` is its deprecated spelling)."""
  import flax.linen as nn
  from flax import nnx

  from jaxcam import models

  input_norm, argname = _input_norm_from(input_norm, normalize)
  norm = _check_input_norm(input_norm, argname)
  if isinstance(model, Model):
    return model
  if isinstance(model, str):
    if model not in models.MODELS:
      raise UnknownNameError(
        f"Expected `model` to be a shipped model name, got {model!r}. Shipped: {', '.join(models.MODELS)}"
        + (f"; closest: {closest(model, list(models.MODELS), n=3)}" if closest(model, list(models.MODELS)) else "")
        + ". Or pass (linen_module, variables), an nnx module, a Hugging Face Flax model or a tap."
      )
    if not model.startswith("efficientnet_lite"):
      raise ValueError(
        f"{model} has no packaged weights: load a torchvision checkpoint you downloaded, "
        f"jaxcam.models.get_model({model!r}, weights=PATH), and pass the (module, variables) it returns."
      )
    module, variables = models.get_model(model, pretrained=True)
    return dataclasses.replace(_linen_model(module, variables, norm, model), name=model)
  if isinstance(model, taps.Tap):
    if norm is not None:
      raise ValueError(f"`{argname}` cannot be added to a tap you built: normalize inside its functions.")
    return Model(name=repr(model), make_tap=lambda layer, layout: model, default_layer=model.layer)
  if taps.keras.is_keras_model(model):
    return Model(**taps.keras.keras_explain_parts(model, norm))
  if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
    return _linen_model(model[0], model[1], norm, type(model[0]).__name__)
  if isinstance(model, nnx.Module):
    if norm is not None:
      raise ValueError(f"`{argname}` is for linen and Hugging Face models; normalize inside the nnx model.")
    return Model(
      name=type(model).__name__,
      make_tap=lambda layer, layout: taps.nnx_tap(model, layer, layout=layout),
      list_layers=lambda x: taps.list_layers(model, x),
    )
  if all(hasattr(model, a) for a in ("module", "params", "config")):
    return _hf_model(model, norm)
  raise TypeError(
    f"Expected `model` to be a shipped model name, (linen_module, variables), an nnx module, a Keras 3 model, a "
    f"Hugging Face Flax model or a jaxcam tap, got {type(model).__name__}. A plain function has no layers to tap: "
    "build jaxcam.function_tap(body_fn, head_fn, params) and pass it."
  )


# ------------------------------------------------------------------------------------------------ images


def load_images(images: Any) -> tuple[list[np.ndarray], list[str]]:
  """Decoded uint8 RGB images and their names from paths, folders, PIL images or arrays (a list may mix them;
  a ``(B, H, W, C)`` array is B images)."""
  from jaxcam import models
  from jaxcam.stream import decode_image

  if isinstance(images, (str, os.PathLike)) or not isinstance(images, (list, tuple)):
    arr = images if isinstance(images, (str, os.PathLike)) else np.asarray(images) if hasattr(images, "shape") else None
    images = list(arr) if isinstance(arr, np.ndarray) and arr.ndim == 4 else [images]
  if not images:
    raise ValueError("Expected at least one image in `images`, got an empty sequence.")
  out, names = [], []
  for i, item in enumerate(images):
    if isinstance(item, (str, os.PathLike)):
      path = os.fspath(item)
      if os.path.isdir(path):
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        sub, sub_names = load_images([os.path.join(path, f) for f in files]) if files else ([], [])
        out += sub
        names += sub_names
        continue
      if not os.path.exists(path):
        raise FileNotFoundError(f"Expected an image file, got {path!r} (no such file).")
      out.append(decode_image(path))
      names.append(os.path.splitext(os.path.basename(path))[0])
    else:
      out.append(models.to_uint8_rgb(item, index=i))
      names.append(f"image_{i}")
  if not out:
    raise ValueError(f"No images found in {images!r} (extensions: {', '.join(IMAGE_EXTENSIONS)}).")
  taken: set[str] = set()
  unique = []
  for n in names:  # distinct names: "a", "a_1", ... (the first free one: a stem "a_1" of its own is not reused)
    candidate, k = n, 0
    while candidate in taken:
      k += 1
      candidate = f"{n}_{k}"
    taken.add(candidate)
    unique.append(candidate)
  return out, unique


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  from PIL import Image

  if image.shape[:2] == tuple(size):
    return image
  return np.asarray(Image.fromarray(image).resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR))


# ------------------------------------------------------------------------------------------------ result


@dataclasses.dataclass(frozen=True)
class ModelExplanation(api.Explanation):
  """`jaxcam.Explanation` plus what a first look needs: the decoded `images` (uint8, own sizes), their `names`,
  `layer_reason`, `top5` per image, `image_maps()` (maps at each image's own size), `overlays()`, `save(dir)`,
  `show()`. `maps` stay at the model's input resolution, ``(B, H, W)``."""

  images: tuple = ()
  names: tuple = ()
  layer_reason: str = ""
  top5: tuple = ()
  class_name: Any = None

  def _first_maps(self) -> np.ndarray:
    maps = np.asarray(self.maps)
    return maps[:, 0] if maps.ndim == 4 else maps  # K targets per image: the first one's map

  def image_maps(self) -> list[np.ndarray]:
    """Each image's map resized (bilinear) to that image's own size, float32 in [0, 1]."""
    return [viz.map_to_image(m, img.shape[:2]) for m, img in zip(self._first_maps(), self.images)]

  def overlays(self, *, cmap: str = "jet", alpha: float = 0.5) -> list[np.ndarray]:
    """uint8 RGB overlays at each image's own size."""
    return [viz.overlay(img, m, cmap=cmap, alpha=alpha) for img, m in zip(self.images, self._first_maps())]

  def _titles(self) -> list[str]:
    ids = None if self.target is None else np.asarray(self.target).reshape(len(self.images), -1)[:, 0]
    if ids is None:
      return list(self.names)
    label = (lambda i: self.class_name(int(i))) if self.class_name else (lambda i: f"class {int(i)}")
    return [f"{n}: {label(i)}" for n, i in zip(self.names, ids)]

  def show(self, *, max_images: int = 8):
    """A matplotlib figure: a row per image (the image, its overlay)."""
    n = min(len(self.images), max_images)
    return viz.grid(list(self.images[:n]), {self.method: list(self._first_maps()[:n])}, self._titles()[:n])

  def save(self, directory: str | os.PathLike) -> list[str]:
    """Write ``<name>.png`` overlays (one file per image: names that repeat, ignoring case, get ``_1``, ...),
    ``maps.npz`` (maps at the model's resolution, logits, targets, scores) and
    ``explanation.json`` (method, layer, reason, targets, top-5, image sizes); deterministic bytes. Returns the
    paths written."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files = writers.unique_file_names(self.names, ".png")  # distinct inputs, distinct files (case ignored)
    paths = [viz.save_png(os.path.join(directory, f), o) for f, o in zip(files, self.overlays())]
    arrays = {"maps": np.asarray(self.maps, np.float32), "logits": np.asarray(self.logits, np.float32)}
    arrays["scores"] = np.asarray(self.scores, np.float32)
    if self.target is not None:
      arrays["target"] = np.asarray(self.target)
    paths.append(writers.save_npz(os.path.join(directory, "maps.npz"), arrays))
    meta = {
      "method": self.method,
      "layer": self.layer if isinstance(self.layer, str) else list(self.layer),
      "layer_reason": self.layer_reason,
      "images": [
        {"name": n, "file": f, "size": list(img.shape[:2]), "title": t, "top5": list(t5)}
        for n, f, img, t, t5 in zip(self.names, files, self.images, self._titles(), self.top5)
      ],
    }
    paths.append(writers.write_json(os.path.join(directory, "explanation.json"), meta))
    return paths


def _resolve_target(target: Any, m: Model, n: int) -> Any:
  def one(t):
    if isinstance(t, str):
      if m.class_id is None:
        raise ValueError(
          f"Expected a class id for `target` ({m.name} has no class names), got {t!r}. Class names work for "
          "ImageNet models and Hugging Face models with id2label."
        )
      return m.class_id(t)
    return t

  if isinstance(target, str):
    return one(target)
  if isinstance(target, (list, tuple)) and target and all(isinstance(t, (str, int, np.integer)) for t in target):
    ids = [one(t) for t in target]
    if len(ids) != n:
      raise ValueError(f"Expected one target per image ({n}), got {len(ids)}.")
    return np.asarray(ids)
  return target


def explain_model(
  model: Any,
  images: Any,
  *,
  method: str = "gradcam",
  target: Any = None,
  layer: Any = None,
  size: int | tuple[int, int] | None = None,
  input_norm: Any = None,
  normalize: Any = True,
  **options,
) -> ModelExplanation:
  """Explain `images` with `model` in one call; the layer is found automatically (`find_layer`) unless given.

  Args:
    model: a shipped model name ("efficientnet_lite0"), ``(linen_module, variables)``, an nnx module, a Hugging
      Face Flax model object (its ``.module``, ``.params``, output ``.logits``, ``config.image_size``, label names
      and its image processor's normalization for ViT/BEiT/ResNet/RegNet/DINOv2), a Keras 3 model on the JAX
      backend (a ``keras.applications`` model gets its family's ``preprocess_input`` and its softmax dropped; a
      model of your own takes pixels in [0, 1], or ``input_norm``), or a jaxcam tap (its layer).
    images: file paths, folders, PIL images, uint8 or float arrays (``(H, W, C)``, or ``(B, H, W, C)``), or a list
      mixing them, of any sizes (decoded by `jaxcam.models.to_uint8_rgb`'s rule: bit depth, float ranges, NaN).
    method: any method name (``jaxcam.method_names()``); options go to it (``**options``).
    target: None (each image's top class), a class id, one per image, class names (ImageNet models, Hugging Face
      ``id2label``; closest matches on a typo), or any jaxcam target.
    layer: a layer path (or list) to use instead of the automatic choice.
    size: ``(H, W)`` (or an int) to resize to when the model's input size is unknown; default the first image's.
    input_norm: ``(mean, std)`` applied inside the model for linen / Hugging Face / Keras models that take
      normalized pixels (shipped models and ``keras.applications`` models normalize themselves).
    normalize: the map's per-image min-max to [0, 1], as in `jaxcam.explain` (True). ``normalize=(mean, std)`` is
      the deprecated spelling of `input_norm` (a DeprecationWarning; same checks).

  Returns:
    A `ModelExplanation`: maps at the model's input size plus ``image_maps()`` at each image's own size,
    ``overlays()``, ``save(dir)``, ``show()``, ``top5``, ``layer`` and ``layer_reason``.
  """
  from jaxcam import compile_cache

  compile_cache.enable()  # a fresh process compiles nothing it compiled before (JAXCAM_CACHE_DIR=off: no cache)
  if isinstance(normalize, (bool, np.bool_)):
    options["normalize"] = bool(normalize)
    normalize = None
  m = as_model(model, input_norm=input_norm, normalize=normalize)
  originals, names = load_images(images)
  if m.input_size is not None:
    hw = m.input_size
  elif size is not None:
    hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
  else:
    hw = originals[0].shape[:2]
  x = jnp.asarray(np.stack([_resize(o, hw) for o in originals]).astype(np.float32) / 255.0)
  tgt = _resolve_target(target, m, len(originals))
  layout = None
  if layer is None and m.default_layer is not None:
    layer, reason = m.default_layer, "the tap's own layer"
  elif layer is None:
    layer, layout, reason = find_layer(m, x, tgt)
  else:
    reason = "given (layer=)"
    if m.list_layers is not None:  # token layers still get their layout
      shapes = {i.path: i.shape for i in m.list_layers(x[:1])}
      shape = shapes.get(layer) if isinstance(layer, str) else None
      prefix = token_prefix(shape[1]) if shape is not None and len(shape) == 3 else None
      if prefix is not None:
        layout = layouts.tokens(prefix=prefix)
  ex = api.explain(method, m.make_tap(layer, layout), x, target=tgt, **options)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(ex.logits, jnp.float32), axis=-1))
  from jaxcam.stream import top5

  return ModelExplanation(
    **{f.name: getattr(ex, f.name) for f in dataclasses.fields(api.Explanation)},
    images=tuple(originals),
    names=tuple(names),
    layer_reason=reason,
    top5=tuple(tuple(top5(p, m.class_name)) for p in probs) if probs.ndim == 2 else (),
    class_name=m.class_name,
  )
