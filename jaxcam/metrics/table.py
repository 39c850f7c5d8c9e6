"""The metric table: name -> one function of a `MetricContext`, which way is better, and what it needs.

`jaxcam evaluate` and `jaxcam.metrics.evaluate` read this table; a new metric is one function and one row
(`register_metric`), from user code as from the package::

    def mean_saliency(ctx):                       # per-image values, (B,)
      return np.asarray(ctx.maps).mean(axis=(1, 2))

    jaxcam.metrics.register_metric(jaxcam.metrics.MetricSpec("mean_saliency", mean_saliency, better="lower"))
    jaxcam.metrics.evaluate(tap, x, "gradcam", metrics=["deletion", "mean_saliency"])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxcam._errors import UnknownNameError, unknown_name_message

__all__ = ["METRICS", "DEFAULT_METRICS", "MetricContext", "MetricSpec", "evaluate", "get_metric", "register_metric"]

NEEDS = ("regions", "method")
"""What a metric may need beyond the tap, images, maps and target: ground-truth regions (``(masks, present)``),
or the method itself (composite metrics re-run it)."""


@dataclasses.dataclass(frozen=True)
class MetricContext:
  """What every metric function sees. tap, x: the model and images ``(B, H, W, C)``. maps: ``(B, H, W)``.
  target: the score the maps explain. method, options: the row that made the maps and its options. key: a PRNG key
  (ROAD's noise). regions: ``(masks (B, H, W) bool, present (B,) bool)`` or None. steps, chunk_size, tolerance:
  deletion / insertion steps, perturbed copies per pass, the pointing game's tolerance in pixels."""

  tap: Any
  x: Any
  maps: Any
  target: Any = None
  method: Any = None
  options: dict = dataclasses.field(default_factory=dict)
  key: Any = None
  regions: tuple | None = None
  steps: int = 20
  chunk_size: int = 32
  tolerance: int = 15


@dataclasses.dataclass(frozen=True)
class MetricSpec:
  """One row of the metric table. fn: ``fn(ctx) -> (B,)`` per-image values (NaN where undefined, e.g. no region).
  better: "higher" or "lower". needs: a subset of `NEEDS`. title: the column name (default the name)."""

  name: str
  fn: Callable[[MetricContext], Any]
  better: str = "higher"
  needs: tuple[str, ...] = ()
  title: str = ""

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Expected MetricSpec `name` to be a non-empty string, got {self.name!r}.")
    if not callable(self.fn):
      raise TypeError(f"Expected MetricSpec `fn` to be callable, got {type(self.fn).__name__}.")
    if self.better not in ("higher", "lower"):
      raise ValueError(f"Expected MetricSpec `better` to be 'higher' or 'lower', got {self.better!r}.")
    if not isinstance(self.needs, tuple) or set(self.needs) - set(NEEDS):
      raise ValueError(f"Expected MetricSpec `needs` to be a tuple from {NEEDS}, got {self.needs!r}.")

  @property
  def arrow(self) -> str:
    return "↑" if self.better == "higher" else "↓"


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
  """Add a row to the metric table (its name then works in `evaluate` and ``jaxcam evaluate --metrics``)."""
  if not isinstance(spec, MetricSpec):
    raise TypeError(f"Expected a jaxcam MetricSpec, got {type(spec).__name__}.")
  if spec.name in METRICS and not replace:
    raise ValueError(f"Metric {spec.name!r} is already registered; pass replace=True to redefine it.")
  METRICS[spec.name] = spec
  return spec


def get_metric(name: str | MetricSpec) -> MetricSpec:
  """The table row for `name`, or a `MetricSpec` as is."""
  if isinstance(name, MetricSpec):
    return name
  if name not in METRICS:
    raise UnknownNameError(unknown_name_message("metric", str(name), list(METRICS), "a registered metric"))
  return METRICS[name]


# ---------------------------------------------------------------------------------------------- the built-in rows


def _confidence(field: str) -> Callable[[MetricContext], Any]:
  def run(ctx: MetricContext):
    from jaxcam.metrics.faithfulness import confidence_change

    return 100 * np.asarray(getattr(confidence_change(ctx.tap, ctx.x, ctx.maps, target=ctx.target), field), float)

  return run


def _curve(which: str) -> Callable[[MetricContext], Any]:
  def run(ctx: MetricContext):
    from jaxcam.metrics import faithfulness

    fn = getattr(faithfulness, which)
    return np.asarray(fn(ctx.tap, ctx.x, ctx.maps, target=ctx.target, steps=ctx.steps, chunk_size=ctx.chunk_size).auc)

  return run


def _road(ctx: MetricContext):
  from jaxcam.metrics.faithfulness import road

  kw = dict(target=ctx.target, order="combined", key=ctx.key, chunk_size=ctx.chunk_size)
  return np.asarray(road(ctx.tap, ctx.x, ctx.maps, **kw).score)


def _adcc(ctx: MetricContext):  # the method is re-run on the masked images (Coherency)
  from jaxcam.metrics.composite import adcc

  return np.asarray(adcc(ctx.tap, ctx.x, ctx.maps, ctx.method, target=ctx.target, **ctx.options).adcc)


def _arcc(ctx: MetricContext):
  from jaxcam.metrics.composite import arcc

  kw = {"key": ctx.key, "chunk_size": ctx.chunk_size}
  return np.asarray(arcc(ctx.tap, ctx.x, ctx.maps, ctx.method, target=ctx.target, **kw, **ctx.options).arcc)


def _pointing(field: str) -> Callable[[MetricContext], Any]:
  def run(ctx: MetricContext):
    from jaxcam.metrics.localization import pointing_game

    masks, present = ctx.regions  # type: ignore[misc]
    p = pointing_game(ctx.maps, masks, tolerance=ctx.tolerance)
    return np.where(present, np.asarray(getattr(p, field), float), np.nan)

  return run


def _localization(read: Callable[[Any], Any]) -> Callable[[MetricContext], Any]:
  def run(ctx: MetricContext):
    from jaxcam.metrics.localization import localization

    masks, present = ctx.regions  # type: ignore[misc]
    return np.where(present, np.asarray(read(localization(ctx.maps, masks, thresholds=[0.5]))), np.nan)

  return run


for _spec in [
  MetricSpec("avg_drop", _confidence("drop"), "lower", title="Average Drop (%)"),
  MetricSpec("increase", _confidence("increased"), "higher", title="Increase in Confidence (%)"),
  MetricSpec("deletion", _curve("deletion"), "lower", title="Deletion AUC"),
  MetricSpec("insertion", _curve("insertion"), "higher", title="Insertion AUC"),
  MetricSpec("road", _road, "higher", title="ROAD (combined)"),
  MetricSpec("adcc", _adcc, "higher", needs=("method",), title="ADCC"),
  MetricSpec("arcc", _arcc, "higher", needs=("method",), title="ARCC"),
  MetricSpec("pointing", _pointing("hits"), "higher", needs=("regions",), title="Pointing game"),
  MetricSpec("energy", _pointing("energy"), "higher", needs=("regions",), title="Energy pointing game"),
  MetricSpec("auroc", _localization(lambda loc: loc.auroc), "higher", needs=("regions",), title="Pixel AUROC"),
  MetricSpec("iou", _localization(lambda loc: loc.iou[:, 0]), "higher", needs=("regions",), title="IoU at 0.5"),
]:
  register_metric(_spec)

DEFAULT_METRICS = ("avg_drop", "increase", "deletion", "insertion", "road")
"""`jaxcam evaluate`'s default: every metric that needs neither regions nor re-running the method (plus the
region metrics when regions are given)."""


def evaluate(
  tap: Any,
  x: Any,
  method: Any,
  target: Any = None,
  *,
  metrics: Sequence[str | MetricSpec] = DEFAULT_METRICS,
  maps: Any = None,
  regions: tuple | None = None,
  key: Any = None,
  steps: int = 20,
  chunk_size: int = 32,
  tolerance: int = 15,
  method_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
  """Per-image values ``{name: (B,)}`` of each metric for the maps of `method` (computed with ``jaxcam.explain``
  unless `maps` is given). `regions`: ``(masks (B, H, W), present (B,))`` for the region metrics; `key`: ROAD's
  and keyed methods' PRNG key (default ``jax.random.key(0)``); `steps`, `chunk_size`, `tolerance`: the metrics'
  own settings; `method_options`: the method's options and `jaxcam.explain`'s flags (e.g. ``{"chunk_size": 8}``
  for Score-CAM, ``{"relu": False}``)."""
  import jax

  from jaxcam.api import explain
  from jaxcam.methods.table import get_method

  if isinstance(metrics, str):
    raise TypeError(f"Expected `metrics` to be a sequence of metric names, got the string {metrics!r}: use [name].")
  specs = [get_metric(m) for m in metrics]
  missing = [s.name for s in specs if "regions" in s.needs and regions is None]
  if missing:
    raise ValueError(f"Metrics {missing} need `regions=(masks, present)`: the ground-truth region of each image.")
  key = jax.random.key(0) if key is None else key
  spec = get_method(method)
  options = dict(method_options or {})
  if "key" in spec.defaults() and "key" not in options:
    options["key"] = key
  if maps is None:
    maps = explain(spec, tap, x, target, **options).maps
  if getattr(tap, "input_layout", "NHWC") == "NLC" and np.ndim(x) == 3:  # 1-D: the metrics see (B, L, 1, C) grids
    rerun = [s.name for s in specs if "method" in s.needs]
    if rerun:
      raise ValueError(f"Metrics {rerun} re-run the method on masked inputs; for 1-D taps use the others.")
    x, maps = jax.numpy.asarray(x)[:, :, None, :], jax.numpy.asarray(maps)[..., None]
  ctx = MetricContext(tap, x, maps, target, spec, dict(options), key, regions, steps, chunk_size, tolerance)
  return {s.name: np.asarray(s.fn(ctx)) for s in specs}
