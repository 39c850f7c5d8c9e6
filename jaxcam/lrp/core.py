"""Relevance propagation of any JAX function as a modified gradient: the function's jaxpr is flattened, each
primitive gets a rule (`jaxcam.lrp.rules`), and the function is re-run with every modified primitive wrapped in a
``jax.custom_vjp`` whose backward pass is its rule. One forward and one (modified) backward pass; the result is
``x * g`` for each input ``x``. Everything is traceable: `jax.jit`, `jax.vmap` and batching over seeds work through
it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam.lrp import _graph, _plan
from jaxcam.lrp import rules as R

__all__ = ["lrp_vjp", "modified_vjp", "relevance"]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _eps_scale(z, eps):
  return z


def _eps_fwd(z, eps):
  return z, z


def _eps_bwd(eps, z, g):
  den = z + eps * jnp.where(z >= 0, 1, -1).astype(z.dtype)
  return (g * (z / den),)


_eps_scale.defvjp(_eps_fwd, _eps_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _share(y, c):
  return y


def _share_fwd(y, c):
  return y, None


def _share_bwd(c, _, g):
  return (g * jnp.asarray(c, g.dtype),)


_share.defvjp(_share_fwd, _share_bwd)


@jax.custom_vjp
def _passthrough(root, value):
  return value


def _pt_fwd(root, value):
  return value, (root, value)


def _pt_bwd(res, g):
  root, value = res
  nonzero = root != 0
  ratio = jnp.where(nonzero, value / jnp.where(nonzero, root, 1).astype(value.dtype), 0)
  return ((g * ratio).astype(root.dtype), jnp.zeros_like(value))


_passthrough.defvjp(_pt_fwd, _pt_bwd)


def _inexact(v) -> bool:
  return jnp.issubdtype(jnp.result_type(v), jnp.inexact)


def _wrap(out, step: _plan.Step):
  if not _inexact(out):
    return out
  if step.stop:
    return jax.lax.stop_gradient(out)
  if step.share != 1.0:
    out = _share(out, step.share)
  if step.eps:
    out = _eps_scale(out, step.eps)
  return out


def _program(graph: _graph.Graph, steps: list[_plan.Step]) -> Callable:
  """The flat function re-run node by node with each step's rule wired in."""

  def run(*args):
    env: dict[int, Any] = dict(graph.consts)
    env.update(zip(graph.inputs, args))
    for node, step in zip(graph.nodes, steps):
      outs = node.primitive.bind(*[env[i] for i in node.inputs], **node.params)
      outs = list(outs) if node.primitive.multiple_results else [outs]
      for o, v in zip(node.outputs, outs):
        env[o] = v if step.rule is None else _wrap(v, step)
      for v, root in step.passthrough:
        env[v] = _passthrough(env[root], jax.lax.stop_gradient(env[v]))
    return [env[i] for i in graph.outputs]

  return run


def _report(unknown: list[str]) -> None:
  if unknown:
    from jaxcam._errors import warn_user

    warn_user(
      f"jaxcam.lrp: no relevance rule for primitive(s) {', '.join(unknown)}; they fall back to gradient x input. "
      "Give them a rule with Composite(rules={name: ...}) to silence this."
    )


def _check_composite(composite: Any) -> R.Composite:
  if composite is None:
    return R.attnlrp()
  if isinstance(composite, R.Composite):
    return composite
  raise TypeError(
    f"Expected `composite` to be None (AttnLRP) or a jaxcam.lrp.Composite, got {type(composite).__name__}. "
    "Build one with jaxcam.lrp.Composite(rules={...}, layers={...}, eps=...)."
  )


def modified_vjp(fn: Callable, *primals: Any, composite: R.Composite | None = None) -> tuple[Any, Callable]:
  """``(fn(*primals), grad_fn)``, as `jax.vjp` but with every primitive's VJP replaced by its rule: ``grad_fn(seed)``
  is the modified gradient ``g`` of each primal (same pytree); the relevance of a value ``v`` is ``v * g``
  (`lrp_vjp` multiplies for you). A primitive without a rule falls back to its own VJP, reported once per trace.

  Args:
    fn: any JAX function of array pytrees (a model's apply, a tap's forward, an Equinox module).
    *primals: its arguments (arrays, Python numbers or pytrees of them); every floating leaf gets a gradient,
      integer leaves get zeros.
    composite: the rules (`jaxcam.lrp.Composite`); None: AttnLRP's (`jaxcam.lrp.attnlrp()`).

  Returns:
    ``(output, grad_fn)``: ``fn(*primals)`` and ``grad_fn(seed) -> tuple`` of the modified gradients, one per primal
      (the pytree of `primals`), where `seed` has the structure of the output.

  Raises:
    TypeError: `composite` is not a `Composite` (or None), or a primal leaf is not an array or number.
    ValueError: (from ``grad_fn``) a seed with another number of arrays than the output.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import modified_vjp
    >>> out, grad_fn = modified_vjp(lambda v: v ** 2, jnp.array([1.0, 2.0]))  # AttnLRP: Identity on x ** 2
    >>> out.tolist(), grad_fn(jnp.ones(2))[0].tolist()  # g = y / x, so that x * g = y
    ([1.0, 4.0], [1.0, 2.0])
  """
  comp = _check_composite(composite)
  leaves, tree = jax.tree_util.tree_flatten(primals)
  for leaf in leaves:
    if not hasattr(leaf, "dtype") and not isinstance(leaf, (int, float)):
      raise TypeError(f"Expected the primals to be arrays (or pytrees of them), got {type(leaf).__name__}.")
  out_tree: list = []

  def flat(*xs):
    out = fn(*jax.tree_util.tree_unflatten(tree, xs))
    out_leaves, t = jax.tree_util.tree_flatten(out)
    out_tree.append(t)
    return out_leaves

  closed = jax.make_jaxpr(flat)(*leaves)
  graph = _graph.flatten(closed)
  steps, unknown = _plan.plan(graph, comp)
  _report(unknown)
  out_flat, vjp = jax.vjp(_program(graph, steps), *leaves)

  def grad_fn(seed: Any) -> Any:
    seeds = jax.tree_util.tree_leaves(seed)
    if len(seeds) != len(out_flat):
      raise ValueError(
        f"Expected a seed with {len(out_flat)} array(s), the structure of fn's output; got {len(seeds)}."
      )
    grads = vjp([jnp.asarray(s, o.dtype) for s, o in zip(seeds, out_flat)])
    grads = [g if _inexact(x) else jnp.zeros(np.shape(x)) for x, g in zip(leaves, grads)]
    return jax.tree_util.tree_unflatten(tree, grads)

  return jax.tree_util.tree_unflatten(out_tree[0], out_flat), grad_fn


def lrp_vjp(fn: Callable, *primals: Any, composite: R.Composite | None = None) -> tuple[Any, Callable]:
  """``(fn(*primals), relevance_fn)``, as `jax.vjp`: ``relevance_fn(seed)`` returns, for each primal, the relevance
  ``primal * g`` (same pytree), where ``g`` is the modified gradient of ``sum(seed * output)`` (`modified_vjp`). The
  relevance entering the output is ``output * seed``: a one-hot seed starts it at that output's score.

  Args:
    fn: any JAX function of array pytrees (a model's apply, a tap's forward, an Equinox module).
    *primals: its arguments; every floating leaf receives relevance.
    composite: the rules (`jaxcam.lrp.Composite`); None: AttnLRP's (`jaxcam.lrp.attnlrp()`).

  Returns:
    ``(output, relevance_fn)``; ``relevance_fn(seed)`` returns a tuple with one relevance per primal (the pytree of
      `primals`). A primitive without a rule falls back to gradient x input, reported once per trace (a warning
      naming it).

  Raises:
    TypeError: `composite` is not a `Composite` (or None), or a primal leaf is not an array or number.
    ValueError: (from ``relevance_fn``) a seed with another number of arrays than the output.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import lrp_vjp
    >>> out, relevance_fn = lrp_vjp(lambda v: v ** 2, jnp.array([1.0, 2.0]))
    >>> relevance_fn(jnp.array([1.0, 0.0]))[0].tolist()  # explain output 0 only: R = y_0 on x_0
    [1.0, 0.0]
  """
  out, grad_fn = modified_vjp(fn, *primals, composite=composite)

  def relevance_fn(seed: Any) -> Any:
    return jax.tree.map(lambda x, g: x * g, primals, grad_fn(seed))

  return out, relevance_fn


def relevance(fn: Callable, *primals: Any, composite: R.Composite | None = None, seed: Any = None) -> Any:
  """The relevance of each primal for ``sum(seed * fn(*primals))`` (`lrp_vjp`); `seed` None: all ones (every output
  score's relevance, summed). For a batch of images and a model returning (B, classes) logits, a one-hot seed per
  image explains each image's class score.

  Args:
    fn: any JAX function of array pytrees (a model's apply, a tap's forward, an Equinox module).
    *primals: its arguments; every floating leaf receives relevance.
    composite: the rules (`jaxcam.lrp.Composite`); None: AttnLRP's (`jaxcam.lrp.attnlrp()`).
    seed: the output's weights, shaped like ``fn(*primals)``; None: all ones.

  Returns:
    A tuple with one relevance per primal, each shaped like it (``relevance(f, x)[0]`` for one argument).

  Raises:
    TypeError: `composite` is not a `Composite` (or None), or a primal leaf is not an array or number.
    ValueError: a seed with another number of arrays than the output.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jaxcam.lrp import relevance
    >>> W = jnp.array([[1.0, -2.0], [0.5, 1.0]])
    >>> r = relevance(lambda x: jnp.maximum(x @ W, 0.0), jnp.array([1.0, 2.0]), seed=jnp.array([1.0, 0.0]))
    >>> [round(float(v), 4) for v in r[0]], round(float(r[0].sum()), 4)  # sums to the score relu(1 + 1) = 2
    ([1.0, 1.0], 2.0)
  """
  out, fn_r = lrp_vjp(fn, *primals, composite=composite)
  if seed is None:
    seed = jax.tree.map(jnp.ones_like, out)
  rel = fn_r(seed)
  return rel
