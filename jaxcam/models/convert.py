"""Torch state dict -> Flax variables: layout changes and an exact, checked name mapping."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["convert_state_dict", "torch_to_flax_array"]


def torch_to_flax_array(value: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """Reorder a torch array to the Flax layout of `target_shape`.

  Conv weights (O, I/g, kh, kw) -> (kh, kw, I/g, O); Linear weights (out, in) -> (in, out); vectors unchanged.
  """
  value = np.asarray(value)
  if value.ndim == 4:
    return np.transpose(value, (2, 3, 1, 0))
  if value.ndim == 2:
    return value.T
  return value


def convert_state_dict(
  state_dict: dict[str, np.ndarray],
  module: nn.Module,
  mapping: dict[str, tuple[str, tuple[str, ...]]],
  input_shape: tuple[int, ...],
  *,
  model_name: str,
  ignore: tuple[str, ...] = ("num_batches_tracked",),
) -> dict[str, Any]:
  """Fill `module`'s variables from `state_dict` via ``mapping[torch_key] = (collection, flax_path)``.

  Every torch key (except those ending in `ignore`) must be mapped, every Flax variable filled, and shapes
  must agree after the layout change; anything else raises `ValueError` naming the keys.
  """
  flat_target = _variable_shapes(module, input_shape)
  used = [k for k in state_dict if not k.endswith(ignore)]
  unmapped = [k for k in used if k not in mapping]
  if unmapped:
    raise ValueError(f"{model_name}: unexpected keys in the state dict: {unmapped[:8]} ({len(unmapped)} in all).")
  missing_src = [k for k in mapping if k not in state_dict]
  if missing_src:
    raise ValueError(f"{model_name}: keys missing from the state dict: {missing_src[:8]} ({len(missing_src)} in all).")
  out: dict[tuple, np.ndarray] = {}
  for tkey, (coll, path) in mapping.items():
    full = (coll,) + tuple(path)
    if full not in flat_target:
      raise ValueError(f"{model_name}: unexpected key {tkey!r} in the state dict: the model has no {'/'.join(full)}.")
    target = flat_target[full]
    value = torch_to_flax_array(state_dict[tkey], target.shape).astype(np.float32)
    if value.shape != tuple(target.shape):
      raise ValueError(
        f"{model_name}: {tkey} has shape {state_dict[tkey].shape} -> {value.shape} in Flax layout, expected "
        f"{tuple(target.shape)} for {'/'.join(full)}."
      )
    out[full] = value
  unfilled = [k for k in flat_target if k not in out]
  if unfilled:
    raise ValueError(f"{model_name}: Flax variables left without weights: {['/'.join(k) for k in unfilled[:8]]}.")
  variables: dict[str, Any] = {}
  for full, value in out.items():
    node = variables
    for p in full[:-1]:
      node = node.setdefault(p, {})
    node[full[-1]] = value
  return jax.device_put(variables)  # one transfer of the whole tree (an asarray per leaf costs ~2 ms each)


def _variable_shapes(module: nn.Module, input_shape: tuple[int, ...]) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
  """``{(collection, *path): ShapeDtypeStruct}`` of `module`'s variables, found by tracing its ``init`` (no FLOPs),
  or read from `jaxcam.compile_cache` for a shipped model when the caches are on (tracing costs a fresh process
  about half a second)."""
  from jaxcam import compile_cache

  def trace():
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32)))
    return [[[coll, *path], list(leaf.shape), str(leaf.dtype)] for coll, tree in shapes.items() for path, leaf in
            _flatten(tree)]  # fmt: skip

  key = None
  if compile_cache.shipped_module(module):
    key = [compile_cache.module_key(module), list(input_shape)]
  table = compile_cache.cached_json("shapes", key, trace)
  return {tuple(path): jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype)) for path, shape, dtype in table}


def _flatten(tree, prefix=()):
  for k, v in tree.items():
    if hasattr(v, "items"):
      yield from _flatten(v, prefix + (k,))
    else:
      yield prefix + (k,), v
