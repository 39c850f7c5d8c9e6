"""Meta-methods that wrap a method row instead of copying it (as optax's ``masked(inner, ...)`` wraps a transform).

``jaxcam.smooth(method, num_samples=8, std=0.3)`` returns a new `MethodSpec` usable wherever a method name is::

    ex = jaxcam.explain(jaxcam.smooth("gradcam_pp", num_samples=8, std=0.3), tap, x, key=jax.random.key(0))

It averages the method's *inputs* (its needs: gradients, derivatives, ...) over `num_samples` copies of `x` with
Gaussian noise of standard deviation `std` drawn from an explicit `key` (no global RNG), `chunk_size` copies at a
time (one compiled program; memory bounded by the chunk). The activations A, the model's output and the class ids
come from the clean `x`, so every copy explains the clean image's class. Noise acts on the `x` you pass (jaxcam's
models take images in [0, 1] and normalise inside).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcam import chunking, core
from jaxcam import targets as targets_lib
from jaxcam._errors import check_key

if TYPE_CHECKING:
  from jaxcam.methods.table import MethodSpec


def get_method(method: Any) -> MethodSpec:
  """`jaxcam.methods.table.get_method`, imported when called: the table imports this module to register its
  wrapped built-in rows (finercam, refinecam), so this module does not import the table when it loads."""
  from jaxcam.methods.table import get_method as lookup

  return lookup(method)


__all__ = [
  "Augmentation",
  "Augmented",
  "DEFAULT_TTA",
  "aug_smooth",
  "eigen_smooth",
  "finer",
  "flip_multiply_tta",
  "refine",
  "smooth",
]


def _mean(total: Any, n: int) -> Any:
  def f(v):
    if jnp.issubdtype(v.dtype, jnp.inexact):
      return v / n
    return v // n  # integer needs (class ids) are identical in every copy

  return jax.tree.map(f, total)


@dataclasses.dataclass(frozen=True)
class SmoothInputs:
  """The `inputs` hook of a smoothed row (hashable: it is part of the static method row)."""

  inner: Any
  num_samples: int
  std: float
  chunk_size: int
  name: str
  options: tuple[tuple[str, Any], ...] = (("key", None),)
  expensive: bool = True

  def cost(self, inner_cost: str) -> str:
    return f"{self.num_samples} x ({inner_cost}), plus 1 clean forward pass"

  def __call__(self, plain, needs, tap, x, target, options):
    key = check_key(options["key"], method=self.name)
    label = getattr(plain, "progress", None)  # one bar for the copies, none inside each copy
    if label is not None:
      plain = dataclasses.replace(plain, progress=None)
    clean = core.forward_only(tap, x, target)
    fixed = targets_lib.with_ids(clean.target, clean.ids)

    def one(i):
      k_noise, k_inner = jax.random.split(jax.random.fold_in(key, i))
      noisy = x + jnp.asarray(self.std, x.dtype) * jax.random.normal(k_noise, x.shape, x.dtype)
      inner_options = {**options, "key": k_inner}  # a method that draws noise itself gets its own key per copy
      if self.inner is not None:
        _, values = self.inner(plain, needs, tap, noisy, fixed, inner_options)
      else:
        _, values = plain(needs, tap, noisy, fixed, inner_options)
      return values

    total = chunking.chunked_sum(one, jnp.arange(self.num_samples), chunk_size=self.chunk_size, progress=label)
    return clean, _mean(total, self.num_samples)


def wrapped_name(wrapper: str, inner: str) -> str:
  """The name of the row a wrapper returns, ``wrapper(inner)``: registered names have no parentheses
  (`jaxcam.register_method` refuses them), so a wrapped row's name never collides with a registered one."""
  return f"{wrapper}({inner})"


def smooth(method: str | MethodSpec, *, num_samples: int = 8, std: float = 0.3, chunk_size: int = 8) -> MethodSpec:
  """A method whose inputs are averaged over noisy copies of `x` (see the module docstring); needs ``key=``.

  Args:
    method: a method name or row (a smoothed row too: noise composes).
    num_samples: noisy copies averaged (>= 1).
    std: standard deviation of the Gaussian noise added to `x` (>= 0; 0 reproduces the method's inputs).
    chunk_size: copies evaluated at once (memory grows with it, not with `num_samples`).

  Returns:
    A `MethodSpec` named ``smooth(<name>)`` (no registered name has parentheses, so it never collides with one:
    ``smooth("gradcam_pp")`` is not the registered ``smooth_gradcam_pp``), with the same options plus ``key``.

  Raises:
    UnknownNameError: an unknown method name.
    ValueError: `num_samples` not a positive int, `std` negative, or a bad `chunk_size`.

  >>> import jaxcam
  >>> row = jaxcam.smooth("gradcam", num_samples=8, std=0.3)  # explain(row, tap, x, key=jax.random.key(0))
  >>> row.name, row.defaults()
  ('smooth(gradcam)', {'key': None})
  """
  inner = get_method(method)
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"Expected `num_samples` to be a positive int, got {num_samples!r}.")
  if not isinstance(std, (int, float)) or isinstance(std, bool) or not std >= 0:
    raise ValueError(f"Expected `std` to be a non-negative float, got {std!r}.")
  chunking.check_chunk_size(chunk_size)
  name = wrapped_name("smooth", inner.name)
  hook = SmoothInputs(inner.inputs, int(num_samples), float(std), int(chunk_size), name)
  return dataclasses.replace(inner, name=name, title=f"Smoothed {inner.title or inner.name}", inputs=hook, aliases=())


@dataclasses.dataclass(frozen=True)
class EigenProjected:
  """A weight row's function followed by the first principal component of the weighted activations ``w * A``
  (hashable by value: the same wrapped row never recompiles)."""

  fn: Callable[..., Any]
  output: str

  def __call__(self, activations, /, *needs, **options):
    from jaxcam import postprocess
    from jaxcam.methods.factorization import first_component_projection

    w = self.fn(activations, *needs, **options)
    if self.output == "channel":
      w = postprocess.broadcast_channel_weights(w, activations)
    return first_component_projection(w * activations)


def eigen_smooth(method: str | MethodSpec) -> MethodSpec:
  """The method whose map is the first principal component of its weighted activations ``w * A`` instead of their
  channel sum: pytorch-grad-cam's ``eigen_smooth`` (its ``get_2d_projection``), with Eigen-CAM's deterministic sign
  (`jaxcam.methods.factorization.first_component_projection`). For rows that weight channels or positions; the
  ``eigen_smooth=True`` flag of `jaxcam.explain` is this wrapper.

  Args:
    method: a method name or row whose output is "channel" or "spatial" weights.

  Returns:
    A `MethodSpec` named ``eigen_smooth(<name>)`` with the method's needs and options, whose output is a map.

  Raises:
    UnknownNameError: an unknown method name.
    ValueError: a method that returns a map (no weighted activations to project); the message lists those that
      apply.

  >>> import jaxcam
  >>> row = jaxcam.eigen_smooth("gradcam")
  >>> row.name, row.output
  ('eigen_smooth(gradcam)', 'map')
  """
  inner = get_method(method)
  if inner.output not in ("channel", "spatial"):
    from jaxcam.methods.table import METHODS

    raise ValueError(
      f"Expected `eigen_smooth=False` for {inner.name}: it returns a map, not channel or spatial weights, so there "
      "are no weighted activations to project. eigen_smooth applies to: "
      + ", ".join(s.name for s in METHODS.values() if s.output in ("channel", "spatial"))
      + "."
    )
  return dataclasses.replace(
    inner,
    name=wrapped_name("eigen_smooth", inner.name),
    title=f"{inner.title or inner.name} (eigen-smoothed)",
    fn=EigenProjected(inner.fn, inner.output),
    output="map",
    aliases=(),
  )


class Augmentation(NamedTuple):
  """A test-time augmentation for ``aug_smooth=``.

  Both functions are traceable; define them once (they are static: a new function object recompiles).

  Args:
    apply: maps images ``(B, H, W, C)`` to the augmented images (same shape).
    invert: maps the maps of the augmented images ``(B, [K,] H, W)`` back onto the original pixels.

  >>> import jax.numpy as jnp, jaxcam
  >>> flip = jaxcam.Augmentation(lambda x: x[:, :, ::-1], lambda m: m[..., ::-1])  # explain(..., aug_smooth=(flip,))
  >>> flip.invert(flip.apply(jnp.arange(3.0).reshape(1, 1, 3, 1))[..., 0]).tolist()
  [[[0.0, 1.0, 2.0]]]
  """

  apply: Callable[[jax.Array], jax.Array]
  invert: Callable[[jax.Array], jax.Array]


def _identity(v):
  return v


def _flip_images(x):
  return x[:, :, ::-1, :]


def _flip_maps(m):
  return m[..., ::-1]


@dataclasses.dataclass(frozen=True)
class _FlipScale:
  """Flip (optionally) then multiply by `factor`: hashable by value, so equal augmentations never recompile."""

  flip: bool
  factor: float

  def __call__(self, x: jax.Array) -> jax.Array:
    return (_flip_images(x) if self.flip else x) * jnp.asarray(self.factor, x.dtype)


def flip_multiply_tta(factors: tuple[float, ...] = (0.9, 1.0, 1.1)) -> tuple[Augmentation, ...]:
  """pytorch-grad-cam's default ``tta_transforms``: horizontal flip (off, on) x brightness multipliers.

  Six augmentations by default, in ttach's order (no flip with each factor, then flipped). The multiplier acts on
  the `x` you pass (jaxcam's models take [0, 1] and normalize inside; pytorch-grad-cam multiplies the normalized
  tensor).

  Args:
    factors: the brightness multipliers (at least one).

  Returns:
    A tuple of ``2 * len(factors)`` `Augmentation` (``aug_smooth=`` of `jaxcam.explain` takes it).

  Raises:
    ValueError: no factors.

  >>> import jax.numpy as jnp, jaxcam
  >>> augs = jaxcam.flip_multiply_tta((1.0, 2.0))
  >>> len(augs), augs[3].apply(jnp.arange(3.0).reshape(1, 1, 3, 1))[0, 0, :, 0].tolist()  # flipped, times 2
  (4, [4.0, 2.0, 0.0])
  """
  factors = tuple(float(f) for f in factors)
  if not factors:
    raise ValueError("Expected at least one factor in `factors`, got ().")
  return tuple(
    Augmentation(_FlipScale(flip, f), _flip_maps if flip else _identity) for flip in (False, True) for f in factors
  )


DEFAULT_TTA = flip_multiply_tta()


def aug_smooth(method: str | MethodSpec, augmentations: Any = True) -> MethodSpec:
  """The method under test-time augmentation (pytorch-grad-cam's ``aug_smooth``): its maps on every augmented copy
  of the images (one batch of n B), each mapped back by its augmentation's `invert` and averaged (not re-normalized).
  Class ids come from the clean images. The ``aug_smooth=`` flag of `jaxcam.explain` is this wrapper.

  Args:
    method: a method name or row (a smoothed row too: ``aug_smooth(smooth("gradcam"))``).
    augmentations: True for pytorch-grad-cam's horizontal flip x (0.9, 1, 1.1) multipliers, or a tuple of
      `jaxcam.Augmentation(apply, invert)` (define them once: a new function object recompiles).

  Returns:
    A `MethodSpec` named ``aug_smooth(<name>)``.

  Raises:
    UnknownNameError: an unknown method name.
    ValueError: `augmentations` False, or a method that is augmented already.
    TypeError: `augmentations` neither True nor a tuple of `jaxcam.Augmentation`.

  >>> import jaxcam
  >>> jaxcam.aug_smooth("gradcam").name  # explain("gradcam", ..., aug_smooth=True) runs this row
  'aug_smooth(gradcam)'
  """
  inner = get_method(method)
  augment = resolve_augmentations(augmentations)
  if augment is None:
    raise ValueError("Expected `augmentations` to be True or a tuple of jaxcam.Augmentation, got False.")
  if any(isinstance(h, Augmented) for h in around_hooks(inner)):
    raise ValueError(f"{inner.name} is augmented already; pass all the augmentations to one aug_smooth.")
  return dataclasses.replace(
    inner,
    name=wrapped_name("aug_smooth", inner.name),
    title=f"{inner.title or inner.name} (augmented)",
    around=Augmented(augment, inner.around),
    aliases=(),
  )


def around_hooks(spec: MethodSpec) -> list[Any]:
  """The row's `around` hooks, outermost first."""
  hooks, hook = [], spec.around
  while hook is not None:
    hooks.append(hook)
    hook = getattr(hook, "inner", None)
  return hooks


@dataclasses.dataclass(frozen=True)
class Augmented:
  """The `around` hook of `aug_smooth` (hashable: part of the static row).

  Test-time augmentation as pytorch-grad-cam's ``aug_smooth``: the row on every augmented copy of `x` (one batch of
  n B images), each map mapped back by its augmentation's `invert` and averaged (not re-normalized). Class ids come
  from the clean `x` (pytorch-grad-cam lets each augmented copy pick its own top class when no target is given;
  with explicit targets the two agree). Logits and scores are the clean image's.
  """

  augmentations: tuple[Augmentation, ...]
  inner: Any = None

  def __call__(self, run, tap, x, target, options, post, progress):
    n, b = len(self.augmentations), x.shape[0]
    clean = core.forward_only(tap, x, target)
    fixed = targets_lib.with_ids(clean.target, None if clean.ids is None else jnp.tile(clean.ids, (n, 1)))
    xs = jnp.concatenate([aug.apply(x) for aug in self.augmentations], axis=0)
    if xs.shape != (n * b,) + x.shape[1:]:
      raise ValueError(
        f"Expected each augmentation's `apply` to keep the images' shape {tuple(x.shape)}, got "
        f"{tuple(xs.shape[:1])} + {tuple(xs.shape[1:])} for {n} augmentations."
      )
    ex = run(tap, xs, fixed, options, post, progress)
    maps = ex.maps.reshape((n, b) + ex.maps.shape[1:])
    maps = jnp.mean(jnp.stack([aug.invert(m) for aug, m in zip(self.augmentations, maps)]), axis=0)
    scores = clean.scores if clean.multi else clean.scores[:, 0]
    ids = clean.ids if clean.ids is None or clean.multi else clean.ids[:, 0]
    return dataclasses.replace(ex, maps=maps, logits=clean.logits, target=ids, scores=scores)


def resolve_augmentations(aug_smooth: Any) -> tuple[Augmentation, ...] | None:
  """``aug_smooth`` as a static tuple of augmentations (None when off); clear errors otherwise."""
  if aug_smooth is False or aug_smooth is None:
    return None
  if aug_smooth is True:
    return DEFAULT_TTA
  if isinstance(aug_smooth, Augmentation):
    aug_smooth = (aug_smooth,)
  if (
    isinstance(aug_smooth, (tuple, list))
    and aug_smooth
    and all(isinstance(a, Augmentation) and callable(a.apply) and callable(a.invert) for a in aug_smooth)
  ):
    return tuple(aug_smooth)
  raise TypeError(
    "Expected `aug_smooth` to be False, True (pytorch-grad-cam's flip x (0.9, 1, 1.1) multipliers) or a tuple of "
    f"jaxcam.Augmentation(apply, invert), got {aug_smooth!r}."
  )


# ------------------------------------------------------------------------------------------------ Finer-CAM


@dataclasses.dataclass(frozen=True)
class FinerInputs:
  """The `inputs` hook of a Finer-CAM row: the base method's inputs for the contrastive target."""

  inner: Any
  name: str
  options: tuple[tuple[str, Any], ...] = (("finer_convention", "pgc"), ("alpha", None), ("references", None))
  expensive: bool = False

  def cost(self, inner_cost: str) -> str:
    return inner_cost

  def __call__(self, plain, needs, tap, x, target, options):
    if not isinstance(target, targets_lib.ClassScore) or target.kind != "logit":
      raise ValueError(
        f"{self.name} builds its own contrastive score from class ids: pass `target` as class ids or None (the top "
        f"class), got {target!r}. For another score, use jaxcam.targets.finer(...) with the base method."
      )
    finer = targets_lib.finer(
      target.classes,
      convention=options["finer_convention"],
      alpha=options["alpha"],
      references=options["references"],
    )
    if self.inner is not None:
      return self.inner(plain, needs, tap, x, finer, options)
    return plain(needs, tap, x, finer, options)


def finer(method: str | MethodSpec = "gradcam") -> MethodSpec:
  """Finer-CAM around any method that reads the target (`jaxcam.finercam` is ``finer("gradcam")``).

  The base method explains `jaxcam.targets.finer` (the target class against its closest rivals) instead of the
  class score. Options: ``finer_convention`` "pgc" (pytorch-grad-cam's ``FinerCAM``, the default: softmax-weighted
  differences with the 2nd-4th closest classes, alpha 1) or "torchcam" (``z_c - 0.6 mean`` of the 3 closest),
  ``alpha`` (None: the convention's default), ``references`` (see `jaxcam.targets.finer`).

  Ziyi Zhang et al., "Finer-CAM: Spotting the Difference Reveals Finer Details for Visual Explanation",
  arXiv 2501.11309.

  Args:
    method: a class-specific method name or row (default "gradcam").

  Returns:
    A `MethodSpec` named ``finer(<name>)`` (``finercam`` for Grad-CAM) with the options above added.

  Raises:
    UnknownNameError: an unknown method name.
    ValueError: a method that ignores the target (class-agnostic).

  >>> import jaxcam
  >>> row = jaxcam.finer("hirescam")
  >>> row.name, row.defaults()
  ('finer(hirescam)', {'finer_convention': 'pgc', 'alpha': None, 'references': None})
  """
  inner = get_method(method)
  if not inner.class_specific:
    raise ValueError(f"Expected a class-specific base method for Finer-CAM, got {inner.name} (it ignores the target).")
  name = "finercam" if inner.name == "gradcam" else wrapped_name("finer", inner.name)
  hook = FinerInputs(inner.inputs, name, expensive=bool(getattr(inner.inputs, "expensive", False)))
  return dataclasses.replace(
    inner, name=name, title=f"Finer-CAM ({inner.title or inner.name})", inputs=hook, aliases=()
  )


# ------------------------------------------------------------------------------------------------ RefineCAM

REFINE_CONVENTIONS = ("pgc", "torchcam")


def refine_fuse(maps, *, size, options, normalize, relu, upsample):
  """RefineCAM's fusion: the product of the layers' maps, min-max normalized.

  "pgc" (pytorch-grad-cam's ``RefineCAM``): each layer's map upsampled to the input and min-max normalized again
  (its per-layer CAM), multiplied, normalized. "torchcam": each layer's normalized map resized to the largest
  layer's size, multiplied, normalized, then upsampled to the input when `upsample`.
  """
  from jaxcam import postprocess

  convention = options["refine_convention"]
  if convention not in REFINE_CONVENTIONS:
    raise ValueError(f"Expected `refine_convention` to be one of {REFINE_CONVENTIONS}, got {convention!r}.")
  n = len(size)  # the spatial rank: `size` is the input's (H, W) or (D, H, W)
  largest = tuple(max(d) for d in zip(*(m.shape[-n:] for m in maps)))
  if convention == "pgc":
    layers = [postprocess.upsample(m, tuple(size) if upsample else largest) for m in maps]
    if normalize:
      layers = [postprocess.normalize(jax.nn.relu(m) if relu else m, spatial_dims=n) for m in layers]
    out = jnp.prod(jnp.stack(layers), axis=0)
    return postprocess.normalize(out, spatial_dims=n) if normalize else out
  out = jnp.prod(jnp.stack([postprocess.upsample(m, largest) for m in maps]), axis=0)
  if normalize:
    out = postprocess.normalize(out, spatial_dims=n)
  return postprocess.upsample(out, tuple(size)) if upsample else out


def refine(method: str | MethodSpec = "gradcam_pp") -> MethodSpec:
  """RefineCAM around any method (`jaxcam.refinecam` is ``refine("gradcam_pp")``): the element-wise product of
  the maps of a multi-layer tap's layers (``linen_tap(module, variables, ["layer2", "layer3", "layer4"])``), which
  keeps what every layer agrees on and denoises early layers. Option ``refine_convention``: "pgc" (the default) or
  "torchcam" (see `refine_fuse`). A single-layer tap gives the base method's map.

  "How to Evaluate and Refine your CAM", arXiv 2605.14641; pytorch-grad-cam's and torchcam's ``RefineCAM``.

  Args:
    method: a method name or row (default "gradcam_pp").

  Returns:
    A `MethodSpec` named ``refine(<name>)`` (``refinecam`` for Grad-CAM++) with the ``refine_convention`` option.

  Raises:
    UnknownNameError: an unknown method name.

  >>> import jaxcam
  >>> row = jaxcam.refine("gradcam")
  >>> row.name, row.defaults()
  ('refine(gradcam)', {'refine_convention': 'pgc'})
  """
  inner = get_method(method)
  name = "refinecam" if inner.name == "gradcam_pp" else wrapped_name("refine", inner.name)
  return dataclasses.replace(
    inner,
    name=name,
    title=f"RefineCAM ({inner.title or inner.name})",
    fuse=refine_fuse,
    controls=inner.controls + (("refine_convention", "pgc"),),
    aliases=(),
  )
