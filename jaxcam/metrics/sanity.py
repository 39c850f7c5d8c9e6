"""Sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps", arXiv 1810.03292): cascading model-parameter
randomization, from the top layer down, with the maps' similarity to the original at every stage.

The randomized parameters are re-drawn with the model's own initializers (``module.init`` with a `key`), one
parameter-owning submodule more per stage, in reverse call order (the classifier first). Running statistics
(BatchNorm) stay as they are, as in the paper. A method whose maps barely change while the network it explains is
destroyed fails the check. The variables are traced arguments: every stage reuses one compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam._filters import gaussian_kernel, separable_filter
from jaxcam.metrics.localization import average_ranks

__all__ = ["Randomization", "randomization_check", "spearman", "ssim"]


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
  """Spearman rank correlation of maps ``(..., H, W)`` pair by pair (average ranks for ties; 0 for a constant map).

  Args:
    a: maps ``(..., H, W)``, an array.
    b: maps of the same shape (or one that broadcasts against `a` after flattening ``H, W``).

  Returns:
    ``(...)`` the rank correlation of each pair, in [-1, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> a = jnp.arange(4.0).reshape(1, 2, 2)
    >>> metrics.spearman(a, a**3).tolist(), metrics.spearman(a, -a).tolist(), metrics.spearman(a, 0 * a).tolist()
    ([1.0], [-1.0], [0.0])
  """
  ra = average_ranks(a.reshape(a.shape[:-2] + (-1,)))
  rb = average_ranks(b.reshape(b.shape[:-2] + (-1,)))
  ra = ra - jnp.mean(ra, axis=-1, keepdims=True)
  rb = rb - jnp.mean(rb, axis=-1, keepdims=True)
  den = jnp.sqrt(jnp.sum(ra * ra, axis=-1) * jnp.sum(rb * rb, axis=-1))
  return jnp.where(den > 0, jnp.sum(ra * rb, axis=-1) / jnp.where(den > 0, den, 1.0), 0.0)


def _filter(m: jax.Array) -> jax.Array:
  """Separable 11x11 Gaussian (sigma 1.5), 'valid' region, on ``(..., H, W)``."""
  return separable_filter(m, gaussian_kernel(11, 1.5), axes=(-2, -1), mode="valid")


def ssim(a: jax.Array, b: jax.Array, *, data_range: float = 1.0) -> jax.Array:
  """Mean structural similarity of maps ``(B, H, W)`` (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01,
  K2 0.03, population covariances, the mean over the window positions that fit), as scikit-image's
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)`` away from its border crop.

  Args:
    a: maps ``(B, H, W)`` (any leading axes), at least 11 x 11.
    b: maps of the same shape.
    data_range: the range of the map values (1 for maps in [0, 1]); sets the constants ``(K * data_range)^2``.

  Returns:
    ``(B,)`` the mean SSIM of each pair (1 for identical maps).

  Raises:
    ValueError: maps smaller than 11 x 11 (the Gaussian window).

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> a = jnp.linspace(0.0, 1.0, 144).reshape(1, 12, 12)
    >>> [round(v, 4) for v in metrics.ssim(a, a).tolist()], bool(metrics.ssim(a, 1 - a)[0] < 0)
    ([1.0], True)
  """
  if min(a.shape[-2:]) < 11:
    raise ValueError(f"Expected maps of at least 11x11 for SSIM's window, got {tuple(a.shape[-2:])}.")
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  mu_a, mu_b = _filter(a), _filter(b)
  va = _filter(a * a) - mu_a**2
  vb = _filter(b * b) - mu_b**2
  cov = _filter(a * b) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
  return jnp.mean(s, axis=(-2, -1))


@functools.partial(
  jax.tree_util.register_dataclass,
  data_fields=["maps", "spearman", "spearman_abs", "ssim"],
  meta_fields=["stages", "method"],
)
@dataclasses.dataclass(frozen=True)
class Randomization:
  """What `randomization_check` returns. A registered pytree (`stages` and `method` are static).

  Args:
    maps: ``(S + 1, B, H, W)`` the normalized maps, the original model's first, then one per stage.
    spearman: ``(S, B)`` the rank correlation of each stage's normalized maps with the original's.
    spearman_abs: ``(S, B)`` the same for the raw (unnormalized) maps' absolute values.
    ssim: ``(S, B)`` the SSIM of each stage's normalized maps with the original's (NaN for maps smaller than
      11 x 11).
    stages: the submodules randomized cumulatively (stage s randomizes ``stages[:s + 1]``), top layer first.
    method: the method's name.

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...     return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net, x = Net(), jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> variables = net.init(jax.random.key(1), x)
    >>> r = metrics.randomization_check(net, variables, x, "gradcam", layer="conv", stages=1)
    >>> r.stages, r.method, r.maps.shape, r.spearman_abs.shape
    (('head',), 'gradcam', (2, 2, 4, 4), (1, 2))
    >>> bool(jnp.isnan(r.ssim).all())  # 4 x 4 maps: too small for SSIM's window
    True
  """

  maps: jax.Array
  spearman: jax.Array
  spearman_abs: jax.Array
  ssim: jax.Array
  stages: tuple[str, ...]
  method: str


def _param_modules(params: Any) -> list[tuple[str, ...]]:
  """Paths of the submodules that own parameters directly (a leaf's path without its last key)."""
  paths: list[tuple[str, ...]] = []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    mod = tuple(str(getattr(p, "key", p)) for p in path[:-1])
    if mod not in paths:
      paths.append(mod)
  return paths


def _call_order(module, variables, x, apply_kwargs) -> dict[str, int]:
  from jaxcam.taps import list_layers

  return {info.path: i for i, info in enumerate(list_layers(module, variables, x, **apply_kwargs))}


def _replace(params: Any, fresh: Any, prefixes: list[tuple[str, ...]]) -> Any:
  def pick(path, old, new):
    keys = tuple(str(getattr(p, "key", p)) for p in path)
    return new if any(keys[: len(pre)] == pre for pre in prefixes) else old

  return jax.tree_util.tree_map_with_path(pick, params, fresh)


def randomization_check(
  module: Any,
  variables: Any,
  x: jax.Array,
  /,
  method: Any = "gradcam",
  *,
  layer: Any = None,
  target: Any = None,
  key: jax.Array | None = None,
  stages: int | None = None,
  **options: Any,
) -> Randomization:
  """Cascading parameter randomization of a linen model, top layer first (see the module docstring).

  Args:
    module: the linen module.
    variables: its variables (``{"params": ...}``, plus e.g. ``batch_stats``, which stay as they are).
    x: images ``(B, H, W, C)``, float.
    method: the method (a name or `MethodSpec` row); `options` go to it.
    layer: the tapped layer (None: the model's ``default_layer``).
    target: as in `jaxcam.explain`; None fixes each image's top class on the original model for every stage.
    key: the PRNG key of the re-drawn parameters (default ``jax.random.key(0)``).
    stages: how many submodules to randomize (default: all of them, top down).
    **options: the method's options and `jaxcam.explain`'s flags.

  Returns:
    `Randomization`: the maps of every stage and their similarity to the original; draw it with
    `jaxcam.viz.randomization_plot`.

  Raises:
    ValueError: `x` not a batch of images ``(B, H, W, C)``, or `stages` not a positive int.
    TypeError: integer `x`, a non-int `stages`, or a `key` that is not a PRNG key.
    KeyError: an unknown method name (`jaxcam.UnknownNameError`, also a `ValueError`).

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from jaxcam import metrics
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
    ...     return nn.Dense(3, name="head")(a.mean(axis=(1, 2)))
    >>> net, x = Net(), jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
    >>> variables = net.init(jax.random.key(1), x)
    >>> r = metrics.randomization_check(net, variables, x, "gradcam", layer="conv", stages=1)
    >>> r.stages, r.maps.shape, r.spearman.shape  # the classifier re-drawn
    (('head',), (2, 2, 4, 4), (1, 2))
  """
  from jaxcam import _checks, api, taps
  from jaxcam._errors import check_key

  api.check_images(x)
  key = jax.random.key(0) if key is None else check_key(key, method="randomization_check")
  spec = api.get_method(method)
  fresh = module.init(key, x)["params"]
  owners = _param_modules(variables["params"])
  order = _call_order(module, variables, x, {})
  known = [p for p in owners if "/".join(p) in order]
  top_down = sorted(known, key=lambda p: order["/".join(p)], reverse=True)
  if stages is not None:
    top_down = top_down[: _checks.check_positive_int("stages", stages)]
  tap = taps.linen_tap(module, variables, layer)
  original = api.explain(spec, tap, x, target, **options)
  fixed = original.target if original.target is not None else target
  raw0 = api.explain(spec, tap, x, fixed, normalize=False, **options).maps
  maps, rho, rho_abs, sims = [original.maps], [], [], []
  for s in range(len(top_down)):
    params = _replace(variables["params"], fresh, top_down[: s + 1])
    t = dataclasses.replace(tap, variables={**variables, "params": params})
    m = api.explain(spec, t, x, fixed, **options).maps
    raw = api.explain(spec, t, x, fixed, normalize=False, **options).maps
    maps.append(m)
    rho.append(spearman(original.maps, m))
    rho_abs.append(spearman(jnp.abs(raw0), jnp.abs(raw)))
    sims.append(ssim(original.maps, m) if min(x.shape[1:3]) >= 11 else jnp.full(m.shape[:1], jnp.nan))
  return Randomization(
    maps=jnp.stack(maps),
    spearman=jnp.stack(rho),
    spearman_abs=jnp.stack(rho_abs),
    ssim=jnp.stack(sims),
    stages=tuple("/".join(p) for p in top_down),
    method=spec.name,
  )
