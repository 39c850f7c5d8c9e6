"""The public entry points: `explain` and one function per method, all generated from the method table.

Every function is a pure function of ``(tap, x, target)``: it runs eagerly (compiled internally, once per
input shape and options) and inside a user's `jax.jit`, where Python options are bound with
`functools.partial`::

    f = jax.jit(functools.partial(jaxcam.gradcam_pp, normalize=False))
    maps = f(tap, x, target=jaxcam.targets.log_softmax(t))   # tap, x, target are pytrees: no static args
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _checks, _spatial, compile_cache, core, postprocess, wrappers
from jaxcam._eager import (
  check_images,
  eager_checks,
  is_traced,
  model_errors,
  prepare,
  show_progress,
  under_trace,
)
from jaxcam._errors import check_key
from jaxcam._options import has_array as _has_array
from jaxcam._options import partition_options, resolve_options
from jaxcam._public import public_function, public_functions
from jaxcam.methods.table import BUILTIN_ROWS, METHODS, MethodSpec, get_method
from jaxcam.postprocess import PostOptions
from jaxcam.providers import BUILTIN_PROVIDERS, PROVIDERS, get_provider

__all__ = ["Explanation", "explain", "explain_many", "check_images", "public_function", "public_functions", "TRACES"]


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["maps", "logits", "target", "scores"],
  meta_fields=["method", "layer", "feature_sizes"],
)
@dataclasses.dataclass(frozen=True)
class Explanation:
  """The result of `explain` (a pytree; `method` and `layer` are static).

  Args:
    maps: ``(B, H, W)`` float32 in [0, 1] by default (``(B, K, H, W)`` for K classes per image; layer resolution
      with ``upsample=False``).
    logits: the model's output ``(B, classes)``.
    target: the class ids explained, ``(B,)`` / ``(B, K)``; None for a custom score.
    scores: the target scores S, ``(B,)`` / ``(B, K)``.
    method: the method row's name (static).
    layer: the tapped layer(s) (static).
    feature_sizes: each tapped layer's spatial size.

  Item access ``ex["maps"]``, ``ex["logits"]``, ``ex["targets"]``, ``ex["scores"]`` works too.

  >>> import jax.numpy as jnp, jaxcam
  >>> ex = jaxcam.Explanation(jnp.zeros((1, 4, 4)), jnp.zeros((1, 3)), jnp.array([2]), jnp.zeros(1), "gradcam", "conv")
  >>> ex.maps.shape, ex["targets"].tolist(), ex.method
  ((1, 4, 4), [2], 'gradcam')
  """

  maps: jax.Array
  logits: jax.Array
  target: jax.Array | None
  scores: jax.Array
  method: str
  layer: Any
  feature_sizes: tuple[tuple[int, ...], ...] = ()

  _ITEMS = {"maps": "maps", "logits": "logits", "targets": "target", "scores": "scores"}

  def __getitem__(self, key: str) -> Any:
    """``ex["maps"]``, ``ex["logits"]``, ``ex["targets"]``, ``ex["scores"]``: the dict form `explain_batches`
    yielded before it yielded Explanations (kept, so loops written for it keep working)."""
    if key not in self._ITEMS:
      raise KeyError(f"Expected one of {sorted(self._ITEMS)}, got {key!r}; the fields are attributes: ex.maps, ...")
    return getattr(self, self._ITEMS[key])


# ------------------------------------------------------------------------------------ inputs and maps


def _provide(need: str, tap, x, fwd, options: dict[str, Any], cache: dict | None = None):
  """One need's per-layer values. `cache` (explain_many, whose options are all static) shares a provider between
  methods that ask for it with the same option values."""
  p = get_provider(need)
  if p.single_layer and tap.multi:
    raise ValueError(
      f"Need {need!r} reads one layer; got a multi-layer tap {tap.layer!r}. Use one layer for this method."
    )
  kwargs = {k: options[k] for k, _ in p.options}
  if cache is None:
    return p.fn(tap, x, fwd, **kwargs)
  key = (need, tuple(kwargs.items()))
  if key not in cache:
    cache[key] = p.fn(tap, x, fwd, **kwargs)
  return cache[key]


@dataclasses.dataclass(frozen=True)
class PlainInputs:
  """``plain(needs, tap, x, target, options) -> (fwd, {need: per-layer values})``: the shared forward pass (with
  the backward pass if any provider reads grads) and each need's values. An `inputs` hook receives one as its
  first argument; `progress` is the label its chunked maps report under (None: no report)."""

  progress: str | None = None

  def __call__(self, needs: tuple[str, ...], tap, x, target, options: dict[str, Any]):
    fwd = core.forward(tap, x, target, grads=any(get_provider(n).grads for n in needs), progress=self.progress)
    return fwd, {need: _provide(need, tap, x, fwd, options) for need in needs}


plain_inputs = PlainInputs()


def compute_inputs(spec: MethodSpec, tap, x, target, options: dict[str, Any], *, progress: str | None = None):
  """``(fwd, {need: per-layer values})`` for one method: its `inputs` hook if it has one, else `plain_inputs`."""
  needs = spec.needs_for(options)
  plain = PlainInputs(progress)
  if spec.inputs is not None:
    return spec.inputs(plain, needs, tap, x, target, options)
  return plain(needs, tap, x, target, options)


def _as_float(tree: Any) -> Any:
  """Floating leaves promoted to at least float32 (bfloat16 inputs give float32 maps); others unchanged."""

  def f(v):
    if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating):
      return v.astype(jnp.promote_types(v.dtype, jnp.float32))
    return v

  return jax.tree.map(f, tree)


def method_maps(spec: MethodSpec, tap, x, fwd, values, options, post: PostOptions) -> Explanation:
  """One method's post-processed maps from computed inputs (pytorch-grad-cam's order, see `postprocess`)."""
  normalize, upsample, relu, fusion = post.normalize, post.upsample, post.relu, post.fusion
  used = spec.needs_for(options)
  fn_options = {k: options[k] for k, _ in spec.options}
  n_spatial = _spatial.of_images(x)
  n_layers = len(fwd.activations)
  k = fwd.scores.shape[1]
  per_layer = []
  for i in range(n_layers):
    a = _as_float(fwd.activations[i])
    a = jnp.broadcast_to(a[:, None], (a.shape[0], k) + a.shape[1:])  # (B, K, h, w, C)
    args = [_as_float(values[n][i]) if n in used else None for n in spec.needs]
    out = spec.fn(a, *args, **fn_options)
    expected = _OUTPUT_SHAPES[spec.output](a.shape, x.shape)
    if tuple(getattr(out, "shape", ())) != expected:
      raise ValueError(
        f"Method {spec.name!r} (output {spec.output!r}) gave maps of shape "
        f"{tuple(getattr(out, 'shape', ()))}; expected {expected} from activations {tuple(a.shape)}."
      )
    m = out if spec.output in ("map", "input_map") else postprocess.combine(out, a)
    if relu:
      m = jax.nn.relu(m)
    if normalize and spec.normalize_layers:
      m = postprocess.normalize(m, spatial_dims=n_spatial)
    if spec.per_layer is not None:
      m = spec.per_layer(m, fusion=fusion, n_layers=n_layers)
    if upsample and spec.fuse is None:
      m = postprocess.upsample(m, _spatial.image_size(x))
    per_layer.append(m)
  if spec.fuse is not None:
    maps = spec.fuse(
      per_layer, size=_spatial.image_size(x), options=options, normalize=normalize, relu=relu, upsample=upsample
    )
  elif n_layers > 1 and len({m.shape for m in per_layer}) != 1:
    raise ValueError("Fusing several layers needs `upsample=True` (their maps have different sizes).")
  elif fusion == "mean":
    # pytorch-grad-cam aggregates even a single layer: relu, mean over layers, min-max again (after upsampling)
    maps = postprocess.fuse(jnp.stack(per_layer), mode="mean", normalized=normalize, relu=relu, spatial_dims=n_spatial)
  else:
    maps = postprocess.fuse(jnp.stack(per_layer), mode="max", spatial_dims=n_spatial)
  if fwd.ids is not None:  # out-of-range ids under jit: the whole map is NaN (see jaxcam.targets)
    n = fwd.logits.shape[-1]
    valid = (fwd.ids >= 0) & (fwd.ids < n)
    maps = jnp.where(valid[(...,) + _spatial.spatial_ones(n_spatial)], maps, jnp.nan)
  ids, scores = fwd.ids, fwd.scores
  if not fwd.multi:
    maps, scores = maps[:, 0], scores[:, 0]
    ids = None if ids is None else ids[:, 0]
  sizes = tuple(tuple(_spatial.feature_size(a, n_spatial)) for a in fwd.activations)
  return Explanation(
    maps=maps, logits=fwd.logits, target=ids, scores=scores, method=spec.name, layer=tap.layer, feature_sizes=sizes
  )


_OUTPUT_SHAPES = {  # what a row's fn returns, from A's (B, K, *spatial, C) and x's (B, *size, C)
  "channel": lambda s, xs: s[:2] + s[-1:],
  "spatial": lambda s, xs: tuple(s),
  "map": lambda s, xs: tuple(s[:-1]),
  "input_map": lambda s, xs: s[:2] + tuple(xs[1:-1]),
}

TRACES: collections.Counter = collections.Counter()
"""How many times each method was traced (compiled) by `explain` / `explain_many`: a retrace shows up here."""


def _explain_impl(tap, x, target, traced, *, spec, static, post, progress=False):
  TRACES[spec.name] += 1  # runs once per trace, never per call
  options = {**dict(static), **traced}
  return run_row(spec, tap, x, target, options, post, spec.name if progress else None)


def run_row(spec, tap, x, target, options, post: PostOptions, progress=None) -> Explanation:
  """One row's explanation: its inputs (the plain pass or its `inputs` hook), then its maps; a row with an `around`
  hook (`jaxcam.aug_smooth`, `jaxcam.sess`) is run by the hook, which calls back for the row without it.
  `progress`: the label of its chunked maps' bars (None: none). The one run function behind `explain` (and so
  `explain_batches`, the streaming runs and the metrics' ``method=``) and `explain_many`; call it inside a trace."""
  if spec.around is not None:
    inner = dataclasses.replace(spec, around=getattr(spec.around, "inner", None))
    return spec.around(functools.partial(run_row, inner), tap, x, target, options, post, progress)
  fwd, values = compute_inputs(spec, tap, x, target, options, progress=progress)
  return method_maps(spec, tap, x, fwd, values, options, post)


def _explain_many_impl(tap, x, target, key=None, *, specs, post, progress=False):
  label = "explain_many" if progress else None
  out = {}
  opts = {s.name: _many_options(s, key) for s in specs}
  plain = [s for s in specs if s.inputs is None and s.around is None]
  grads = any(get_provider(n).grads for s in plain for n in s.needs_for(opts[s.name]))
  # one forward (+ backward) pass for every plain method
  shared = core.forward(tap, x, target, grads=grads, progress=label)
  cache: dict = {}  # each need computed once per distinct option values, shared between methods
  for s in specs:
    TRACES[s.name] += 1
    if s in plain:
      values = {n: _provide(n, tap, x, shared, opts[s.name], cache) for n in s.needs_for(opts[s.name])}
      out[s.name] = method_maps(s, tap, x, shared, values, opts[s.name], post)
    else:
      out[s.name] = run_row(s, tap, x, target, opts[s.name], post, label)
  return out


_STATIC = ("post", "progress")
_explain_many_jit = jax.jit(_explain_many_impl, static_argnames=("specs",) + _STATIC)
_explain_jit = jax.jit(_explain_impl, static_argnames=("spec", "static") + _STATIC)


def check_aug_smooth(spec: MethodSpec, aug_smooth: Any) -> MethodSpec:
  """The row the ``aug_smooth=`` flag asks for: `spec` itself (False), or ``jaxcam.aug_smooth(spec, aug_smooth)``."""
  return spec if aug_smooth is False or aug_smooth is None else wrappers.aug_smooth(spec, aug_smooth)


def check_eigen_smooth(spec: MethodSpec, eigen_smooth: Any) -> MethodSpec:
  """The row the ``eigen_smooth=`` flag asks for: `spec` itself, or ``jaxcam.eigen_smooth(spec)`` (an error for a
  method that returns a map: there are no weighted activations)."""
  return wrappers.eigen_smooth(spec) if _checks.check_bool("eigen_smooth", eigen_smooth) else spec


def explain(
  method: str | MethodSpec,
  tap,
  x: jax.Array,
  /,
  target: Any = None,
  *,
  normalize: bool = True,
  upsample: bool = True,
  relu: bool = True,
  fusion: str = "mean",
  progress: bool | None = None,
  eigen_smooth: bool = False,
  aug_smooth: Any = False,
  **options,
) -> Explanation:
  """Explain `x` with a CAM method; returns an `Explanation` (maps, logits, target ids, scores, layer).

  Args:
    method: a method name from ``jaxcam.method_names()`` ("gradcam", "gradcam++", ...), a `MethodSpec` row (your
      own method), or a wrapped method such as ``jaxcam.smooth("gradcam_pp", num_samples=8, std=0.3)``.
    tap: a tap (`linen_tap`, `nnx_tap`, `function_tap`); a multi-layer tap fuses the layers' maps.
    x: images ``(B, H, W, C)``, float.
    target: None (each image's top class), class ids (scalar, ``(B,)`` or ``(B, K)``), a `jaxcam.targets`
      score or a callable ``logits -> (B,)``.
    normalize: per-image min-max to [0, 1] at layer resolution (pytorch-grad-cam's order).
    upsample: bilinear resize to the input's ``(H, W)``; False keeps the layer's ``(h, w)``.
    relu: clip negative evidence (all peers do).
    fusion: "mean" (pytorch-grad-cam) or "max" (torchcam; LayerCAM also gets torchcam's tanh(2x)) for several
      layers.
    progress: a progress bar per chunked map (masked copies, noisy samples, derivative directions) on stderr.
      None: for eager calls of expensive methods (`MethodSpec.expensive`) only, never under your `jax.jit`;
      True: always (host callbacks, one per chunk); False: never.
    eigen_smooth: the map is the first principal component of the weighted activations ``w * A`` instead of their
      channel sum (pytorch-grad-cam's ``eigen_smooth``; sign fixed as in Eigen-CAM): the row
      ``jaxcam.eigen_smooth(method)``, named ``eigen_smooth(<name>)``. For methods that weight
      channels or positions (every row whose output is "channel" or "spatial"); an error for map methods.
    aug_smooth: test-time augmentation: True for pytorch-grad-cam's horizontal flip x (0.9, 1, 1.1) multipliers,
      or a tuple of `jaxcam.Augmentation(apply, invert)`. Each augmented map (normalized as usual) is mapped back
      and the maps are averaged, not re-normalized. One batch of ``n_aug * B`` images: memory grows with it.
    **options: method options (e.g. ``eps`` for Grad-CAM++ and XGrad-CAM, ``fc`` for CAM, ``key`` for smoothed
      methods). Options holding arrays (a PRNG key, a Dense kernel, a mask) are traced: new values never
      recompile and they may be tracers under your `jax.jit`; other options are static.

  Returns:
    An `Explanation`: ``maps`` ``(B, H, W)`` (``(B, K, H, W)`` for ``(B, K)`` targets), ``logits``, ``target``
    (the class ids explained), ``scores``, ``method``, ``layer`` and ``feature_sizes``.

  Raises:
    UnknownNameError: an unknown method name (the message lists the closest names).
    TypeError: an unknown option, or an argument of the wrong type.
    ValueError: bad images or targets (class ids out of range raise when the ids are concrete; under `jax.jit`
      those images' maps are NaN), or a tap the method cannot read.

  >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcam
  >>> net = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda a: a.mean(axis=(1, 2)), nn.Dense(3)])
  >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  >>> tap = jaxcam.linen_tap(net, net.init(jax.random.key(1), x), "layers_0")  # the conv's output
  >>> ex = jaxcam.explain("gradcam", tap, x, target=jnp.array([0, 2]))
  >>> ex.maps.shape, ex.logits.shape, ex.target.tolist(), ex.feature_sizes
  ((2, 8, 8), (2, 3), [0, 2], ((8, 8),))
  >>> bool(jnp.all((ex.maps >= 0) & (ex.maps <= 1)))
  True
  """
  spec = get_method(method)
  x, sequence = _sequence_input(tap, x)
  post = PostOptions.checked(normalize, upsample, relu, fusion)
  spec = check_eigen_smooth(spec, eigen_smooth)  # the flag is jaxcam.eigen_smooth(method)
  spec = check_aug_smooth(spec, aug_smooth)  # the flag is jaxcam.aug_smooth(method)
  opts = resolve_options(spec, options)
  target = prepare(tap, x, target)
  spec.needs_for(opts)  # validates controls (e.g. derivatives=) before tracing
  traced, static = partition_options(opts)
  under_jit = under_trace((tap, x, target, traced))
  statics = dict(spec=spec, static=static, post=post, progress=show_progress(progress, under_jit, spec.expensive(opts)))
  with model_errors(x):
    ex = compile_cache.cached_call(_explain_jit, (tap, x, target, traced), statics, program_token(tap, target, statics))
  if not under_jit and not is_traced(ex.maps):  # traced values hidden in a closure (grad, vmap) show here
    eager_checks(spec, target, ex, opts)
  return _sequence_maps(ex) if sequence else ex


def program_token(tap, target: Any, statics: dict[str, Any]) -> Any:
  """What names an explain program besides its arguments' structure and shapes (`jaxcam.compile_cache`): the
  tap's description, a built-in row, a `jaxcam.targets` score and plain static options and flags; None when any part
  is the user's code (a custom row, a score function, a callable option, a model of your own) or a progress bar
  (host callbacks)."""
  specs = statics["specs"] if "specs" in statics else (statics["spec"],)
  if statics.get("progress") or any(BUILTIN_ROWS.get(s.name) is not s for s in specs):
    return None
  if any(PROVIDERS.get(n) is not p for n, p in BUILTIN_PROVIDERS.items()):  # a provider of yours replaced one
    return None
  if not compile_cache.plain_static(target):  # a score function of yours
    return None
  described = {k: v for k, v in statics.items() if k not in ("spec", "specs")}
  tap_token = tap.program_token() if hasattr(tap, "program_token") else None
  if tap_token is None or not compile_cache.plain(described):
    return None
  return [[s.name for s in specs], tap_token, compile_cache.canonical(described)]


def _sequence_input(tap: Any, x: Any) -> tuple[Any, bool]:
  """1-D models (``input_layout="NLC"``): `x` ``(B, L, C)`` travels as ``(B, L, 1, C)``."""
  if getattr(tap, "input_layout", "NHWC") != "NLC":
    return x, False
  shape = getattr(x, "shape", None)
  if shape is None or len(shape) != 3:
    raise ValueError(f"Expected `x` of shape (B, L, C) for a tap with input_layout='NLC', got {shape}.")
  return x[:, :, None, :], True


def _sequence_maps(ex: Explanation) -> Explanation:
  return dataclasses.replace(ex, maps=ex.maps[..., 0], feature_sizes=tuple(s[:1] for s in ex.feature_sizes))


def explain_many(
  methods,
  tap,
  x: jax.Array,
  /,
  target: Any = None,
  *,
  normalize: bool = True,
  upsample: bool = True,
  relu: bool = True,
  fusion: str = "mean",
  allow_expensive: bool = False,
  progress: bool | None = None,
  key: jax.Array | None = None,
) -> dict[str, Explanation]:
  """Several methods from ONE shared pass: ``{name: Explanation}`` (default options each).

  Methods are grouped by what they need: the forward pass, the backward pass and every other need
  (`jaxcam.providers`) are computed once and shared, and each method is then a small function of them.

  Args:
    methods: names or `MethodSpec` rows, or None for every registered method that is not expensive and can read
      this tap (`MethodSpec.applies`: CAM needs a declared ``fc_layer``, LeGrad transformer blocks).
    tap: a tap, as in `explain`.
    x: images ``(B, H, W, C)``, float.
    target: as in `explain`.
    normalize, upsample, relu, fusion, progress: as in `explain`.
    allow_expensive: run methods whose cost grows with the layer's size or a sample count (exact derivatives,
      masked forwards, smoothing); False refuses them (``methods=None`` leaves them out).
    key: the PRNG key given to every method that draws one (Random-CAM, smoothed rows); without it such methods
      are refused (``methods=None`` leaves them out).

  Returns:
    ``{name: Explanation}``, one per method, each with the method's default options.

  Raises:
    TypeError: `methods` is a single name or row (pass a list).
    ValueError: an expensive method without ``allow_expensive=True``, repeated methods, a method that needs
      options (a key) not given, or bad images / targets (as `explain`).

  >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcam
  >>> net = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu, lambda a: a.mean(axis=(1, 2)), nn.Dense(3)])
  >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  >>> tap = jaxcam.linen_tap(net, net.init(jax.random.key(1), x), "layers_0")  # the conv's output
  >>> many = jaxcam.explain_many(["gradcam", "hirescam"], tap, x)  # one forward and backward pass for both
  >>> sorted(many), many["hirescam"].maps.shape
  (['gradcam', 'hirescam'], (2, 8, 8))
  """
  if key is not None:
    key = check_key(key, method="explain_many")
  if isinstance(methods, (str, MethodSpec)):
    raise TypeError(
      f"Expected `methods` to be a sequence of method names or rows (or None), got {methods!r}: use [{methods!r}]."
    )
  if methods is None:
    specs = tuple(s for s in METHODS.values() if not s.expensive() and _runs_on_defaults(s, key) and s.applies(tap))
  else:
    specs = tuple(get_method(m) for m in methods)
    costly = [s for s in specs if s.expensive()]
    if costly and not allow_expensive:
      raise ValueError(
        "explain_many runs cheap methods unasked, not these: "
        + "; ".join(f"{s.name} ({s.cost()})" for s in costly)
        + ". Pass allow_expensive=True to run them, or call jaxcam.explain for each."
      )
  post = PostOptions.checked(normalize, upsample, relu, fusion)
  _checks.check_bool("allow_expensive", allow_expensive)
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"Expected distinct methods in `methods`, got {names}.")
  for s in specs:  # explain_many passes default options only (and `key`)
    if not _runs_on_defaults(s, key):
      raise ValueError(
        f"{s.name} needs options (a key or an array) that explain_many does not pass; pass key= or use explain."
      )
  x, sequence = _sequence_input(tap, x)
  target = prepare(tap, x, target)
  under_jit = under_trace((tap, x, target, key))
  statics = dict(specs=specs, post=post, progress=show_progress(progress, under_jit, any(s.expensive() for s in specs)))
  with model_errors(x):
    token = program_token(tap, target, statics)
    out = compile_cache.cached_call(_explain_many_jit, (tap, x, target, key), statics, token and ["many", token])
  if not under_jit and not is_traced([ex.maps for ex in out.values()]):
    for s in specs:
      eager_checks(s, target, out[s.name], s.defaults())
  return {k: _sequence_maps(v) for k, v in out.items()} if sequence else out


def _many_options(spec: MethodSpec, key: Any) -> dict[str, Any]:
  opts = spec.defaults()
  if key is not None and "key" in opts:
    opts["key"] = key
  return opts


def _runs_on_defaults(spec: MethodSpec, key: Any = None) -> bool:
  """Whether a row runs on its default options alone (explain_many passes no options but `key`): no array option
  and no key to be given (a ``key`` whose default is None must be passed)."""
  defaults = spec.defaults()
  needs_key = "key" in defaults and defaults["key"] is None
  return not _has_array(defaults) and not (needs_key and key is None)
