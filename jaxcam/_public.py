"""One public function per method row (``jaxcam.gradcam``, ...), generated from the table: `explain`'s arguments,
the maps as the result, and a full docstring and signature built from the row (its title, its options with their
defaults, its cost and an example), so that ``help(jaxcam.gradcam)`` and `inspect.signature` show them."""

from __future__ import annotations

import inspect
import re
import textwrap
from typing import Any

from jaxcam.methods.table import METHODS, MethodSpec, get_method

COMMON_ARGS = (  # explain's common arguments, in its order and with its defaults (see jaxcam.explain)
  ("tap", "a tap (`jaxcam.linen_tap`, `nnx_tap`, `function_tap`); a multi-layer tap fuses the layers' maps."),
  ("x", "images ``(B, H, W, C)``, float."),
  (
    "target",
    "None (each image's top class), class ids (scalar, ``(B,)`` or ``(B, K)``), a `jaxcam.targets` score or a "
    "callable ``logits -> (B,)``.",
  ),
  ("normalize", "per-image min-max to [0, 1] at layer resolution (pytorch-grad-cam's order)."),
  ("upsample", "bilinear resize to the input's ``(H, W)``; False keeps the layer's ``(h, w)``."),
  ("relu", "clip negative evidence (all peers do)."),
  ("fusion", '"mean" (pytorch-grad-cam) or "max" (torchcam) to fuse several layers\' maps.'),
  (
    "progress",
    "a progress bar per chunked map on stderr; None: for eager calls of expensive methods only, True: always, "
    "False: never.",
  ),
  (
    "eigen_smooth",
    "the first principal component of the weighted activations ``w * A`` instead of their channel sum (rows that "
    "weight channels or positions); ``jaxcam.eigen_smooth(method)``.",
  ),
  (
    "aug_smooth",
    "test-time augmentation: True for pytorch-grad-cam's flip x (0.9, 1, 1.1) multipliers, or a tuple of "
    "`jaxcam.Augmentation`; ``jaxcam.aug_smooth(method)``.",
  ),
)
_COMMON_DEFAULTS = {
  "target": None,
  "normalize": True,
  "upsample": True,
  "relu": True,
  "fusion": "mean",
  "progress": None,
  "eigen_smooth": False,
  "aug_smooth": False,
}

_MASKS = "masked copies"
OPTION_DOCS: dict[str, Any] = {  # option -> text, or {declarer (need, fn or hook name) or "": text}
  "fc": "the Dense layer of the logits: a layer path or its kernel ``(C, classes)``; None: the model's ``fc_layer``.",
  "strategy": 'exact diagonal derivatives: "auto", "structured" (C directions, global-average-pooling heads) or '
  '"generic" (one direction per element of A); see `jaxcam.derivatives.diagonals`.',
  "chunk_size": {
    "diagonals": "derivative directions evaluated at once (memory grows with it).",
    "noisy_grad_moments": "noisy copies evaluated at once (memory grows with it, not with `num_samples`).",
    "": f"{_MASKS} (forward passes) evaluated at once (memory grows with it, not with the number of copies).",
  },
  "derivatives": '"approx" (the paper\'s ``g**2``, ``g**3``: exact for piecewise-linear heads) or "exact" (the '
  "exact diagonal second and third derivatives of the score).",
  "eps": "added to the denominator (never a division by zero).",
  "convention": {
    "gradcam_pp_weights": '"exp" (the paper\'s Y = exp(S)) or "literal" (Y = S): how the exact derivatives enter '
    "alpha (`jaxcam.methods.gradient.gradcam_pp_derivative_terms`).",
    "": 'Score-CAM\'s mask: "pgc" (pytorch-grad-cam: aligned-corner upsampling, then min-max) or "torchcam" '
    "(min-max at layer resolution, then half-pixel upsampling).",
  },
  "num_samples": {
    "noisy_grad_moments": "noisy copies of `x` averaged (>= 1).",
    "noisy_masked_scores": "noisy masks averaged per channel (>= 1).",
    "integrated_masked_scores": "scaled masked copies per channel (the integration steps, >= 1).",
  },
  "std": {
    "noisy_grad_moments": "standard deviation of the Gaussian noise added to `x` (>= 0).",
    "noisy_masked_scores": "standard deviation of the Gaussian noise added to each mask (>= 0).",
  },
  "key": {
    "randomcam_weights": "a `jax.random` key for the random channel weights (required).",
    "SmoothInputs": "a `jax.random` key for the noisy copies of `x` (required).",
    "": "a `jax.random` key for the noise (required unless `noise` is given).",
  },
  "noise": {
    "noisy_grad_moments": "standard normal draws ``(num_samples, B, H, W, C)`` to use instead of drawing from `key`.",
    "": "standard normal draws ``(num_samples, B, H, W, C_layer)`` (one per layer channel) instead of from `key`.",
  },
  "top_n": "Faster-Score-CAM: score only the `top_n` channels with the largest spatial standard deviation (the "
  "others weigh 0); None: every channel.",
  "baseline": 'what a masked-out pixel becomes: a number (0: black), one value per input channel, or "mean" (the '
  "model's declared ``input_mean``).",
  "kernel": 'the kernel PCA\'s kernel (scikit-learn\'s): "sigmoid", "rbf", "poly", "linear" or "cosine".',
  "gamma": "the kernel's coefficient; None: ``1 / C``.",
  "coef0": "the independent term of the sigmoid and poly kernels.",
  "degree": "the degree of the poly kernel.",
  "k": {
    "fem_weights": "the threshold in standard deviations: a position counts where it exceeds ``mean + k std``.",
    "gradient_masked_scores": "channels scored (those with the largest spatial mean gradient; all if fewer).",
  },
  "score": "``(module, tokens) -> logits`` applied to each block's output; None: the module's ``legrad_score``.",
  "token": "the query token whose row of the rollout is the map (0: the class token).",
  "select": "``select(module) -> bool``: which submodules count as bias layers (pytorch-grad-cam's rule by default).",
  "composite": "the LRP rules (`jaxcam.lrp.Composite`); None: AttnLRP's (`jaxcam.lrp.attnlrp()`).",
  "steps": "Adam steps (>= 1).",
  "learning_rate": "Adam's learning rate (> 0).",
  "finer_convention": '"pgc" (pytorch-grad-cam\'s FinerCAM: softmax-weighted differences with the 2nd-4th closest '
  'classes) or "torchcam" (``z_c - 0.6 mean`` of the 3 closest).',
  "alpha": "the comparison strength; None: the convention's default (see `jaxcam.targets.finer`).",
  "references": "the rival classes compared with; None: the convention's default (see `jaxcam.targets.finer`).",
  "refine_convention": '"pgc" (each layer\'s map upsampled, normalized, multiplied) or "torchcam" (resized to the '
  "largest layer, multiplied, then upsampled); see `jaxcam.wrappers.refine_fuse`.",
}


def parse_args(doc: str | None) -> dict[str, str]:
  """``{name: text}`` from a Google-style ``Args:`` section (empty without one)."""
  lines = inspect.cleandoc(doc or "").splitlines()
  start = next((i for i, line in enumerate(lines) if line.strip() == "Args:"), None)
  if start is None:
    return {}
  indent = len(lines[start]) - len(lines[start].lstrip())
  out: dict[str, str] = {}
  current = None
  for line in lines[start + 1 :]:
    depth = len(line) - len(line.lstrip())
    if line.strip() and depth <= indent:
      break
    entry = re.match(r"\s*\**(\w+)(?: \([^)]*\))?: (.*)", line)
    if entry and depth == indent + 2:
      current = entry.group(1)
      out[current] = entry.group(2)
    elif current and line.strip():
      out[current] += " " + line.strip()
  return out


def _declarers(spec: MethodSpec) -> list[tuple[str, Any, tuple[tuple[str, Any], ...]]]:
  """``(name, object, options)`` of whatever declares the row's options: fn, its providers, its hooks."""
  from jaxcam.providers import get_provider

  fn = getattr(spec.fn, "fn", spec.fn)  # an eigen-smoothed row wraps the row function
  out = [(getattr(fn, "__name__", ""), fn, spec.options + spec.controls)]
  for need in spec.needs:
    p = get_provider(need, method=spec.name)
    out.append((need, p.fn, p.options))
  for hook in (spec.inputs, spec.around):
    while hook is not None:
      out.append((type(hook).__name__, type(hook), tuple(getattr(hook, "options", ()))))
      hook = getattr(hook, "inner", None)
  return out


def describe_option(spec: MethodSpec, option: str) -> str:
  """An option's description: the declarer's ``Args:`` entry, else `OPTION_DOCS`, else a pointer to its row."""
  declarers = [(n, obj) for n, obj, opts in _declarers(spec) if option in dict(opts)]
  for _, obj in declarers:
    text = parse_args(getattr(obj, "__doc__", None)).get(option)
    if text:
      return text
  entry = OPTION_DOCS.get(option)
  if isinstance(entry, dict):
    entry = next((entry[n] for n, _ in declarers if n in entry), entry.get(""))
  if entry:
    return entry
  where = declarers[0][0] if declarers else spec.name
  return f"an option of the {spec.title or spec.name} row (read by ``{where}``)."


def show_default(value: Any) -> str:
  """A default as it reads in a signature (a function by its name, not its address)."""
  name = getattr(value, "__qualname__", None)
  return f"{getattr(value, '__module__', '')}.{name}" if callable(value) and name else repr(value)


def method_signature(spec: MethodSpec) -> inspect.Signature:
  """`explain`'s signature without `method`, with the row's options as keyword-only parameters with defaults."""
  P = inspect.Parameter
  params = [P("tap", P.POSITIONAL_ONLY), P("x", P.POSITIONAL_ONLY), P("target", P.POSITIONAL_OR_KEYWORD, default=None)]
  params += [P(k, P.KEYWORD_ONLY, default=v) for k, v in _COMMON_DEFAULTS.items() if k != "target"]
  params += [P(k, P.KEYWORD_ONLY, default=v) for k, v in spec.defaults().items() if k not in _COMMON_DEFAULTS]
  return inspect.Signature(params, return_annotation="jax.Array")


def _wrap(name: str, text: str) -> str:
  return textwrap.fill(f"{name}: {text}", 116, initial_indent="  ", subsequent_indent="    ")


_NET = """\
>>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcam
>>> class Net(nn.Module):  # conv features -> global average pooling -> dense
...   fc_layer = "fc"  # the Dense layer CAM reads
...   @nn.compact
...   def __call__(self, x):
...     a = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu], name="features")(x)
...     return nn.Dense(3, name="fc")(a.mean(axis=(1, 2)))
>>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
>>> tap = jaxcam.linen_tap(Net(), Net().init(jax.random.key(1), x), "features")
"""
_VIT = """\
>>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcam
>>> class ViT(nn.Module):  # 8x8 images, 4x4 patches: a class token and 4 patch tokens, one attention block
...   def setup(self):
...     self.embed, self.block, self.head = nn.Conv(8, (4, 4), strides=4), Block(), nn.Dense(3)
...     self.cls = self.param("cls", nn.initializers.normal(1.0), (1, 1, 8))
...   def legrad_score(self, tokens):  # LeGrad's score of a block's tokens
...     return self.head(tokens[:, 0])
...   def __call__(self, x):
...     t = self.embed(x).reshape(x.shape[0], -1, 8)
...     return self.legrad_score(self.block(jnp.concatenate([jnp.broadcast_to(self.cls, (len(x), 1, 8)), t], 1)))
>>> class Block(nn.Module):
...   @nn.compact
...   def __call__(self, t):
...     return t + nn.MultiHeadDotProductAttention(num_heads=2)(t, t)
>>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
>>> vit = ViT()
>>> tap = jaxcam.linen_tap(vit, vit.init(jax.random.key(1), x), "block", layout=jaxcam.layouts.tokens(prefix=1))
"""
_TRANSFORMER_NEEDS = ("attention_relevance", "attention_rollout", "gradient_rollout")


def example(spec: MethodSpec, call: str | None = None) -> str:
  """The row's doctest: a tiny model (a convnet, or a one-block ViT for attention rows), then its maps' shape."""
  setup = _VIT if any(n in _TRANSFORMER_NEEDS for n in spec.needs) else _NET
  if call is None:  # a wrapped row ("smooth(gradcam)") is built the way users would
    call = f"jaxcam.{spec.name}" if spec.name.isidentifier() else f"jaxcam.public_function({spec.name!r})"
  key = ", key=jax.random.key(2)" if spec.defaults().get("key", 0) is None else ""
  return setup + (
    f">>> maps = {call}(tap, x, jnp.array([0, 2]){key})\n"
    ">>> maps.shape, maps.dtype, bool(jnp.all((maps >= 0) & (maps <= 1))), maps.max(axis=(1, 2)).round(3).tolist()\n"
    "((2, 8, 8), dtype('float32'), True, [1.0, 1.0])\n"
  )


def method_docstring(spec: MethodSpec) -> str:
  """The generated function's docstring: summary, Args (common, then the row's options), Returns, Raises, cost,
  row function, Example."""
  title = spec.title or spec.name
  args = [_wrap(name, text) for name, text in COMMON_ARGS]
  for name, value in spec.defaults().items():
    if name not in _COMMON_DEFAULTS:
      args.append(_wrap(f"{name} (default {show_default(value)})", describe_option(spec, name)))
  row = (spec.fn.__doc__ or "").split(">>>")[0].strip()  # the row function's own doctest runs in its module
  fn = getattr(spec.fn, "fn", spec.fn)
  returns = (
    "The maps, float32 ``(B, H, W)`` (``(B, K, H, W)`` for ``(B, K)`` targets; the layer's ``(h, w)`` with "
    "``upsample=False``), in [0, 1] with ``normalize=True``."
  )
  raises = (
    "ValueError: bad shapes or values (class ids out of range when concrete, a tap this row cannot read); the "
    "message names the argument."
  )
  return (
    f"{title} maps of `x`: ``(B, H, W, C) -> (B, H, W)`` (``(B, K, H, W)`` for ``(B, K)`` targets).\n\n"
    + textwrap.fill(
      f"``jaxcam.explain({spec.name!r}, ...).maps``. Cost per image: {spec.cost()}. The row function, "
      f"``{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', fn)}``:",
      118,
    )
    + "\n\n"
    + textwrap.indent(inspect.cleandoc(row), "  ")
    + "\n\nArgs:\n"
    + "\n".join(args)
    + "\n\nReturns:\n"
    + textwrap.fill(returns, 118, initial_indent="  ", subsequent_indent="  ")
    + "\n\nRaises:\n  TypeError: an unknown option, or an option of the wrong type.\n"
    + _wrap(*raises.split(": ", 1))
    + "\n\nExample:\n"
    + textwrap.indent(example(spec), "  ")
  )


def public_function(spec: str | MethodSpec):
  """The public function of a row: `explain`'s arguments, returns the maps (``jaxcam.gradcam`` is this of the
  gradcam row).

  Args:
    spec: a `MethodSpec` row (registered or not, e.g. ``jaxcam.smooth("gradcam")``) or a method name.

  Raises:
    UnknownNameError: an unknown method name (the message lists the closest names).

  Returns:
    ``fn(tap, x, target=None, *, normalize=..., <the row's options>) -> maps``, with the row's name, a docstring
    listing its options and defaults, and a matching ``__signature__``.

  >>> import jaxcam
  >>> fn = jaxcam.public_function(jaxcam.get_method("xgradcam"))
  >>> fn.__name__, fn.__signature__.parameters["eps"].default
  ('xgradcam', 1e-07)
  """
  spec = get_method(spec)

  def method_fn(tap, x, /, target=None, **kwargs):
    from jaxcam.api import explain

    return explain(spec, tap, x, target=target, **kwargs).maps

  method_fn.__name__ = method_fn.__qualname__ = spec.name
  method_fn.__module__ = "jaxcam"
  method_fn.__signature__ = method_signature(spec)  # type: ignore[attr-defined]
  method_fn.__doc__ = method_docstring(spec)
  return method_fn


def public_functions() -> dict[str, Any]:
  """One public function per registered method, generated from the table (``jaxcam.gradcam``, ...).

  Returns:
    ``{name: function}`` for every row of ``jaxcam.METHODS``.

  >>> import jaxcam
  >>> fns = jaxcam.public_functions()
  >>> fns["gradcam"].__name__, "scorecam" in fns
  ('gradcam', True)
  """
  return {name: public_function(spec) for name, spec in METHODS.items()}
