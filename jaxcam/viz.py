"""Overlays and comparison grids (outside jit; numpy, PIL and matplotlib only)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
  "concept_overlay",
  "deprocess_gradient",
  "grid",
  "map_to_image",
  "overlay",
  "peak",
  "randomization_plot",
  "save_png",
  "show",
  "show_concepts",
]


def _as_uint8_image(image: Any) -> np.ndarray:
  from jaxcam.models import to_uint8_rgb

  return to_uint8_rgb(image)


def map_to_image(cam: Any, size: tuple[int, int]) -> np.ndarray:
  """A map ``(h, w)`` resized (bilinear) to ``size = (H, W)`` of the original photo, as float32 in [0, 1].

  Maps come in the coordinates of the preprocessed (square-resized) input; a resize back covers the photo.
  """
  from PIL import Image

  m = np.nan_to_num(np.asarray(cam, np.float32))
  if m.ndim != 2:
    raise ValueError(f"Expected one map of shape (h, w), got {m.shape}.")
  img = Image.fromarray(m, mode="F").resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
  return np.clip(np.asarray(img, np.float32), 0.0, 1.0)


def overlay(image: Any, cam: Any, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
  """uint8 RGB ``(H, W, 3)``: the photo blended with the colored map (map resized to the photo).

  `image`: a PIL image or an ``(H, W, 3)`` array (uint8, or float in [0, 1]); `cam`: ``(h, w)`` in [0, 1].
  ``alpha`` is the map's weight.
  """
  import matplotlib

  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"Expected `alpha` in [0, 1], got {alpha}.")
  img = _as_uint8_image(image)
  m = map_to_image(cam, img.shape[:2])
  colors = matplotlib.colormaps[cmap](m)[..., :3]
  out = (1.0 - alpha) * img.astype(np.float32) / 255.0 + alpha * colors
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def peak(cam: Any, size: tuple[int, int] | None = None) -> tuple[int, int]:
  """(row, col) of the map's maximum, in the map's coordinates or scaled to ``size = (H, W)``."""
  m = np.nan_to_num(np.asarray(cam, np.float32))
  r, c = np.unravel_index(int(np.argmax(m)), m.shape)
  if size is None:
    return int(r), int(c)
  return int((r + 0.5) * size[0] / m.shape[0]), int((c + 0.5) * size[1] / m.shape[1])


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> str:
  """Write an RGB uint8 array as PNG (deterministic bytes: no timestamps); returns the path."""
  from PIL import Image

  path = os.fspath(path)
  Image.fromarray(np.asarray(rgb, np.uint8)).save(path, format="PNG", optimize=False)
  return path


def _shrink(img: np.ndarray, side: int) -> np.ndarray:
  from PIL import Image

  h, w = img.shape[:2]
  scale = side / max(h, w)
  if scale >= 1:
    return img
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def grid(
  images: Sequence[Any],
  maps_by_method: Mapping[str, Sequence[Any]],
  titles: Sequence[str] | None = None,
  *,
  path: str | os.PathLike | None = None,
  cmap: str = "jet",
  alpha: float = 0.5,
  cell: float = 2.2,
):
  """One figure: a row per image (the photo, then one overlay per method), columns titled by method.

  Returns the matplotlib figure; with `path`, also saves it as PNG (and closes it).
  """
  from matplotlib.figure import Figure  # no pyplot: no backend, no global state

  methods = list(maps_by_method)
  for name, maps in maps_by_method.items():
    if len(maps) != len(images):
      raise ValueError(f"Expected {len(images)} maps for method {name!r} (one per image), got {len(maps)}.")
  rows, cols = len(images), 1 + len(methods)
  fig = Figure(figsize=(cell * cols, cell * rows), dpi=100)
  axes = fig.subplots(rows, cols, squeeze=False)
  side = int(2 * cell * 100)  # photos larger than twice a cell's pixels are shrunk first (same picture, less work)
  for i, image in enumerate(images):
    img = _shrink(_as_uint8_image(image), side)
    axes[i, 0].imshow(img)
    axes[i, 0].set_ylabel(titles[i] if titles else f"image {i}", fontsize=9)
    for j, name in enumerate(methods):
      axes[i, j + 1].imshow(overlay(img, maps_by_method[name][i], cmap=cmap, alpha=alpha))
      if i == 0:
        axes[i, j + 1].set_title(name, fontsize=10)
    if i == 0:
      axes[i, 0].set_title("input", fontsize=10)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  if path is not None:
    fig.savefig(os.fspath(path), format="png", metadata={"Software": None})
  return fig


def deprocess_gradient(grad: Any) -> np.ndarray:
  """uint8 RGB of a raw input gradient ``(H, W, 3)`` (guided backprop, Guided Grad-CAM): standardized, scaled by
  0.1 and centered on gray, as pytorch-grad-cam's ``deprocess_image``."""
  g = np.asarray(grad, np.float32)
  if g.ndim != 3:
    raise ValueError(f"Expected one gradient image (H, W, C), got shape {g.shape}.")
  g = (g - g.mean()) / (g.std() + 1e-5) * 0.1 + 0.5
  return np.uint8(np.clip(g, 0, 1) * 255)


def _concept_colors(n: int) -> np.ndarray:
  import matplotlib

  cmap = matplotlib.colormaps["hsv"]
  return np.asarray([cmap(i / n)[:3] for i in range(n)], np.float32)


def concept_overlay(image: Any, maps: Any, *, image_weight: float = 0.5) -> np.ndarray:
  """uint8 RGB: each pixel colored by its strongest concept (hue) with that concept's map as brightness, blended
  with the photo, as pytorch-grad-cam's ``show_factorization_on_image``. `maps`: ``(K, h, w)`` in [0, 1] (one
  image's `jaxcam.dff` maps), resized to the photo."""
  img = _as_uint8_image(image).astype(np.float32) / 255.0
  m = np.asarray(maps, np.float32)
  if m.ndim != 3:
    raise ValueError(f"Expected one image's concept maps (K, h, w), got shape {m.shape}.")
  m = np.stack([map_to_image(mi, img.shape[:2]) for mi in m])
  owner = m.argmax(axis=0)
  colors = _concept_colors(len(m))
  strength = np.take_along_axis(m, owner[None], axis=0)[0]
  mask = colors[owner] * strength[..., None]
  out = img * image_weight + mask * (1.0 - image_weight)
  return np.uint8(np.clip(out, 0, 1) * 255)


def show_concepts(image: Any, maps: Any, labels: Sequence[str] | None = None, *, ax=None, image_weight: float = 0.5):
  """Draw `concept_overlay` with a legend (one colored entry per concept, e.g. its top classes from
  ``Concepts.scores``) on `ax` (a new figure when None); returns the figure."""
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  m = np.asarray(maps)
  labels = [f"concept {k}" for k in range(len(m))] if labels is None else list(labels)
  if len(labels) != len(m):
    raise ValueError(f"Expected {len(m)} labels (one per concept), got {len(labels)}.")
  if ax is None:
    fig = Figure(figsize=(5, 4), dpi=100)
    ax = fig.subplots()
  else:
    fig = ax.figure
  ax.imshow(concept_overlay(image, m, image_weight=image_weight))
  colors = _concept_colors(len(m))
  ax.legend(handles=[Patch(color=c, label=t) for c, t in zip(colors, labels)], fontsize=7, loc="lower left")
  ax.set_xticks([])
  ax.set_yticks([])
  return fig


def randomization_plot(result: Any, images: Sequence[Any] | None = None, *, image: int = 0, cell: float = 1.8):
  """The cascading-randomization sanity check (`jaxcam.metrics.randomization_check`): one image's map at every
  stage (original first, then each layer randomized, top down) over the similarity curves (Spearman, |Spearman|
  of the raw maps, SSIM; mean over the batch). Returns the matplotlib figure."""
  from matplotlib.figure import Figure

  maps = np.asarray(result.maps)
  stages = ["original"] + [f"+ {s}" for s in result.stages]
  cols = len(stages) + (images is not None)
  fig = Figure(figsize=(cell * cols, cell * 2.4), dpi=100)
  grid = fig.add_gridspec(2, cols, height_ratios=[1, 1.2])
  offset = 0
  if images is not None:
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(_as_uint8_image(images[image]))
    ax.set_title("input", fontsize=8)
    ax.set_axis_off()
    offset = 1
  for j, title in enumerate(stages):
    ax = fig.add_subplot(grid[0, j + offset])
    ax.imshow(maps[j, image], cmap="jet", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)
    ax.set_axis_off()
  ax = fig.add_subplot(grid[1, :])
  steps = np.arange(1, len(stages))
  for name in ("spearman", "spearman_abs", "ssim"):
    ax.plot(steps, np.nanmean(np.asarray(getattr(result, name)), axis=1), marker="o", label=name)
  ax.set_xticks(steps)
  ax.set_xticklabels(stages[1:], rotation=30, fontsize=7)
  ax.set_ylabel("similarity to original")
  ax.set_title(f"{result.method}: cascading randomization", fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def show(fig, *, dpi: int = 60):
  """An `IPython.display.Image` of a figure (notebooks; no pyplot, no global backend)."""
  import io

  from IPython.display import Image

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return Image(data=buf.getvalue(), format="png")
