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

  Args:
    cam: one map ``(h, w)`` (numpy or jax), values in [0, 1]; NaN is read as 0.
    size: the photo's ``(H, W)``.

  Returns:
    A float32 array ``(H, W)`` in [0, 1] (PIL's bilinear resize, clipped).

  Raises:
    ValueError: `cam` is not 2-D.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> viz.map_to_image(np.array([[0.0, 1.0]]), (1, 4)).tolist()
    [[0.0, 0.25, 0.75, 1.0]]
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

  Args:
    image: the photo, any input `jaxcam.models.to_uint8_rgb` takes.
    cam: one map ``(h, w)`` in [0, 1], resized to the photo (`map_to_image`).
    cmap: a matplotlib colormap name.
    alpha: the map's weight in [0, 1] (0: the photo alone, 1: the colored map alone).

  Returns:
    A uint8 RGB array ``(H, W, 3)``.

  Raises:
    ValueError: `alpha` outside [0, 1], a map that is not 2-D, or pixels `to_uint8_rgb` refuses.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> photo = np.zeros((4, 6, 3), np.uint8)
    >>> out = viz.overlay(photo, np.ones((2, 2)))  # jet(1.0) is dark red (0.5, 0, 0), weighted 0.5
    >>> out.shape, out.dtype, out[0, 0].tolist()
    ((4, 6, 3), dtype('uint8'), [64, 0, 0])
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
  """(row, col) of the map's maximum, in the map's coordinates or scaled to ``size = (H, W)``.

  Args:
    cam: one map ``(h, w)``; NaN is read as 0; ties go to the first maximum in row-major order.
    size: the photo's ``(H, W)``: the peak cell's center is scaled to it; None: the map's own coordinates.

  Returns:
    ``(row, col)`` as Python ints.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> cam = np.array([[0.0, 1.0], [0.0, 0.0]])
    >>> viz.peak(cam), viz.peak(cam, (10, 10))  # the cell (0, 1), its center in a 10 x 10 photo
    ((0, 1), (2, 7))
  """
  m = np.nan_to_num(np.asarray(cam, np.float32))
  r, c = np.unravel_index(int(np.argmax(m)), m.shape)
  if size is None:
    return int(r), int(c)
  return int((r + 0.5) * size[0] / m.shape[0]), int((c + 0.5) * size[1] / m.shape[1])


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> str:
  """Write an RGB uint8 array as PNG (deterministic bytes: no timestamps); returns the path.

  Args:
    path: where to write (an existing file is replaced).
    rgb: the image ``(H, W, 3)``, cast to uint8 (e.g. the output of `overlay`).

  Returns:
    `path` as a string.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from jaxcam import viz
    >>> with tempfile.TemporaryDirectory() as d:
    ...   path = viz.save_png(os.path.join(d, "overlay.png"), np.full((2, 3, 3), 7, np.uint8))
    ...   np.asarray(Image.open(path)).shape
    (2, 3, 3)
  """
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

  Returns the matplotlib figure; with `path`, also saves it as PNG.

  Args:
    images: the photos (any input `jaxcam.models.to_uint8_rgb` takes); large ones are shrunk first.
    maps_by_method: ``{method name: one map (h, w) per image}``, one column per method, in that order.
    titles: one row label per image (None: "image 0", "image 1", ...).
    path: a PNG file to save the figure to (None: not saved).
    cmap: a matplotlib colormap name.
    alpha: the maps' weight in the overlays (`overlay`).
    cell: the side of one cell in inches (at 100 dpi).

  Returns:
    A ``matplotlib.figure.Figure`` (no pyplot: nothing is shown) with ``len(images) * (1 + len(maps_by_method))``
      axes.

  Raises:
    ValueError: a method with not one map per image, or what `overlay` refuses.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> fig = viz.grid([np.zeros((8, 8, 3), np.uint8)], {"gradcam": [np.eye(2)]})
    >>> len(fig.axes), [ax.get_title() for ax in fig.axes]
    (2, ['input', 'gradcam'])
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
  0.1 and centered on gray, as pytorch-grad-cam's ``deprocess_image``.

  Args:
    grad: one gradient image ``(H, W, C)`` (numpy or jax), any float values.

  Returns:
    A uint8 array ``(H, W, C)``: ``clip((g - mean) / (std + 1e-5) * 0.1 + 0.5, 0, 1) * 255``.

  Raises:
    ValueError: `grad` is not 3-D.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> viz.deprocess_gradient(np.zeros((2, 2, 3)))[0, 0].tolist()  # a zero gradient is mid-gray
    [127, 127, 127]
  """
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
  image's `jaxcam.dff` maps), resized to the photo.

  Args:
    image: the photo, any input `jaxcam.models.to_uint8_rgb` takes.
    maps: ``(K, h, w)`` in [0, 1], one map per concept; concept ``k`` gets the hue ``k / K`` of the "hsv" colormap.
    image_weight: the photo's weight in the blend (the concepts get ``1 - image_weight``).

  Returns:
    A uint8 RGB array ``(H, W, 3)``.

  Raises:
    ValueError: `maps` is not 3-D, or pixels `to_uint8_rgb` refuses.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> maps = np.stack([np.ones((2, 2)), np.zeros((2, 2))])  # concept 0 (red) everywhere
    >>> out = viz.concept_overlay(np.zeros((4, 4, 3), np.uint8), maps)
    >>> out.shape, out[0, 0].tolist()
    ((4, 4, 3), [127, 0, 0])
  """
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
  ``Concepts.scores``) on `ax` (a new figure when None); returns the figure.

  Args:
    image: the photo, any input `jaxcam.models.to_uint8_rgb` takes.
    maps: ``(K, h, w)`` in [0, 1], one map per concept.
    labels: one legend entry per concept (None: "concept 0", "concept 1", ...).
    ax: the matplotlib axes to draw on (None: a new ``Figure`` with one axes, no pyplot).
    image_weight: the photo's weight in the blend (`concept_overlay`).

  Returns:
    The ``matplotlib.figure.Figure`` of `ax`.

  Raises:
    ValueError: not one label per concept, or what `concept_overlay` refuses.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> maps = np.stack([np.ones((2, 2)), np.zeros((2, 2))])
    >>> fig = viz.show_concepts(np.zeros((4, 4, 3), np.uint8), maps, ["cat", "sofa"])
    >>> len(fig.axes), [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    (1, ['cat', 'sofa'])
  """
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
  of the raw maps, SSIM; mean over the batch). Returns the matplotlib figure.

  Args:
    result: a `jaxcam.metrics.Randomization` (``maps`` ``(S + 1, B, H, W)``, the curves ``(S, B)``).
    images: the batch's photos, drawn first in the top row (None: no photo).
    image: the index in the batch of the image whose maps are drawn.
    cell: the side of one map in inches (at 100 dpi).

  Returns:
    A ``matplotlib.figure.Figure`` (no pyplot): one axes per stage (plus the photo), then the curves.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> from jaxcam.metrics import Randomization
    >>> curve = np.ones((1, 1))  # S = 1 stage, B = 1 image
    >>> result = Randomization(maps=np.zeros((2, 1, 4, 4)), spearman=curve, spearman_abs=curve, ssim=curve,
    ...                        stages=("head",), method="gradcam")
    >>> fig = viz.randomization_plot(result)
    >>> [ax.get_title() for ax in fig.axes]
    ['original', '+ head', 'gradcam: cascading randomization']
  """
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
  """An `IPython.display.Image` of a figure (notebooks; no pyplot, no global backend).

  Args:
    fig: a matplotlib figure (from `grid`, `show_concepts`, `randomization_plot`, ...).
    dpi: the resolution of the PNG.

  Returns:
    An ``IPython.display.Image`` holding the PNG bytes; a notebook cell ending with it displays the figure.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import viz
    >>> fig = viz.grid([np.zeros((8, 8, 3), np.uint8)], {"gradcam": [np.eye(2)]}, cell=1.0)
    >>> image = viz.show(fig)
    >>> type(image).__name__, image.data[:4]
    ('Image', b'\x89PNG')
  """
  import io

  from IPython.display import Image

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  return Image(data=buf.getvalue(), format="png")
