"""Guided backpropagation and Guided Grad-CAM without model edits: the model is traced to a jaxpr once and re-run
with ReLU's derivative replaced.

Every ReLU is found by what it computes, not by module type: ``max(x, 0)`` with a literal or constant zero, which
is what ``jax.nn.relu``, ``flax.linen.relu``, ``nnx.relu`` and ``jnp.maximum(x, 0)`` all lower to (also inside
nested ``jit`` calls and custom-derivative wrappers). ReLU6 (``jax.nn.relu6``) is ``min(max(x, 0), 6)``: its
``max`` gets the guided rule and the cap at 6 keeps its ordinary derivative, so a gradient passes where
``0 < x < 6`` and it is positive. ``relu6=False`` leaves ReLU6 plain, as pytorch-grad-cam does (it replaces
``nn.ReLU`` modules only; functional ReLUs are missed there too). ReLUs inside ``scan``/``while``/``cond`` bodies
are left plain (none of the shipped models has one).

Rules (Springenberg et al., "Striving for Simplicity: The All Convolutional Net", arXiv 1412.6806):
``"guided"`` passes the gradient where the ReLU's input is positive *and* the gradient is positive;
``"deconvnet"`` (Zeiler & Fergus) passes ``relu(gradient)`` whatever the input.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import _jaxpr
from jaxcam import targets as targets_lib
from jaxcam._model import split_model

__all__ = ["RULES", "GuidedFunction", "guided_backprop", "guided_function", "guided_gradcam"]

RULES = ("guided", "deconvnet")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _relu(rule: str, x: jax.Array) -> jax.Array:
  return jnp.maximum(x, jnp.zeros((), x.dtype))


def _relu_fwd(rule, x):
  return _relu(rule, x), x


def _relu_bwd(rule, x, g):
  zero = jnp.zeros((), g.dtype)
  if rule == "deconvnet":
    return (jnp.maximum(g, zero),)
  return (jnp.where((x > 0) & (g > 0), g, zero),)


_relu.defvjp(_relu_fwd, _relu_bwd)


def _is_zero(v, env) -> bool:
  if _jaxpr.is_literal(v):
    val = v.val
  else:
    val = env.get(v)
    if isinstance(val, jax.core.Tracer) or val is None:
      return False
  arr = np.asarray(val)
  return arr.size > 0 and arr.ndim == 0 and float(arr) == 0.0


def _sub_name(eqn) -> str:
  """The name of the function a custom_jvp_call wraps (``relu``, ``relu6``, ...), read from its inner jit."""
  inner = _jaxpr.inner_jaxpr(eqn)
  if inner is None:
    return ""
  for e in inner.eqns:
    if "name" in e.params:
      return str(e.params["name"])
  return ""


def _eval(jaxpr, consts, args, rule: str | None, relu6: bool):
  """Evaluate `jaxpr` with ``max(x, 0)`` replaced by the guided ReLU of `rule` (None: evaluate it plainly)."""
  env: dict = {}

  def read(v):
    return v.val if _jaxpr.is_literal(v) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    invals = [read(v) for v in eqn.invars]
    if rule is not None and name == "max" and len(eqn.invars) == 2 and any(_is_zero(v, env) for v in eqn.invars):
      other = invals[1] if _is_zero(eqn.invars[0], env) else invals[0]
      shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in invals))
      outs = [_relu(rule, jnp.broadcast_to(other, shape))]
    elif name in _jaxpr.CALL_PRIMITIVES and _jaxpr.inner_jaxpr(eqn) is not None:
      # jit calls, remat, and custom-derivative wrappers (relu, relu6, silu, ...: their own rule is replaced by the
      # guided one inside, or unused: the guided gradient is defined by the primal computation)
      sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
      plain = rule is None or (name == "custom_jvp_call" and not relu6 and _sub_name(eqn) == "relu6")
      outs = _eval(_jaxpr.inner_jaxpr(eqn), getattr(sub, "consts", ()), invals, None if plain else rule, relu6)
    else:
      outs = eqn.primitive.bind(*invals, **eqn.params)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


@dataclasses.dataclass(frozen=True)
class GuidedFunction:
  """`fn` with every ReLU's derivative replaced by `rule` (same values); hashable, so `jax.jit` caches it.

  Build it with `guided_function` (which checks the arguments). Calling it traces `fn` to a jaxpr and evaluates
  that jaxpr with the guided ReLU; ``GuidedFunction(fn)(x, *args)`` returns what ``fn(x, *args)`` returns.

  Args:
    fn: the function whose ReLUs get the rule, ``fn(x, *args) -> any pytree``.
    rule: "guided" (the default) or "deconvnet" (see the module docstring).
    relu6: apply the rule to ReLU6 too (default); False leaves it plain.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam.guided import GuidedFunction
    >>> f = GuidedFunction(lambda v: jax.nn.relu(v).sum(), rule="deconvnet")
    >>> f(jnp.array([-1.0, 2.0])).tolist(), jax.grad(f)(jnp.array([-1.0, 2.0])).tolist()  # relu(g) everywhere
    (2.0, [1.0, 1.0])
    >>> f == GuidedFunction(f.fn, rule="deconvnet")  # equal functions: one jit cache entry
    True
  """

  fn: Callable[[jax.Array], Any]
  rule: str = "guided"
  relu6: bool = True

  def __call__(self, x: jax.Array, *args: Any) -> Any:
    closed, out_shape = jax.make_jaxpr(self.fn, return_shape=True)(x, *args)
    flat = _eval(closed.jaxpr, closed.consts, [x, *jax.tree.leaves(args)], self.rule, self.relu6)
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)


def guided_function(fn: Callable[[jax.Array], Any], *, rule: str = "guided", relu6: bool = True) -> GuidedFunction:
  """`fn` with every ReLU's derivative replaced by `rule` (see the module docstring); its output may be any pytree.

  `fn` is traced to a jaxpr on each call (inside `jax.jit`: once per shape).

  Args:
    fn: any JAX function ``fn(x, *args) -> pytree`` (no model edits; its ReLUs are found on the jaxpr).
    rule: "guided" (the default: the gradient passes where the ReLU's input and the gradient are positive) or
      "deconvnet" (``relu(gradient)`` whatever the input).
    relu6: apply the rule to ReLU6 too (default); False leaves ReLU6 plain, as pytorch-grad-cam.

  Returns:
    A `GuidedFunction`: the same values as `fn`, the modified derivative under `jax.grad` / `jax.vjp`.

  Raises:
    ValueError: `rule` is not one of `RULES`.
    TypeError: `relu6` is not a bool.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam.guided import guided_function
    >>> f = lambda v: -jax.nn.relu(v).sum()  # a negative gradient where v > 0
    >>> v = jnp.array([-1.0, 2.0])
    >>> jax.grad(f)(v).tolist(), jax.grad(guided_function(f))(v).tolist()  # guided: negative gradients stop
    ([0.0, -1.0], [0.0, 0.0])
  """
  if rule not in RULES:
    raise ValueError(f"Expected `rule` to be one of {RULES}, got {rule!r}.")
  if not isinstance(relu6, bool):
    raise TypeError(f"Expected `relu6` to be a bool, got {relu6!r}.")
  return GuidedFunction(fn, rule, relu6)


def _check_x(x: Any) -> None:
  from jaxcam.api import check_images

  check_images(x)


def guided_backprop(
  model_fn: Any, x: jax.Array, /, target: Any = None, *, rule: str = "guided", relu6: bool = True
) -> jax.Array:
  """Guided backpropagation: the input gradient of the target score with guided ReLU derivatives.

  Args:
    model_fn: a function ``x -> logits`` (any JAX function; ``functools.partial(module.apply, variables)`` for
      linen) or a jaxcam tap (its plain forward pass). No model edits.
    x: images ``(B, H, W, C)``.
    target: as in `jaxcam.explain` (None: each image's top class; ids ``(B,)`` or ``(B, K)``; a score).
    rule: "guided" (the default) or "deconvnet".
    relu6: apply the rule to ReLU6 too (default); False leaves it plain, as pytorch-grad-cam.

  Returns:
    The raw gradient ``(B, H, W, C)`` (``(B, K, H, W, C)`` for ``(B, K)`` targets), float32 or wider. Batched:
      each image's gradient depends on that image only (pytorch-grad-cam's ``GuidedBackpropReLUModel`` takes one
      image at a time). Draw it with `jaxcam.viz.deprocess_gradient`.

  Raises:
    ValueError: bad images or targets, or an unknown `rule`.
    TypeError: `relu6` not a bool.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> def f(x):  # two "classes": the sum of relu(x), and the sum of x
    ...   return jnp.stack([jax.nn.relu(x).sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3))], axis=-1)
    >>> g = jaxcam.guided_backprop(f, jnp.array([[[[-1.0], [2.0]]]]), target=0)  # (1, 1, 2, 1)
    >>> g.shape, g[0, 0, :, 0].tolist()  # the ReLU passes the gradient where x > 0 only
    ((1, 1, 2, 1), [0.0, 1.0])
  """
  _check_x(x)
  fn, arg = split_model(model_fn)
  g = guided_function(fn, rule=rule, relu6=relu6)
  return _guided_jit(g, arg, x, targets_lib.as_target(target))


@functools.partial(jax.jit, static_argnums=(0,))
def _guided_jit(fn, arg, x, target):
  extra = () if arg is None else (arg,)
  logits = fn(x, *extra)
  ids, scores, multi = target.evaluate(logits)
  fixed = targets_lib.with_ids(target, ids)

  def total(xx, column):
    _, s, _ = fixed.evaluate(fn(xx, *extra))
    return jnp.sum(s[:, column])

  grads = jnp.stack([jax.grad(total)(x, j) for j in range(scores.shape[1])], axis=1)  # (B, K, H, W, C)
  grads = grads.astype(jnp.promote_types(grads.dtype, jnp.float32))
  return grads if multi else grads[:, 0]


def guided_gradcam(tap: Any, model_fn: Any, x: jax.Array, /, target: Any = None, **options) -> jax.Array:
  """Guided Grad-CAM: the Grad-CAM map ``(B, H, W)`` times the guided-backprop gradient ``(B, H, W, C)``.

  The class is fixed once (the top class of the clean image when `target` is None), so both factors explain the
  same class. Selvaraju et al., "Grad-CAM", arXiv 1610.02391; pytorch-grad-cam's examples multiply the same two
  arrays.

  Args:
    tap: the tap of the CAM factor (as in `jaxcam.explain`).
    model_fn: the model of the guided-backprop factor, as in `guided_backprop`; None: the tap's own forward pass.
    x: images ``(B, H, W, C)``.
    target: as in `jaxcam.explain`.
    **options: ``method`` (default "gradcam", e.g. "gradcam_pp"), ``rule`` and ``relu6`` (as in
      `guided_backprop`); the rest go to `jaxcam.explain` (``normalize``, the method's options, ...).

  Returns:
    ``(B, H, W, C)`` (``(B, K, H, W, C)`` for ``(B, K)`` targets): the map times the gradient, per channel.

  Raises:
    ValueError, TypeError: as `jaxcam.explain` and `guided_backprop`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxcam
    >>> params = {"w": jnp.array([[1.0, -1.0], [-1.0, 1.0]]), "v": jnp.eye(2)}  # 1x1 conv + ReLU, GAP, dense
    >>> tap = jaxcam.function_tap(lambda p, x: jax.nn.relu(x @ p["w"]), lambda p, x, a: a.mean((1, 2)) @ p["v"], params)
    >>> x, ids = jax.random.uniform(jax.random.key(0), (2, 4, 4, 2)), jnp.array([0, 1])
    >>> g = jaxcam.guided_gradcam(tap, None, x, ids)
    >>> g.shape
    (2, 4, 4, 2)
    >>> bool(jnp.allclose(g, jaxcam.gradcam(tap, x, ids)[..., None] * jaxcam.guided_backprop(tap, x, ids)))
    True
  """
  from jaxcam import api

  method = options.pop("method", "gradcam")
  rule = options.pop("rule", "guided")
  relu6 = options.pop("relu6", True)
  ex = api.explain(method, tap, x, target=target, **options)
  ids = ex.target if ex.target is not None else target
  grads = guided_backprop(tap if model_fn is None else model_fn, x, target=ids, rule=rule, relu6=relu6)
  return ex.maps[..., None] * grads
