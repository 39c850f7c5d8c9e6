"""Models as `explain_model` sees them (`as_model`): a shipped name, ``(linen_module, variables)``, an nnx module, a
Keras 3 model, a Hugging Face Flax model object or a tap, each adapted once into a `Model` (taps on any layer, the
layer listing, the plain forward pass, label look-ups).

How the model is called is part of the adaptation: ``model_method`` (the module method, or for linen a function
``(module, x) -> output``), ``model_kwargs`` (static keyword arguments, e.g. ``{"train": False}``) and the input's
``(mean, std)``. A linen or nnx ``__call__`` that declares a ``train`` / ``training`` flag is called with it False and
one that declares ``deterministic`` with it True, unless `model_kwargs` says otherwise; `Model.notes` says so.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from jaxcam import compile_cache, layouts, taps
from jaxcam._constants import IMAGENET_MEAN, IMAGENET_STD
from jaxcam._errors import UnknownNameError, closest, warn_user

__all__ = ["Model", "as_model", "inference_flags"]

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIPImageProcessor
# Hugging Face image processors' normalization by model type (the Flax models take normalized pixels)
HF_NORMALIZATION = {
  "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
  "beit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
  "clip_vision_model": (CLIP_MEAN, CLIP_STD),
  "clip": (CLIP_MEAN, CLIP_STD),
  "resnet": (IMAGENET_MEAN, IMAGENET_STD),
  "regnet": (IMAGENET_MEAN, IMAGENET_STD),
  "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
}

# Flags whose inference value `as_model` sets when a model's __call__ declares them (and the caller did not).
INFERENCE_FLAGS = {"train": False, "training": False, "is_training": False, "deterministic": True}


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as `explain_model` sees it.

  make_tap: ``(layer, layout) -> tap``. list_layers: ``x -> [LayerInfo]`` for channels-last `x` in [0, 1] (None:
  the layer must be given). forward: ``x -> output``, the plain forward pass (None: unknown until a tap runs).
  input_size: ``(H, W)`` the model takes, if known. class_name / class_id: label lookups, if the model has labels.
  default_layer: the layer to use when none is given (a tap's own layer; a shipped model's default layer), and
  default_reason why. output_struct: ``x -> jax.ShapeDtypeStruct`` of the output when it is known without tracing
  the model (None: `jax.eval_shape` of `forward`). notes: how the model is called, for people (flags set
  automatically).
  """

  name: str
  make_tap: Callable[[Any, Any], Any]
  list_layers: Callable[[Any], list] | None = None
  input_size: tuple[int, int] | None = None
  class_name: Callable[[int], str] | None = None
  class_id: Callable[[str], int] | None = None
  default_layer: Any = None
  forward: Callable[[Any], Any] | None = None
  notes: tuple[str, ...] = ()
  default_reason: str = "the tap's own layer"
  output_struct: Callable[[Any], Any] | None = None


@dataclasses.dataclass(frozen=True)
class _Call:
  """How a model is called: the input's (mean, std) per channel, the method (a name or a linen function
  ``(module, x) -> output``) and static keyword arguments. Hashable: one call, one function object."""

  norm: tuple | None = None
  method: Any = None
  kwargs: tuple[tuple[str, Any], ...] = ()

  def prepare(self, x):
    if self.norm is None:
      return x
    shape = (1,) * (x.ndim - 1) + (-1,)  # channels-last, whatever the rank
    mean, std = (jnp.asarray(v, x.dtype).reshape(shape) for v in self.norm)
    return (x - mean) / std

  def __call__(self, module, x):  # linen's ``apply(..., method=self)``: the module comes first
    fn = self.method
    if fn is None:
      return module(self.prepare(x), **dict(self.kwargs))
    if isinstance(fn, str):
      return getattr(module, fn)(self.prepare(x), **dict(self.kwargs))
    return fn(module, self.prepare(x), **dict(self.kwargs))


@functools.cache
def _linen_method(call: _Call) -> Callable | None:
  """``method=`` for linen's apply (None when the module's ``__call__`` is called as it is). Cached, so one call
  gives one function object (a static argument: nothing recompiles)."""
  if call == _Call():
    return None

  def method(module, x):
    return call(module, x)

  return method


def inference_flags(fn: Callable, given: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
  """The keyword arguments to call `fn` with: `given`, plus ``train=False`` / ``training=False`` /
  ``deterministic=True`` for such parameters `fn` declares and `given` leaves out; and a note for each added."""
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return dict(given), ()
  out, notes = dict(given), []
  for flag, value in INFERENCE_FLAGS.items():
    default = params[flag].default if flag in params else value
    if flag in params and flag not in out and (default is inspect.Parameter.empty or default != value):
      out[flag] = value
      notes.append(
        f"called with {flag}={value} (its __call__ declares `{flag}`; model_kwargs={{{flag!r}: ...}} to change)"
      )
  return out, tuple(notes)


def _check_input_norm(input_norm: Any, argname: str = "input_norm") -> tuple[tuple, tuple] | None:
  if input_norm is None:
    return None
  try:
    mean, std = input_norm
    mean, std = tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std))
  except (TypeError, ValueError):
    raise ValueError(
      f"Expected `{argname}` as (mean, std) per channel, e.g. ({IMAGENET_MEAN}, {IMAGENET_STD})."
    ) from None
  if any(s <= 0 for s in std):
    raise ValueError(f"Expected a positive std in `{argname}`, got {std}.")
  return mean, std


def _input_norm_from(input_norm: Any, normalize: Any) -> tuple[Any, str]:
  """`input_norm`, or the deprecated spelling ``normalize=(mean, std)`` (warned): the value and its argument name."""
  if normalize is None:
    return input_norm, "input_norm"
  if input_norm is not None:
    raise ValueError("Pass the input's (mean, std) once, as `input_norm=`; `normalize=` is its deprecated spelling.")
  warn_user(
    "normalize=(mean, std) is deprecated: pass input_norm=(mean, std). In jaxcam `normalize` is the map's min-max "
    "(explain_model(normalize=False) passes it to jaxcam.explain).",
    DeprecationWarning,
  )
  return normalize, "normalize"


def _check_call_args(model_method: Any, model_kwargs: Any) -> dict[str, Any]:
  if model_method is not None and not isinstance(model_method, str) and not callable(model_method):
    raise TypeError(
      f"Expected `model_method` to be the name of the module method to call (or, for linen, a function "
      f"(module, x) -> output), got {type(model_method).__name__}."
    )
  if model_kwargs is None:
    return {}
  if not isinstance(model_kwargs, dict) or not all(isinstance(k, str) for k in model_kwargs):
    raise TypeError(f"Expected `model_kwargs` to be a dict of keyword arguments, got {model_kwargs!r}.")
  return dict(model_kwargs)


def _imagenet_lookups():
  from jaxcam import models

  return models.class_name, models.imagenet_class


def _labels_lookups(id2label: dict) -> tuple[Callable[[int], str], Callable[[str], int]]:
  names = {int(k): str(v) for k, v in id2label.items()}
  lower = {v.lower(): k for k, v in names.items()}

  def name(i: int) -> str:
    return names.get(int(i), str(i))

  def cid(label: str) -> int:
    key = str(label).strip().lower()
    if key in lower:
      return lower[key]
    near = closest(key, list(lower), n=5)
    raise UnknownNameError(
      f"Expected `target` to be a class id or one of the model's labels, got {label!r}."
      + (" Closest: " + ", ".join(repr(names[lower[n]]) for n in near) + "." if near else "")
    )

  return name, cid


def _linen_call(module, norm, model_method, model_kwargs) -> tuple[_Call, tuple[str, ...]]:
  fn = model_method if callable(model_method) else getattr(type(module), model_method or "__call__", None)
  if fn is None:
    raise ValueError(f"Expected `model_method` to name a method of {type(module).__name__}, got {model_method!r}.")
  kwargs, notes = inference_flags(fn, model_kwargs)
  return _Call(norm, model_method, tuple(sorted(kwargs.items()))), notes


def _linen_model(module, variables, norm, name, model_method=None, model_kwargs=None, output=None, **tap_kw) -> Model:
  from jaxcam import models

  call, notes = _linen_call(module, norm, model_method, model_kwargs or {})
  method = _linen_method(call)
  size = getattr(module, "input_size", None)
  shipped = isinstance(module, (models.EfficientNetLite, models.ResNet, models.VGG))
  lookups = _imagenet_lookups() if shipped and getattr(module, "num_classes", None) == 1000 else (None, None)
  given = {"method": method} if method is not None else {}

  def forward(x):
    out = module.apply(variables, x, **given)
    return out if output is None else output(out) if callable(output) else layouts.select(out, output)

  # a shipped model (jaxcam's own class, not a subclass of yours) called as it is: its layer and output are known
  plain = type(module) in (models.EfficientNetLite, models.ResNet, models.VGG) and method is None and output is None

  def output_struct(x):  # (B, classes), read from jaxcam's cache when it is on (tracing costs a fresh process ~0.5 s)
    def trace():
      out = jax.eval_shape(forward, x)
      return [list(out.shape), str(out.dtype)]

    key = ["output", compile_cache.module_key(module), list(x.shape), str(x.dtype)]
    shape, dtype = compile_cache.cached_json("shapes", key, trace)
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))

  return Model(
    name=name,
    make_tap=lambda layer, layout: taps.linen_tap(
      module, variables, layer, layout=layout, method=method, output=output, **tap_kw
    ),
    list_layers=lambda x: taps.list_layers(module, variables, x, **given),
    input_size=(size, size) if isinstance(size, int) else None,
    class_name=lookups[0],
    class_id=lookups[1],
    forward=forward,
    notes=notes,
    default_layer=module.default_layer if plain else None,
    default_reason=f"{type(module).__name__}'s default layer (the one find_layer picks for it; layer= overrides)",
    output_struct=output_struct if plain else None,
  )


def _hf_model(obj, norm, model_method=None, model_kwargs=None, output=None, **tap_kw) -> Model:
  config = obj.config
  norm = norm or HF_NORMALIZATION.get(getattr(config, "model_type", ""))
  params = obj.params
  variables = dict(params) if "params" in params else {"params": params}  # BatchNorm models hold batch_stats too
  vision = getattr(config, "vision_config", None)  # CLIP-style models: the image size is the vision tower's
  size = getattr(config, "image_size", None) or getattr(vision, "image_size", None)
  if isinstance(size, int):
    size = (size, size)
  elif isinstance(size, (tuple, list)) and len(size) == 2:
    size = (int(size[0]), int(size[1]))
  else:
    size = None
  id2label = getattr(config, "id2label", None) or {}
  generic = all(str(v) == f"LABEL_{k}" for k, v in id2label.items())
  name_fn, id_fn = _labels_lookups(id2label) if id2label and not generic else (None, None)
  # the module takes NHWC (its wrapper transposes); a classifier's ModelOutput has its class scores in `.logits`
  classifier = "ForImageClassification" in type(obj).__name__
  default_output = "logits" if output is None and model_method is None and classifier else None
  m = _linen_model(
    obj.module, variables, norm, type(obj).__name__, model_method, model_kwargs,
    output if output is not None else default_output, **tap_kw,
  )  # fmt: skip
  return dataclasses.replace(m, input_size=size, class_name=name_fn, class_id=id_fn)


def _nnx_model(model, model_method, model_kwargs, output, **tap_kw) -> Model:
  from flax import nnx

  if callable(model_method) and not isinstance(model_method, str):
    raise TypeError("Expected `model_method` to be a method name for an nnx model (a function is for linen).")
  fn = getattr(model, model_method or "__call__", None)
  if fn is None:
    raise ValueError(f"Expected `model_method` to name a method of {type(model).__name__}, got {model_method!r}.")
  kwargs, notes = inference_flags(fn, model_kwargs or {})
  snapshot = nnx.clone(model)
  snapshot.eval()
  graphdef, state = nnx.split(snapshot)
  frozen = tuple(sorted(kwargs.items()))

  def forward(x):  # merged inside the trace: nnx transforms (nnx.scan) refuse modules from another trace level
    fresh = jax.tree.map(lambda a: a, state)  # variables rebuilt in this trace (as `jaxcam.taps.nnx._fresh`)
    out = getattr(nnx.merge(graphdef, fresh), model_method or "__call__")(x, **kwargs)
    return out if output is None else output(out) if callable(output) else layouts.select(out, output)

  def make_tap(layer, layout):
    tap = taps.nnx_tap(model, layer, layout=layout, method=model_method, output=output, **tap_kw)
    return dataclasses.replace(tap, call_kwargs=frozen) if frozen else tap

  return Model(
    name=type(model).__name__,
    make_tap=make_tap,
    list_layers=lambda x: taps.list_layers(model, x, **({"method": model_method} if model_method else {}), **kwargs),
    forward=forward,
    notes=notes,
  )


def _torch_object(model: Any) -> bool:
  return any(c.__module__.split(".")[0] == "torch" for c in type(model).__mro__)


def as_model(
  model: Any,
  *,
  input_norm: Any = None,
  normalize: Any = None,
  model_method: Any = None,
  model_kwargs: dict[str, Any] | None = None,
  output: Any = None,
  input_layout: str | None = None,
) -> Model:
  """Adapt `model` for `explain_model` (see its docstring for what `model` may be and the other arguments);
  ``input_norm=(mean, std)`` is applied inside linen and Hugging Face models (``normalize=`` is its deprecated
  spelling)."""
  import flax.linen as nn
  from flax import nnx

  from jaxcam import models

  input_norm, argname = _input_norm_from(input_norm, normalize)
  norm = _check_input_norm(input_norm, argname)
  kwargs = _check_call_args(model_method, model_kwargs)
  tap_kw = {"input_layout": input_layout} if input_layout is not None else {}
  if isinstance(model, Model):
    return model
  if isinstance(model, str):
    if model not in models.MODELS:
      raise UnknownNameError(
        f"Expected `model` to be a shipped model name, got {model!r}. Shipped: {', '.join(models.MODELS)}"
        + (f"; closest: {closest(model, list(models.MODELS), n=3)}" if closest(model, list(models.MODELS)) else "")
        + ". Or pass (linen_module, variables), an nnx module, a Hugging Face Flax model or a tap."
      )
    if not model.startswith("efficientnet_lite"):
      raise ValueError(
        f"{model} has no packaged weights: load a torchvision checkpoint you downloaded, "
        f"jaxcam.models.get_model({model!r}, weights=PATH), and pass the (module, variables) it returns."
      )
    module, variables = models.get_model(model, pretrained=True)
    return _linen_model(module, variables, norm, model, model_method, kwargs, output, **tap_kw)
  if isinstance(model, taps.Tap):
    if norm is not None or model_method is not None or kwargs:
      raise ValueError(
        "`input_norm`, `model_method` and `model_kwargs` cannot be added to a tap you built: build the tap with "
        "them (linen_tap(..., method=..., **apply_kwargs))."
      )
    tap = dataclasses.replace(cast(Any, model), output=output) if output is not None else model
    return Model(name=repr(model), make_tap=lambda layer, layout: tap, default_layer=model.layer, forward=tap.forward)
  if taps.keras.is_keras_model(model):
    if model_method is not None or kwargs or output is not None:
      raise ValueError("`model_method`, `model_kwargs` and `output` are for Flax models; build a keras_tap instead.")
    return Model(**taps.keras.keras_explain_parts(model, norm))
  if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nn.Module):
    return _linen_model(model[0], model[1], norm, type(model[0]).__name__, model_method, kwargs, output, **tap_kw)
  if isinstance(model, nnx.Module):
    if norm is not None:
      raise ValueError(f"`{argname}` is for linen and Hugging Face models; normalize inside the nnx model.")
    return _nnx_model(model, model_method, kwargs, output, **tap_kw)
  if all(hasattr(model, a) for a in ("module", "params", "config")):
    return _hf_model(model, norm, model_method, kwargs, output, **tap_kw)
  if _torch_object(model):
    raise TypeError(
      f"Expected a JAX model, got the PyTorch object {type(model).__name__}: jaxcam explains JAX models. Hugging "
      "Face Transformers 5 has no Flax models: install transformers>=4.49,<5 and load the Flax class (e.g. "
      "FlaxViTForImageClassification.from_pretrained(name)), or use a Keras 3 model on the JAX backend "
      "(keras.applications); see docs/huggingface.md."
    )
  raise TypeError(
    f"Expected `model` to be a shipped model name, (linen_module, variables), an nnx module, a Keras 3 model, a "
    f"Hugging Face Flax model or a jaxcam tap, got {type(model).__name__}. A plain function has no layers to tap: "
    "build jaxcam.function_tap(body_fn, head_fn, params) and pass it."
  )
