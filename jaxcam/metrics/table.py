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
  """What every metric function sees: `evaluate` builds one and hands it to each `MetricSpec`'s ``fn``.

  Args:
    tap: the model (a jaxcam tap).
    x: images ``(B, H, W, C)``.
    maps: ``(B, H, W)`` the maps to evaluate, at the input's size.
    target: the score the maps explain (as for `jaxcam.explain`).
    method: the `MethodSpec` row that made the maps (composite metrics re-run it).
    options: the method's options, as used for the maps.
    key: a PRNG key (ROAD's noise).
    regions: ``(masks (B, H, W) bool, present (B,) bool)`` or None: each image's ground-truth region and whether
      it has one.
    steps: deletion / insertion steps.
    chunk_size: perturbed copies per forward pass.
    tolerance: the pointing game's tolerance in pixels.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> maps = jnp.zeros((2, 4, 4)).at[:, 0, 0].set(1.0)
    >>> masks = jnp.zeros((2, 4, 4), bool).at[:, :2, :2].set(True)
    >>> ctx = metrics.MetricContext(None, jnp.ones((2, 4, 4, 3)), maps, regions=(masks, jnp.array([True, False])))
    >>> metrics.get_metric("pointing").fn(ctx).tolist()  # the second image has no region
    [1.0, nan]
  """

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
  """One row of the metric table (`METRICS`); `register_metric` adds it, `evaluate` runs it.

  Args:
    name: the metric's name in `evaluate` and ``jaxcam evaluate --metrics``, a non-empty string.
    fn: ``fn(ctx) -> (B,)`` per-image values (NaN where undefined, e.g. no region), given a `MetricContext`.
    better: "higher" or "lower".
    needs: a subset of `NEEDS`: ``"regions"`` (ground-truth masks) and / or ``"method"`` (it re-runs the method).
    title: the column name (default the name).

  Raises:
    ValueError: an empty `name`, `better` not "higher" / "lower", or `needs` not a tuple from `NEEDS`.
    TypeError: `fn` not callable.

  Examples:
    >>> import numpy as np, jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> def mean_saliency(ctx):  # per-image values, (B,)
    ...   return np.asarray(ctx.maps).mean(axis=(1, 2))
    >>> spec = metrics.MetricSpec("mean_saliency", mean_saliency, better="lower", title="Mean saliency")
    >>> ctx = metrics.MetricContext(None, jnp.ones((2, 4, 4, 3)), jnp.full((2, 4, 4), 0.25))
    >>> spec.fn(ctx).tolist(), spec.arrow
    ([0.25, 0.25], '↓')
  """

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
    """The arrow a table shows beside the metric's title: "↑" when higher is better, "↓" when lower.

    Returns:
      "↑" or "↓".

    Examples:
      >>> from jaxcam import metrics
      >>> metrics.get_metric("insertion").arrow, metrics.get_metric("deletion").arrow
      ('↑', '↓')
    """
    return "↑" if self.better == "higher" else "↓"


METRICS: dict[str, MetricSpec] = {}


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
  """Add a row to the metric table (its name then works in `evaluate` and ``jaxcam evaluate --metrics``).

  Args:
    spec: the `MetricSpec` row.
    replace: redefine a metric already registered under the same name.

  Returns:
    `spec`, as given.

  Raises:
    TypeError: `spec` not a `MetricSpec`.
    ValueError: a metric of that name is already registered and `replace` is False.

  Examples:
    >>> import numpy as np
    >>> from jaxcam import metrics
    >>> spec = metrics.MetricSpec("peak", lambda ctx: np.asarray(ctx.maps).max(axis=(1, 2)))
    >>> metrics.register_metric(spec) is metrics.get_metric("peak")
    True
    >>> del metrics.METRICS["peak"]  # the table is global: leave it as it was
  """
  if not isinstance(spec, MetricSpec):
    raise TypeError(f"Expected a jaxcam MetricSpec, got {type(spec).__name__}.")
  if spec.name in METRICS and not replace:
    raise ValueError(f"Metric {spec.name!r} is already registered; pass replace=True to redefine it.")
  METRICS[spec.name] = spec
  return spec


def get_metric(name: str | MetricSpec) -> MetricSpec:
  """The table row for `name`, or a `MetricSpec` as is.

  Args:
    name: a registered metric name (`METRICS`), or a `MetricSpec` (returned as is).

  Returns:
    The `MetricSpec` row.

  Raises:
    KeyError: an unknown name (`jaxcam.UnknownNameError`, also a `ValueError`), with the closest names.

  Examples:
    >>> from jaxcam import metrics
    >>> spec = metrics.get_metric("deletion")
    >>> spec.title, spec.better, spec.needs
    ('Deletion AUC', 'lower', ())
    >>> metrics.get_metric(spec) is spec
    True
  """
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
  from jaxcam.metrics.removal import road

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
  for Score-CAM, ``{"relu": False}``).

  Args:
    tap: the model, a jaxcam tap (1-D taps: the metrics see ``(B, L, 1, C)`` grids).
    x: images ``(B, H, W, C)`` (or ``(B, L, C)`` sequences for a 1-D tap).
    method: the method: a name (``jaxcam.method_names()``) or a `MethodSpec` row.
    target: as for `jaxcam.explain` (None: each image's top class).
    metrics: metric names from `METRICS` or `MetricSpec` rows (default `DEFAULT_METRICS`).
    maps: precomputed maps ``(B, H, W)`` at the input's size; None explains `x` with `method`.
    regions: ``(masks (B, H, W) bool, present (B,) bool)``, needed by the region metrics (pointing, energy, auroc,
      iou); an image without a region scores NaN there.
    key: ROAD's and keyed methods' PRNG key (default ``jax.random.key(0)``).
    steps: deletion / insertion steps.
    chunk_size: perturbed copies per forward pass.
    tolerance: the pointing game's tolerance in pixels.
    method_options: the method's options and `jaxcam.explain`'s flags.

  Returns:
    ``{name: (B,) numpy array}`` per metric, in the order of `metrics` (Average Drop and Increase in percent).

  Raises:
    TypeError: `metrics` given as a single string.
    ValueError: a region metric without `regions`, or a metric that re-runs the method (ADCC, ARCC) on a 1-D tap.
    KeyError: an unknown metric or method name (`jaxcam.UnknownNameError`, also a `ValueError`).

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> from jaxcam import metrics
    >>> params = {"w": jnp.ones((3, 2)), "v": jnp.eye(2)}
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> values = metrics.evaluate(tap, x, "gradcam", metrics=["avg_drop", "deletion"], steps=2)
    >>> {name: v.shape for name, v in values.items()}
    {'avg_drop': (2,), 'deletion': (2,)}
  """
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
