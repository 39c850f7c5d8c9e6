"""The single method table: name -> pure function, what it needs, its options and hooks.

Every public method function (`jaxcam.gradcam`, ...), `jaxcam.explain`, `jaxcam.explain_many`, the CLI's
``--method`` and the common test suite come from this table. Adding a method is one pure function in its family
file plus one row here; a method that needs something new adds one provider (`jaxcam.providers`). A row built
outside the package (``jaxcam.explain(MethodSpec(...), tap, x)``) works the same way.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxcam import fullgradient
from jaxcam._errors import UnknownNameError, unknown_name_message
from jaxcam.lrp import rows as _lrp_rows
from jaxcam.methods import attention, classic, factorization, gradient, opticam, perturbation, rollout

__all__ = [
  "MethodSpec",
  "METHODS",
  "OUTPUTS",
  "get_method",
  "method_names",
  "register_method",
  "register_wrapper",
  "wrappers",
]

OUTPUTS = ("channel", "spatial", "map", "input_map")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One row of the method table.

  Args:
    name, fn, output, needs, options, title, aliases and the hooks: the fields below.

  Examples:
    >>> import jaxcam
    >>> row = jaxcam.get_method("gradcam")
    >>> row.output, row.needs, row.class_specific
    ('channel', ('grads',), True)

  What every row has:
    name: the method's name (registered names have no parentheses; a wrapped row is ``wrapper(inner)``).
    fn: ``fn(A, *needs, **options)``: A ``(B, K, *spatial, C)`` (two spatial axes for images, three for volumes:
      read them from the rank) and one positional argument per entry of `needs` (None for a need that `select`
      left out).
    output: what fn returns: "channel" weights ``(B, K, C)`` or "spatial" weights ``(B, K, *spatial, C)`` (the
      map is then ``sum_k w_k A_k``), a "map" ``(B, K, *spatial)`` at the layer's resolution, or an "input_map"
      ``(B, K, H, W)`` at the input's (FullGrad: it reads the whole model, not the layer).
    needs: names of registered providers (`jaxcam.providers`). options: fn's keyword options with defaults.
    title, aliases: for people (tables, plots) and other spellings of the name.

  Hooks (None unless the row needs one), in the order they run:
    controls / select: options read by `select` or a hook rather than fn (e.g. Grad-CAM++'s ``derivatives``);
      ``select(options) -> needs`` actually computed for these options (default: all of `needs`).
    around: runs the whole row its own way, ``around(run, tap, x, target, options, post, progress) ->
      Explanation`` (`post`: the `jaxcam.postprocess.PostOptions`), where ``run(tap, x, target, options, post,
      progress)`` explains with this row without the hook
      (augmented copies: `jaxcam.aug_smooth`; patches: `jaxcam.sess`); a wrapper keeps the previous hook as its
      ``inner``, so hooks nest.
    inputs: computes the needs in place of the plain forward pass (`jaxcam.smooth`, `jaxcam.finer`).
    per_layer: ``per_layer(maps, fusion=, n_layers=)`` on each layer's normalized map at layer resolution.
    fuse: ``fuse(maps, size=, options=, normalize=, relu=, upsample=)`` replaces the upsampling and layer fusion:
      it gets each layer's post-processed map at layer resolution and returns ``(B, K, *size)`` (`jaxcam.refine`).
    normalize_layers: whether each layer's map is min-max normalized before the layers are fused (False: raw maps
      are averaged, then normalized once, as LeGrad does).
    check: ``check(explanation, options)``, run after eager calls (warnings, clear errors).
    class_specific: whether the map depends on the target.
  An `inputs` or `around` hook may declare ``options`` (with defaults), ``expensive`` and ``cost(inner_cost)``.
  """

  name: str
  fn: Callable[..., Any]
  output: str
  needs: tuple[str, ...] = ("grads",)
  options: tuple[tuple[str, Any], ...] = ()
  controls: tuple[tuple[str, Any], ...] = ()
  select: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None
  inputs: Any = None
  per_layer: Callable[..., Any] | None = None
  check: Callable[[Any, Mapping[str, Any]], None] | None = None
  class_specific: bool = True
  fuse: Callable[..., Any] | None = None
  aliases: tuple[str, ...] = ()
  title: str = ""
  normalize_layers: bool = True
  around: Any = None

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"Expected MethodSpec `name` to be a non-empty string, got {self.name!r}.")
    if not callable(self.fn):
      raise TypeError(f"Expected MethodSpec `fn` to be callable, got {type(self.fn).__name__}.")
    if self.output not in OUTPUTS:
      raise ValueError(f"Expected MethodSpec `output` to be one of {OUTPUTS}, got {self.output!r}.")
    if not isinstance(self.needs, tuple) or not all(isinstance(n, str) for n in self.needs):
      raise TypeError(f"Expected MethodSpec `needs` to be a tuple of need names, got {self.needs!r}.")

  def needs_for(self, options: Mapping[str, Any]) -> tuple[str, ...]:
    """The needs computed for these (complete) options."""
    return self.needs if self.select is None else tuple(self.select(options))

  def _providers(self, needs=None):
    from jaxcam.providers import get_provider

    return [get_provider(n, method=self.name) for n in (self.needs if needs is None else needs)]

  def defaults(self) -> dict[str, Any]:
    """Every option this method accepts, with its default: fn's, the controls' and its providers'."""
    out: dict[str, Any] = {}
    for p in self._providers():
      out.update(p.options)
    out.update(self.controls)
    out.update(self.options)
    for hook in (self.inputs, self.around):
      out.update(getattr(hook, "options", ()))
    return out

  def applies(self, tap: Any) -> bool:
    """Whether every provider of this row can read `tap` (LeGrad needs transformer blocks; CAM a declared Dense
    layer); ``explain_many(None, ...)`` runs only such rows."""
    return all(p.applies is None or p.applies(tap) for p in self._providers())

  def expensive(self, options: Mapping[str, Any] | None = None) -> bool:
    """Whether its cost grows with the layer's size or a sample count (explain_many runs it only if asked)."""
    opts = {**self.defaults(), **(options or {})}
    hooks = (self.inputs, self.around)
    return any(bool(getattr(h, "expensive", False)) for h in hooks) or any(
      p.expensive for p in self._providers(self.needs_for(opts))
    )

  def cost(self, options: Mapping[str, Any] | None = None) -> str:
    """What one image costs, in words (forward pass + each provider)."""
    opts = {**self.defaults(), **(options or {})}
    parts = ["1 forward pass"] + [f"{p.name}: {p.cost}" for p in self._providers(self.needs_for(opts)) if p.cost]
    text = "; ".join(parts)
    for hook in (self.inputs, self.around):
      scale = getattr(hook, "cost", None)
      text = scale(text) if scale is not None else text
    return text


def _gradcam_pp_needs(options: Mapping[str, Any]) -> tuple[str, ...]:
  derivs = options["derivatives"]
  if derivs not in ("approx", "exact"):
    raise ValueError(f"Expected `derivatives` to be 'approx' or 'exact', got {derivs!r}.")
  return ("grads", "diagonals") if derivs == "exact" else ("grads",)


def _exact_needs(options: Mapping[str, Any]) -> tuple[str, ...]:
  return ("grads", "diagonals")


def _check_gradcam_pp(ex, options: Mapping[str, Any]) -> None:
  maps = np.asarray(ex.maps)
  if options.get("derivatives", "exact") == "exact" and np.isnan(maps).any():
    raise ValueError(
      "The structured exact-derivative strategy failed its cross-check against the generic strategy for layer "
      f"{ex.layer!r}: its head is not global pooling of A. Use strategy='generic' or another layer."
    )
  if options.get("convention") == "literal" and not np.any(maps):
    warnings.warn(
      "Grad-CAM++ with convention='literal' (Y = S): the second and third derivatives are all zero here (a "
      "piecewise-linear head), so alpha is 0/0 and the maps are zeros. Use the paper's convention='exp'.",
      stacklevel=4,
    )


METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
  """Add a row to the table (its name then works everywhere a method name does: explain, the CLI, ...).

  Args:
    spec: the `MethodSpec` row. replace: redefine a row of the same name.

  Returns:
    `spec`; ``jaxcam.<spec.name>`` is its public function from now on.

  Raises:
    ValueError: a name already registered (without `replace`) or with parentheses (wrapped names are reserved).
    TypeError: `spec` is not a `MethodSpec`.

  Examples:
    >>> import jax.numpy as jnp, jaxcam
    >>> def mean_grad_weights(activations, grads):  # Grad-CAM by another name
    ...   return jnp.mean(grads, axis=tuple(range(2, grads.ndim - 1)))
    >>> row = jaxcam.register_method(jaxcam.MethodSpec("my_gradcam", mean_grad_weights, "channel"), replace=True)
    >>> row.needs, "my_gradcam" in jaxcam.method_names()
    (('grads',), True)
    >>> _ = jaxcam.methods.table.METHODS.pop("my_gradcam")  # leave the table as it was
  """
  if not isinstance(spec, MethodSpec):
    raise TypeError(f"Expected a jaxcam MethodSpec, got {type(spec).__name__}.")
  if any(c in spec.name for c in "()"):
    raise ValueError(
      f"Expected a registered method name without parentheses, got {spec.name!r}: names like 'smooth(gradcam)' are "
      "what wrappers call the rows they return, so a registered name can never collide with one."
    )
  if spec.name in METHODS and not replace:
    raise ValueError(f"Method {spec.name!r} is already registered; pass replace=True to redefine it.")
  METHODS[spec.name] = spec
  _ALIASES.update({alias: spec.name for alias in spec.aliases})
  return spec


_GRADCAM_PP = MethodSpec(
  "gradcam_pp",
  gradient.gradcam_pp_weights,
  "channel",
  needs=("grads", "diagonals"),
  options=(("eps", 1e-6), ("convention", "exp")),
  controls=(("derivatives", "approx"),),
  select=_gradcam_pp_needs,
  check=_check_gradcam_pp,
  aliases=("gradcam++", "gradcampp"),
  title="Grad-CAM++",
)

for _spec in [
  MethodSpec("cam", classic.cam_weights, "channel", needs=("fc_kernel", "class_ids"), title="CAM"),
  MethodSpec("gradcam", gradient.gradcam_weights, "channel", title="Grad-CAM"),
  _GRADCAM_PP,
  dataclasses.replace(  # the same row with exact derivatives always: no `derivatives` control
    _GRADCAM_PP,
    name="gradcam_pp_exact",
    controls=(),
    select=_exact_needs,
    aliases=("gradcam++_exact", "gradcampp_exact"),
    title="Grad-CAM++ (exact)",
  ),
  MethodSpec(
    "smooth_gradcam_pp",
    gradient.smooth_gradcam_pp_weights,
    "channel",
    needs=("noisy_grad_moments",),
    options=(("eps", 1e-8),),
    aliases=("smoothgradcampp", "smooth_gradcam++"),
    title="Smooth Grad-CAM++",
  ),
  MethodSpec("xgradcam", gradient.xgradcam_weights, "channel", options=(("eps", 1e-7),), title="XGrad-CAM"),
  MethodSpec(
    "layercam", gradient.layercam_weights, "spatial", per_layer=gradient.layercam_fusion_rescale, title="LayerCAM"
  ),
  MethodSpec("hirescam", gradient.hirescam_weights, "spatial", title="HiResCAM"),
  MethodSpec(
    "gradcam_elementwise",
    gradient.gradcam_elementwise_weights,
    "spatial",
    aliases=("gradcamelementwise",),
    title="Grad-CAM element-wise",
  ),
  MethodSpec("shapleycam", gradient.shapleycam_weights, "channel", needs=("grads", "hvp"), title="Shapley-CAM"),
  MethodSpec(
    "eigencam",
    factorization.eigencam_map,
    "map",
    needs=(),
    class_specific=False,
    title="Eigen-CAM",
  ),
  MethodSpec("eigengradcam", factorization.eigengradcam_map, "map", title="EigenGrad-CAM"),
  MethodSpec(
    "segeigencam",
    factorization.segeigencam_map,
    "map",
    aliases=("seg_eigen_cam",),
    title="Seg-Eigen-CAM",
  ),
  MethodSpec(
    "kpcacam",
    factorization.kpcacam_map,
    "map",
    needs=(),
    options=(("kernel", "sigmoid"), ("gamma", None), ("coef0", 1.0), ("degree", 3)),
    class_specific=False,
    aliases=("kpca_cam",),
    title="KPCA-CAM",
  ),
  MethodSpec("fem", classic.fem_weights, "channel", needs=(), options=(("k", 2.0),), class_specific=False, title="FEM"),
  MethodSpec(
    "randomcam",
    classic.randomcam_weights,
    "channel",
    needs=(),
    options=(("key", None),),
    class_specific=False,
    aliases=("random_cam",),
    title="Random-CAM",
  ),
  MethodSpec(
    "scorecam",
    perturbation.scorecam_weights,
    "channel",
    needs=("masked_scores",),
    aliases=("score_cam", "fasterscorecam"),
    title="Score-CAM",
  ),
  MethodSpec(
    "gscorecam",
    perturbation.gscorecam_weights,
    "channel",
    needs=("gradient_masked_scores",),
    aliases=("g_scorecam", "gscore_cam"),
    title="gScoreCAM",
  ),
  MethodSpec(
    "sscam",
    perturbation.sscam_weights,
    "channel",
    needs=("noisy_masked_scores",),
    aliases=("ss_cam",),
    title="SS-CAM",
  ),
  MethodSpec(
    "iscam",
    perturbation.iscam_weights,
    "channel",
    needs=("integrated_masked_scores",),
    aliases=("is_cam",),
    title="IS-CAM",
  ),
  MethodSpec(
    "ablationcam",
    perturbation.ablationcam_weights,
    "channel",
    needs=("ablated_scores", "scores"),
    aliases=("ablation_cam",),
    title="Ablation-CAM",
  ),
  MethodSpec(
    "legrad",
    attention.legrad_map,
    "map",
    needs=("attention_relevance",),
    normalize_layers=False,
    aliases=("le_grad",),
    title="LeGrad",
  ),
  MethodSpec(
    "attention_rollout",
    rollout.attention_rollout_map,
    "map",
    needs=("attention_rollout",),
    class_specific=False,
    title="Attention rollout",
  ),
  MethodSpec(
    "gradient_rollout",
    rollout.gradient_rollout_map,
    "map",
    needs=("gradient_rollout",),
    aliases=("chefer",),
    title="Gradient rollout (Chefer)",
  ),
  MethodSpec(
    "fullgrad",
    fullgradient.fullgrad_map,
    "input_map",
    needs=("fullgrad",),
    aliases=("full_grad",),
    title="FullGrad",
  ),
  MethodSpec(
    "reciprocam",
    perturbation.reciprocam_map,
    "map",
    needs=("position_scores",),
    aliases=("recipro_cam",),
    title="Recipro-CAM",
  ),
  MethodSpec("attnlrp", _lrp_rows.attnlrp_map, "input_map", needs=("lrp",), aliases=("attn_lrp",), title="AttnLRP"),
  MethodSpec("lrp_cam", _lrp_rows.lrp_cam_map, "map", needs=("lrp",), aliases=("lrpcam",), title="LRP-CAM"),
  MethodSpec(
    "opticam", opticam.opticam_weights, "channel", needs=("optimized_weights",), aliases=("opti_cam",), title="Opti-CAM"
  ),
]:
  register_method(_spec)


def _register_wrapped_rows() -> None:
  """The built-in rows that are wrappers of other rows, registered here too: this table is the one registration
  site (wrappers.py imports this module, so it is imported once the rows above exist)."""
  from jaxcam import wrappers

  for spec in (wrappers.finer("gradcam"), wrappers.refine("gradcam_pp")):  # finercam, refinecam
    register_method(spec)


def method_names() -> list[str]:
  """Registered method names, in table order.

  Returns:
    A list of names, one per row of `METHODS`.

  Examples:
    >>> import jaxcam
    >>> jaxcam.method_names()[:3]
    ['cam', 'gradcam', 'gradcam_pp']
  """
  return list(METHODS)


_USER_WRAPPERS: dict[str, tuple[Callable[..., MethodSpec], str | None]] = {}


def register_wrapper(name: str, wrapper: Callable[..., MethodSpec], *, default: str | None = None) -> None:
  """Let ``"name(<method>)"`` (and ``"name"`` alone when `default` names a method) be looked up by name, as the
  built-in wrappers are (``"smooth(gradcam_pp)"``, ``"sess"``): `wrapper(inner_row)` with its default options
  must return the row. Names then work in the CLI's ``--method`` and wherever a method name does."""
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f"Expected a wrapper name that is a Python identifier, got {name!r}.")
  if not callable(wrapper):
    raise TypeError(f"Expected `wrapper` to be callable, got {type(wrapper).__name__}.")
  _USER_WRAPPERS[name] = (wrapper, default)


def wrappers() -> dict[str, tuple[Callable[..., MethodSpec], str | None]]:
  """``{name: (wrapper, default method or None)}``: the wrappers a method name may apply, ``"sess(gradcam)"``."""
  from jaxcam import multiscale
  from jaxcam import wrappers as w

  builtin: dict[str, tuple[Callable[..., MethodSpec], str | None]] = {
    "smooth": (w.smooth, None),
    "aug_smooth": (w.aug_smooth, None),
    "eigen_smooth": (w.eigen_smooth, None),
    "finer": (w.finer, "gradcam"),
    "refine": (w.refine, "gradcam_pp"),
    "sess": (multiscale.sess_row, "gradcam"),
  }
  return {**builtin, **_USER_WRAPPERS}


def get_method(name: str | MethodSpec) -> MethodSpec:
  """The table row for `name` (aliases such as "gradcam++" and dashes accepted), or a `MethodSpec` as is.

  A wrapped name, ``"wrapper(<name>)"`` (``"smooth(gradcam_pp)"``, ``"aug_smooth(eigen_smooth(gradcam))"``), is the
  wrapper with its default options around that row, the very name the wrapper gives it; a wrapper's name alone is
  its default method wrapped (``"sess"`` is ``"sess(gradcam)"``, SESS's default).

  Args:
    name: a registered name or alias, a wrapped name, or a `MethodSpec` (returned as is).

  Returns:
    The `MethodSpec` row.

  Raises:
    UnknownNameError: an unknown name (the message lists the closest names). TypeError: neither a string nor a row.

  Examples:
    >>> import jaxcam
    >>> jaxcam.get_method("gradcam++").name, jaxcam.get_method("smooth(gradcam)").name
    ('gradcam_pp', 'smooth(gradcam)')
  """
  if isinstance(name, MethodSpec):
    return name
  if not isinstance(name, str):
    raise TypeError(
      f"Expected `method` to be a method name such as 'gradcam' or a jaxcam MethodSpec, got {type(name).__name__}."
    )
  key = name.strip().lower().replace("-", "_")
  key = _ALIASES.get(key, _ALIASES.get(key.replace("_", ""), key))
  if key in METHODS:
    return METHODS[key]
  outer, paren, rest = key.partition("(")
  known = wrappers()
  if outer.strip() in known and (not paren or rest.endswith(")")):
    wrapper, default = known[outer.strip()]
    inner = rest[:-1] if paren else default
    if inner is None:
      raise ValueError(f"Expected a method inside {outer.strip()!r}, e.g. '{outer.strip()}(gradcam)', got {name!r}.")
    return wrapper(get_method(inner))
  raise UnknownNameError(
    unknown_name_message("method", name, method_names() + [f"{w}(...)" for w in known], "a registered CAM method")
  )


_register_wrapped_rows()  # last: it needs get_method above
BUILTIN_ROWS: dict[str, MethodSpec] = dict(METHODS)
"""The rows jaxcam defines (before any `register_method` of yours): `jaxcam.compile_cache` stores only their
programs, whose code is jaxcam's own."""
