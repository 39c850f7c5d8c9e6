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
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import api, layouts, targets, viz, writers
from jaxcam._constants import IMAGE_EXTENSIONS
from jaxcam.adapters import HF_NORMALIZATION as HF_NORMALIZATION  # kept for users
from jaxcam.adapters import Model, as_model
from jaxcam.taps.discovery import MAX_CANDIDATES as MAX_CANDIDATES  # kept for users
from jaxcam.taps.discovery import find_layer, token_prefix

__all__ = ["Model", "ModelExplanation", "as_model", "explain_model", "find_layer", "load_images"]

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
  """`jaxcam.Explanation` plus what a first look needs: the decoded `images` (uint8, own sizes; empty for 1-D and
  3-D inputs), their `names`, `layer_reason`, `top5` per image (class-score outputs only), `notes` (how the model
  was called), `image_maps()` (maps at each image's own size), `overlays()`, `save(dir)`, `show()`. `maps` stay at
  the model's input resolution, ``(B, H, W)`` (``(B, L)`` for sequences, ``(B, D, H, W)`` for volumes).

  Args:
    images, names, layer_reason, top5, class_name, notes: the fields above, besides `jaxcam.Explanation`'s.

  Examples:
    >>> import numpy as np, jaxcam
    >>> images = (np.zeros((8, 8, 3), np.uint8),)
    >>> ex = jaxcam.ModelExplanation(np.zeros((1, 4, 4)), np.zeros((1, 3)), None, np.zeros(1), "gradcam", "conv",
    ...                              images=images, names=("a",))
    >>> [m.shape for m in ex.image_maps()]
    [(8, 8)]
  """

  images: tuple = ()
  names: tuple = ()
  layer_reason: str = ""
  top5: tuple = ()
  class_name: Any = None
  notes: tuple = ()

  def _first_maps(self) -> np.ndarray:
    maps = np.asarray(self.maps)
    rank = 3 if self.images or maps.ndim < 3 else None
    if rank is None:  # 1-D / 3-D inputs: (B, K, *spatial) when several targets per input
      return maps[:, 0] if self.target is not None and np.ndim(self.target) == 2 else maps
    return maps[:, 0] if maps.ndim == 4 else maps  # K targets per image: the first one's map

  def _need_images(self, what: str) -> None:
    if not self.images:
      raise ValueError(f"`{what}()` draws on images; these inputs are not 2-D images: read `.maps` instead.")

  def image_maps(self) -> list[np.ndarray]:
    """Each image's map resized (bilinear) to that image's own size, float32 in [0, 1]."""
    self._need_images("image_maps")
    return [viz.map_to_image(m, img.shape[:2]) for m, img in zip(self._first_maps(), self.images)]

  def overlays(self, *, cmap: str = "jet", alpha: float = 0.5) -> list[np.ndarray]:
    """uint8 RGB overlays at each image's own size."""
    self._need_images("overlays")
    return [viz.overlay(img, m, cmap=cmap, alpha=alpha) for img, m in zip(self.images, self._first_maps())]

  def _titles(self) -> list[str]:
    ids = None if self.target is None else np.asarray(self.target).reshape(len(self.names), -1)[:, 0]
    if ids is None or not np.issubdtype(ids.dtype, np.integer):
      return list(self.names)
    label = (lambda i: self.class_name(int(i))) if self.class_name else (lambda i: f"class {int(i)}")
    return [f"{n}: {label(i)}" for n, i in zip(self.names, ids)]

  def show(self, *, max_images: int = 8):
    """A matplotlib figure: a row per image (the image, its overlay)."""
    self._need_images("show")
    n = min(len(self.images), max_images)
    return viz.grid(list(self.images[:n]), {self.method: list(self._first_maps()[:n])}, self._titles()[:n])

  def save(self, directory: str | os.PathLike) -> list[str]:
    """Write ``<name>.png`` overlays (images only; one file per image: names that repeat, ignoring case, get
    ``_1``, ...), ``maps.npz`` (maps at the model's resolution, outputs, targets, scores) and
    ``explanation.json`` (method, layer, reason, notes, targets, top-5, image sizes); deterministic bytes. Returns
    the paths written."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    files = writers.unique_file_names(self.names, ".png")  # distinct inputs, distinct files (case ignored)
    paths = [viz.save_png(os.path.join(directory, f), o) for f, o in zip(files, self.overlays())] if self.images else []
    arrays = {"maps": np.asarray(self.maps, np.float32), "scores": np.asarray(self.scores, np.float32)}
    logits = self.logits
    if hasattr(logits, "shape"):
      arrays["logits"] = np.asarray(logits, np.float32)
    if self.target is not None and (hasattr(self.target, "shape") or isinstance(self.target, (int, list, tuple))):
      arrays["target"] = np.asarray(self.target)
    paths.append(writers.save_npz(os.path.join(directory, "maps.npz"), arrays))
    sizes: list[Any] = [list(img.shape[:2]) for img in self.images] or [None] * len(self.names)
    meta = {
      "method": self.method,
      "layer": self.layer if isinstance(self.layer, str) else list(self.layer),
      "layer_reason": self.layer_reason,
      "notes": list(self.notes),
      "images": [
        {"name": n, "file": f if self.images else None, "size": sz, "title": t, "top5": list(t5)}
        for n, f, sz, t, t5 in zip(self.names, files, sizes, self._titles(), self.top5 or [()] * len(self.names))
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


def _class_like(target: Any) -> bool:
  """Whether `target` reads class scores (None, ids, names or a class-score object), so top-5 classes mean
  something."""
  if target is None or isinstance(target, (int, np.integer, str)):
    return True
  if isinstance(target, targets.ClassScore):
    return True
  return hasattr(target, "dtype") and np.issubdtype(np.asarray(target).dtype, np.integer)


def _load_inputs(images: Any, spatial_dims: int | None, size, m: Model):
  """``(x, originals, names, input_layout)``: images decoded and resized to the model's input, or 1-D / 3-D arrays
  passed as they are (float32)."""
  if spatial_dims is None and hasattr(images, "shape") and np.ndim(images) == 5:
    spatial_dims = 3  # a batch of volumes (B, D, H, W, C): a batch of images is rank 4
  if spatial_dims in (None, 2):
    originals, names = load_images(images)
    if m.input_size is not None:
      hw = m.input_size
    elif size is not None:
      hw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    else:
      hw = originals[0].shape[:2]
    x = jnp.asarray(np.stack([_resize(o, hw) for o in originals]).astype(np.float32) / 255.0)
    return x, originals, names, None
  if spatial_dims not in (1, 3):
    raise ValueError(f"Expected `spatial_dims` to be 1 (sequences), 2 (images) or 3 (volumes), got {spatial_dims!r}.")
  what = "(B, L, C) sequences" if spatial_dims == 1 else "(B, D, H, W, C) volumes"
  if not hasattr(images, "shape") or np.ndim(images) != spatial_dims + 2:
    shape = getattr(images, "shape", type(images).__name__)
    raise ValueError(f"Expected `images` as an array of {what} for spatial_dims={spatial_dims}, got {shape}.")
  x = jnp.asarray(images, jnp.float32)
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f"Expected finite values in `images` ({what}), got NaN or Inf.")
  return x, [], [f"input_{i}" for i in range(x.shape[0])], "NLC" if spatial_dims == 1 else "NDHWC"


def _describe(out: Any) -> str:
  if hasattr(out, "shape"):
    return f"an array of shape {tuple(out.shape)}"
  keys = list(out.keys()) if hasattr(out, "keys") else None
  if keys is None and dataclasses.is_dataclass(out):
    keys = [f.name for f in dataclasses.fields(out)]
  kind = type(out).__name__
  return f"a {kind} with fields {keys}" if keys else f"a {kind} of {len(jax.tree_util.tree_leaves(out))} arrays"


def _check_output(m: Model, out: Any, target: Any, x) -> None:
  """Clear errors before any compile: a structured output with a class target, ids out of range, a spatial
  output explained as class scores."""
  if not _class_like(target):
    return
  if not hasattr(out, "shape"):
    hint = 'output="logits"' if hasattr(out, "logits") or (hasattr(out, "keys") and "logits" in out.keys()) else None
    raise ValueError(
      f"{m.name} returns {_describe(out)}: pass `output=` naming the class scores"
      + (f", e.g. {hint}" if hint else " (a key, attribute or index path, or a function)")
      + ", or a `target=` that reads this output (jaxcam.targets.similarity, regression, segmentation, detection)."
    )
  if len(out.shape) != 2:
    spatial = len(out.shape) == x.ndim and tuple(out.shape[1:-1]) == tuple(x.shape[1:-1])
    hint = (
      "a segmentation output: target=jaxcam.targets.segmentation(class_id, mask)"
      if spatial
      else "target=jaxcam.targets.regression(index) for regression outputs, or `output=` for the class scores"
    )
    raise ValueError(f"{m.name} returns {_describe(out)}, not class scores (B, K): pass {hint}.")
  ids = target.classes if isinstance(target, targets.ClassScore) else target
  if ids is not None and not isinstance(ids, str) and not isinstance(ids, jax.core.Tracer):
    n = int(out.shape[-1])
    bad = np.asarray(ids)[(np.asarray(ids) < 0) | (np.asarray(ids) >= n)]
    if bad.size:
      raise ValueError(
        f"class ids must be in [0, {n}) for {m.name} ({n} outputs), got {sorted(set(bad.tolist()))[:10]}."
      )


def _skip_output_layers(m: Model, out: Any) -> Model:
  """For a spatial output (segmentation), the layers whose output is the model's own output are not candidates:
  a map there would be the target's gradient with respect to its own logits."""
  if not hasattr(out, "shape") or len(out.shape) < 3 or m.list_layers is None:
    return m
  listing = m.list_layers
  return dataclasses.replace(m, list_layers=lambda x: [i for i in listing(x) if i.shape != tuple(out.shape)])


def _choose_layer(m: Model, x, tgt, layer, out) -> tuple[Any, Any, str]:
  if layer is None and m.default_layer is not None:
    return m.default_layer, None, m.default_reason
  if layer is None:
    found = _skip_output_layers(m, out) if out is not None else m
    return find_layer(found, x, tgt)
  layout = None
  if m.list_layers is not None and x.ndim == 4:  # token layers still get their layout
    shapes = {i.path: i.shape for i in m.list_layers(x[:1])}
    shape = shapes.get(layer) if isinstance(layer, str) else None
    prefix = token_prefix(shape[1]) if shape is not None and len(shape) == 3 else None
    if prefix is not None:
      layout = layouts.tokens(prefix=prefix)
  return layer, layout, "given (layer=)"


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
  output: Any = None,
  model_method: Any = None,
  model_kwargs: dict[str, Any] | None = None,
  spatial_dims: int | None = None,
  **options,
) -> ModelExplanation:
  """Explain `images` with `model` in one call; the layer is found automatically (`find_layer`) unless given.

  Args:
    model: a shipped model name ("efficientnet_lite0"), ``(linen_module, variables)``, an nnx module, a Hugging
      Face Flax model object (its ``.module``, ``.params``, ``.logits`` for classifiers, ``config.image_size``,
      label names and its image processor's normalization for ViT/BEiT/CLIP/ResNet/RegNet/DINOv2), a Keras 3 model
      on the JAX backend (a ``keras.applications`` model gets its family's ``preprocess_input`` and its softmax
      dropped; a model of your own takes pixels in [0, 1], or ``input_norm``), or a jaxcam tap (its layer).
    images: file paths, folders, PIL images, uint8 or float arrays (``(H, W, C)``, or ``(B, H, W, C)``), or a list
      mixing them, of any sizes (decoded by `jaxcam.models.to_uint8_rgb`'s rule: bit depth, float ranges, NaN).
      With ``spatial_dims=1`` a float array of sequences ``(B, L, C)``; with ``spatial_dims=3`` (or any rank-5
      array) volumes ``(B, D, H, W, C)``: passed to the model as they are.
    method: any method name (``jaxcam.method_names()``); options go to it (``**options``).
    target: None (each image's top class), a class id, one per image, class names (ImageNet models, Hugging Face
      ``id2label``; closest matches on a typo), or any jaxcam target: `jaxcam.targets.similarity` (embeddings,
      CLIP), `regression`, `segmentation`, `detection`, a function of the output.
    layer: a layer path (or list) to use instead of the automatic choice (which skips the layers producing the
      model's own output when that output is spatial, e.g. segmentation).
    size: ``(H, W)`` (or an int) to resize to when the model's input size is unknown; default the first image's.
    input_norm: ``(mean, std)`` applied inside the model for linen / Hugging Face / Keras models that take
      normalized pixels (shipped models and ``keras.applications`` models normalize themselves).
    normalize: the map's per-image min-max to [0, 1], as in `jaxcam.explain` (True). ``normalize=(mean, std)`` is
      the deprecated spelling of `input_norm` (a DeprecationWarning; same checks).
    output: what targets read of the model's output: a key, attribute, index (or a tuple path of them) or a
      function (``"logits"`` for a Hugging Face ``ModelOutput``; ``"image_embeds"``, ...).
    model_method: the module method to call instead of ``__call__`` (a name; for linen also a function
      ``(module, x) -> output``, e.g. CLIP's vision tower and projection).
    model_kwargs: static keyword arguments of the call, e.g. ``{"train": False}``. A ``__call__`` that declares
      ``train`` / ``training`` (without default False) gets False and one that declares ``deterministic`` gets
      True unless given here; the result's ``notes`` say so.
    spatial_dims: 1 for sequences, 3 for volumes (default: images, or volumes for a rank-5 array).

  Returns:
    A `ModelExplanation`: maps at the model's input size plus ``image_maps()`` at each image's own size,
    ``overlays()``, ``save(dir)``, ``show()``, ``top5`` (class-score outputs), ``layer``, ``layer_reason`` and
    ``notes``.

  Raises:
    ValueError: class ids out of range, an output that is not class scores for a class target (with the
      `output=` / target to pass), no layer with a spatial output, unreadable images.
    TypeError: a model of no supported kind (a PyTorch object included: jaxcam explains JAX models).

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp, numpy as np, jaxcam
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.relu(nn.Conv(4, (3, 3), strides=2, name="conv")(x))
    ...     return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net = Net()
    >>> variables = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    >>> ex = jaxcam.explain_model((net, variables), images, target=1)
    >>> ex.layer, ex.maps.shape, len(ex.top5[0])
    ('conv', (2, 8, 8), 3)
  """
  from jaxcam import compile_cache
  from jaxcam.stream import top5

  compile_cache.enable()  # a fresh process compiles nothing it compiled before (JAXCAM_CACHE_DIR=off: no cache)
  if isinstance(normalize, (bool, np.bool_)):
    options["normalize"] = bool(normalize)
    normalize = None
  probe = as_model(model, input_norm=input_norm, normalize=normalize)  # shipped names load once: the input size
  x, originals, names, input_layout = _load_inputs(images, spatial_dims, size, probe)
  m = as_model(
    model, input_norm=input_norm, normalize=normalize, output=output, model_method=model_method,
    model_kwargs=model_kwargs, input_layout=input_layout,
  ) if (output, model_method, model_kwargs, input_layout) != (None, None, None, None) else probe  # fmt: skip
  tgt = _resolve_target(target, m, len(names))
  out = m.output_struct(x) if m.output_struct is not None else jax.eval_shape(m.forward, x) if m.forward else None
  if out is not None:
    _check_output(m, out, tgt, x)
  layer, layout, reason = _choose_layer(m, x, tgt, layer, out)
  ex = api.explain(method, m.make_tap(layer, layout), x, target=tgt, **options)
  classes = hasattr(ex.logits, "shape") and np.ndim(ex.logits) == 2 and _class_like(tgt)
  probs = np.asarray(jax.nn.softmax(jnp.asarray(ex.logits, jnp.float32), axis=-1)) if classes else None
  return ModelExplanation(
    **{f.name: getattr(ex, f.name) for f in dataclasses.fields(api.Explanation)},
    images=tuple(originals),
    names=tuple(names),
    layer_reason=reason,
    top5=tuple(tuple(top5(p, m.class_name)) for p in probs) if probs is not None else (),
    class_name=m.class_name,
    notes=m.notes,
  )
