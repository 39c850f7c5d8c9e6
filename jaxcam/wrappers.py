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
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import chunking, core
from jaxcam import targets as targets_lib
from jaxcam._errors import check_key
from jaxcam.methods.table import MethodSpec, get_method

__all__ = ["smooth"]


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

    total = chunking.chunked_sum(one, jnp.arange(self.num_samples), chunk_size=self.chunk_size)
    return clean, _mean(total, self.num_samples)


def smooth(method: str | MethodSpec, *, num_samples: int = 8, std: float = 0.3, chunk_size: int = 8) -> MethodSpec:
  """A method whose inputs are averaged over noisy copies of `x` (see the module docstring); needs ``key=``.

  Args:
    method: a method name or row (a smoothed row too: noise composes).
    num_samples: noisy copies averaged (>= 1).
    std: standard deviation of the Gaussian noise added to `x` (>= 0; 0 reproduces the method's inputs).
    chunk_size: copies evaluated at once (memory grows with it, not with `num_samples`).

  Returns:
    A `MethodSpec` named ``smooth_<name>``, with the same options plus ``key``.
  """
  inner = get_method(method)
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"Expected `num_samples` to be a positive int, got {num_samples!r}.")
  if not isinstance(std, (int, float)) or isinstance(std, bool) or not std >= 0:
    raise ValueError(f"Expected `std` to be a non-negative float, got {std!r}.")
  chunking.check_chunk_size(chunk_size)
  name = f"smooth_{inner.name}"
  hook = SmoothInputs(inner.inputs, int(num_samples), float(std), int(chunk_size), name)
  return dataclasses.replace(inner, name=name, title=f"Smoothed {inner.title or inner.name}", inputs=hook, aliases=())
