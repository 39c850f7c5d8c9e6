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
  """Spearman rank correlation of maps ``(..., H, W)`` pair by pair (average ranks for ties; 0 for a constant map)."""
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
  ``structural_similarity(gaussian_weights=True, use_sample_covariance=False)`` away from its border crop."""
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
  """stages: the submodules randomized cumulatively (stage s randomizes ``stages[:s + 1]``); maps: ``(S + 1, B, H,
  W)``, the original first; spearman / spearman_abs / ssim: ``(S, B)`` similarity of each stage's maps to the
  original (rank correlation of the normalized maps and of the raw maps' absolute values; SSIM of the normalized
  maps)."""

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
    module, variables: the linen model; x: images ``(B, H, W, C)``.
    method: the method (a name or row); `options` go to it. layer: the tapped layer (None: the model's default).
    target: as in `jaxcam.explain`; None fixes each image's top class on the original model for every stage.
    key: the PRNG key of the re-drawn parameters (default ``jax.random.key(0)``).
    stages: how many submodules to randomize (default: all of them, top down).

  Returns:
    `Randomization`; draw it with `jaxcam.viz.randomization_plot`.
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
