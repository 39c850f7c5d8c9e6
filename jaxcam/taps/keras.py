"""Taps on Keras 3 models (JAX backend): the model runs through ``model.stateless_call`` with its variables as the
tap's leaves; the tapped layer's ``call`` is replaced on the layer instance for the duration of one trace and restored
afterwards (the same for functional and subclassed models).

Keras reads its backend when it is first imported: set ``KERAS_BACKEND=jax`` (``os.environ["KERAS_BACKEND"] =
"jax"``) before ``import keras``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam._errors import LayerNotFoundError, abbreviate, unknown_name_message
from jaxcam.taps.base import (
  _WHERE,
  LayerInfo,
  Tap,
  _check_input_layout,
  _check_output_selector,
  _Run,
  suggest_layout,
  tap_dataclass,
)
from jaxcam.taps.paths import _parse_layers, format_path, parse_path

# keras.applications families by the model name Keras gives them (longest prefix first): the module whose
# `preprocess_input` maps pixels in [0, 255] to what the model takes
_FAMILIES = (
  ("resnet50v2", "resnet_v2"),
  ("resnet101v2", "resnet_v2"),
  ("resnet152v2", "resnet_v2"),
  ("resnet", "resnet"),
  ("vgg16", "vgg16"),
  ("vgg19", "vgg19"),
  ("xception", "xception"),
  ("inception_resnet_v2", "inception_resnet_v2"),
  ("inception_v3", "inception_v3"),
  ("mobilenetv2_", "mobilenet_v2"),
  ("mobilenet_", "mobilenet"),
  ("mobilenetv3", "mobilenet_v3"),
  ("densenet", "densenet"),
  ("nasnet", "nasnet"),
  ("efficientnetv2", "efficientnet_v2"),
  ("efficientnet", "efficientnet"),
  ("convnext", "convnext"),
)


def is_keras_model(obj: Any) -> bool:
  """Whether `obj` is a Keras 3 layer or model (checked without importing keras)."""
  return hasattr(obj, "stateless_call") and any(c.__module__.startswith("keras.") for c in type(obj).__mro__)


def _check_model(model: Any) -> None:
  if not is_keras_model(model):
    raise TypeError(f"Expected `model` to be a keras.Model (Keras 3, JAX backend), got {type(model).__name__}.")
  import keras

  if keras.backend.backend() != "jax":
    raise ValueError(
      f"Keras runs on the {keras.backend.backend()!r} backend; jaxcam needs its JAX backend. Set the environment "
      'variable KERAS_BACKEND=jax (os.environ["KERAS_BACKEND"] = "jax") before keras is first imported.'
    )
  if not model.built:
    raise ValueError(f"{type(model).__name__} is not built: call it once on an example batch (or build it) first.")


def _children(node: Any) -> list:
  """The layers directly inside `node` (a model's, as ``model.summary()`` lists them); none for a plain layer."""
  return list(getattr(node, "layers", None) or []) if hasattr(node, "stateless_call") else []


def _walk(model: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
  """``(path, layer)`` for every layer, nested models' layers under their model's name ("block/conv")."""
  for layer in _children(model):
    path = prefix + (layer.name,)
    yield path, layer
    yield from _walk(layer, path)


def _layer_at(model: Any, path: tuple[str, ...]) -> Any:
  found = dict(_walk(model))
  if path not in found:
    names = [format_path(p) for p in found]
    raise LayerNotFoundError(
      unknown_name_message("layer", format_path(path), names, f"a layer of {type(model).__name__} {model.name!r}")
    )
  return found[path]


@contextlib.contextmanager
def _calls_replaced(layers: list[tuple[Any, Callable[[Callable], Callable]]]):
  """Replace each layer's ``call`` by ``wrap(original_call)`` on the instance; restore on exit (even on errors)."""
  saved = []
  try:
    for layer, wrap in layers:
      own = layer.__dict__.get("call")
      saved.append((layer, own))
      object.__setattr__(layer, "call", wrap(layer.call))  # bypass Keras' attribute tracking
    yield
  finally:
    for layer, own in reversed(saved):
      if own is None:
        object.__delattr__(layer, "call")
      else:
        object.__setattr__(layer, "call", own)


def _softmax_layer(model: Any) -> Any:
  """The model's output layer if it ends in a softmax (keras.applications' ``classifier_activation``), else None."""
  import keras

  last = _children(model)[-1:]
  return last[0] if last and getattr(last[0], "activation", None) is keras.activations.softmax else None


@contextlib.contextmanager
def _without_softmax(model: Any):
  """The output layer's softmax replaced by the identity during the trace (the model then outputs logits)."""
  layer = None if model is None else _softmax_layer(model)
  if layer is None:
    yield
    return
  import keras

  object.__setattr__(layer, "activation", keras.activations.linear)
  try:
    yield
  finally:
    object.__setattr__(layer, "activation", keras.activations.softmax)


@tap_dataclass("variables")
@dataclasses.dataclass(frozen=True, eq=False)
class KerasTap(Tap):
  """A tap on a Keras 3 model; see `keras_tap`. A pytree: ``variables = (trainable, non_trainable)`` are its leaves.

  Args:
    model, variables, layers, ...: as `keras_tap` builds them (build it with `keras_tap`).

  Examples:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import keras, jaxcam
    >>> model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1, name="conv")])
    >>> isinstance(jaxcam.keras_tap(model, "conv"), jaxcam.KerasTap)
    True
  """

  model: Any
  variables: Any
  layers: tuple[tuple[str, ...], ...]
  multi: bool
  where: str = "output"
  preprocess: Callable | None = None
  training: bool = False
  logits: bool = False
  layout: Any = None
  output: Any = None
  input_layout: str = "NHWC"

  def __repr__(self) -> str:
    return f"KerasTap({self.model.name!r}, layer={self.layer!r}, where={self.where!r})"

  def _call(self, x):
    trainable, non_trainable = self.variables
    if self.preprocess is not None:
      x = self.preprocess(x)
    kwargs = {"training": False} if self.training else {}
    with jax.numpy_rank_promotion("allow"), _without_softmax(self.model if self.logits else None):
      out, _ = self.model.stateless_call(list(trainable), list(non_trainable), x, **kwargs)  # Keras broadcasts (C,)
    return out

  def _plain(self, x):
    return self._call(x)

  def _run(self, x, run: _Run):
    def wrap(i):
      return lambda call: lambda *args, **kwargs: self._substitute(i, run, call, args, kwargs)

    with _calls_replaced([(_layer_at(self.model, p), wrap(i)) for i, p in enumerate(self.layers)]):
      out = self._call(x)
    missing = self._missing(run)
    if missing:
      raise ValueError(
        f"Layer {format_path(self.layers[missing[0]])!r} exists but did not run in the forward pass of "
        f"{self.model.name!r} (an InputLayer never runs: tap the first layer with where='input')."
      )
    return out, tuple(run.record[i] for i in range(len(self.layers)))

  def dense(self, path: Any = None) -> tuple[jax.Array, jax.Array | None]:
    """The Dense layer at `path`; default the model's ``fc_layer`` attribute, else its last layer if it is a Dense."""
    if path is None and getattr(self.model, "fc_layer", None) is None:
      last = _children(self.model)[-1:]
      if last and hasattr(last[0], "kernel") and type(last[0]).__name__ == "Dense":
        path = last[0].name
    layer = _layer_at(self.model, parse_path(self._dense_path(path, self.model), argname="fc"))
    kernel = self._value(layer.kernel)
    bias = getattr(layer, "bias", None)
    return kernel, None if bias is None else self._value(bias)

  def _value(self, variable) -> jax.Array:
    """The tap's array for one of the model's variables."""
    for ours, theirs in zip(self.variables, (self.model.trainable_variables, self.model.non_trainable_variables)):
      for k, v in enumerate(theirs):
        if v is variable:
          return jnp.asarray(ours[k])
    raise ValueError(f"Variable {variable.path!r} is not one of {self.model.name!r}'s variables.")


def keras_tap(
  model: Any,
  layer: Any = None,
  *,
  where: str = "output",
  preprocess: Callable | None = None,
  logits: bool = False,
  layout: Any = None,
  output: Any = None,
  input_layout: str = "NHWC",
) -> KerasTap:
  """A tap on a Keras 3 model (functional, sequential or subclassed) on the JAX backend.

  The tap holds a snapshot of the model's variables, taken now: ``(trainable, non_trainable)`` lists of arrays, its
  pytree leaves (after training the model, build a new tap, or ``dataclasses.replace(tap, variables=...)``). Each
  call runs ``model.stateless_call`` in inference mode (``training=False`` where the model's ``call`` takes it):
  no global state changes, and `jax.jit`, `jax.vmap` and `jax.grad` work through it.

  Args:
    model: a built ``keras.Model`` (set ``KERAS_BACKEND=jax`` before importing keras).
    layer: a layer name as ``model.summary()`` prints it ("conv5_block3_out"); a nested model's layers as
      "model_name/layer_name"; a list of names for several layers; None for the model's ``default_layer``
      attribute.
    where: "output" or "input" (the layer's first positional argument).
    preprocess: a function applied to `x` before the model (inside the trace; static, define it once).
    logits: drop the softmax of the model's output layer (``keras.applications`` models end in one unless built
      with ``classifier_activation=None``), so that targets read logits; the tap's output is then the logits, not
      ``model(x)``. Models that do not end in a softmax are unchanged.
    layout, output, input_layout: as for `linen_tap`.

  Returns:
    A `KerasTap` (a pytree: the model's variables are its leaves).

  Raises:
    TypeError: not a Keras 3 model, or Keras not on the JAX backend. LayerNotFoundError: an unknown layer name
      (the closest names listed).

  Examples:
    >>> import os; _ = os.environ.setdefault("KERAS_BACKEND", "jax")
    >>> import jax.numpy as jnp, keras, jaxcam
    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, name="conv"),
    ...                           keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    >>> jaxcam.gradcam(jaxcam.keras_tap(model, "conv"), jnp.ones((1, 8, 8, 3))).shape
    (1, 8, 8)
  """
  _check_model(model)
  if where not in _WHERE:
    raise ValueError(f"Expected `where` to be one of {_WHERE}, got {where!r}.")
  if layer is None:
    layer = getattr(model, "default_layer", None)
    if layer is None:
      names = [format_path(p) for p, _ in _walk(model)]
      raise ValueError(
        f"`layer` is None and {model.name!r} declares no `default_layer`. Pass `layer=` (a name as "
        f"model.summary() prints it): {abbreviate(names)}."
      )
  layers, multi = _parse_layers(layer)
  for p in layers:
    _layer_at(model, p)
  variables = (
    [jnp.asarray(v.value) for v in model.trainable_variables],
    [jnp.asarray(v.value) for v in model.non_trainable_variables],
  )
  training = "training" in inspect.signature(model.call).parameters
  return KerasTap(
    model, variables, layers, multi, where, preprocess, training, logits, layout, _check_output_selector(output),
    _check_input_layout(input_layout),
  )  # fmt: skip


def list_keras_layers(model: Any, x: Any, *, preprocess: Callable | None = None) -> list[LayerInfo]:
  """Every layer that runs (nested models' layers too), in call order, with its output shape; one abstract trace."""
  _check_model(model)
  found: dict[str, list] = {}

  def wrap(name, layer):
    def outer(call):
      def recorder(*args, **kwargs):
        entry = found.setdefault(name, [None, type(layer).__name__, 0])
        y = call(*args, **kwargs)
        entry[0] = entry[0] or (tuple(y.shape) if hasattr(y, "shape") else None)
        entry[2] += 1
        return y

      return recorder

    return outer

  variables = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
  training = "training" in inspect.signature(model.call).parameters
  probe = KerasTap(model, variables, (), False, preprocess=preprocess, training=training)
  with _calls_replaced([(layer, wrap(format_path(p), layer)) for p, layer in _walk(model)]):
    jax.eval_shape(lambda tap, x: tap._plain(x), probe, x)
  return [LayerInfo(p, s, t, suggest_layout(s), n) for p, (s, t, n) in found.items()]


# ------------------------------------------------------------------------------------------------ explain_model


def keras_family(model: Any) -> str | None:
  """The ``keras.applications`` module a model comes from, read from the name Keras gives it ("resnet50" ->
  "resnet"), or None for other models."""
  name = str(getattr(model, "name", "")).lower()
  return next((module for prefix, module in _FAMILIES if name.startswith(prefix)), None)


@functools.cache
def keras_preprocessing(family: str) -> Callable:
  """``x -> keras.applications.<family>.preprocess_input(255 * x)``: pixels in [0, 1] to what the family's models
  take. Cached, so one family gives one function object (a static field: nothing recompiles)."""
  module = importlib.import_module(f"keras.applications.{family}")

  def preprocess(x):
    return module.preprocess_input(x * 255.0)

  preprocess.__qualname__ = f"keras.applications.{family}.preprocess_input(255 * x)"
  return preprocess


@functools.cache
def mean_std_preprocessing(mean: tuple, std: tuple) -> Callable:
  """``x -> (x - mean) / std`` per channel (channels-last). Cached: one (mean, std), one function object."""

  def preprocess(x):
    return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)

  return preprocess


def keras_explain_parts(model: Any, input_norm: tuple[tuple, tuple] | None) -> dict[str, Any]:
  """What `jaxcam.explain_model` needs of a Keras model (the fields of `jaxcam.autoexplain.Model`): taps and layer
  listing on pixels in [0, 1], mapped to the model's input by its ``keras.applications`` family's
  ``preprocess_input`` (on ``255 * x``) or, for other models, by ``input_norm=(mean, std)`` if given, else passed
  as they are (a model of your own is assumed to take pixels in [0, 1]). Targets read logits: an output softmax is
  dropped (`keras_tap`'s ``logits=True``)."""
  _check_model(model)
  family = keras_family(model)
  if family is not None and input_norm is not None:
    raise ValueError(
      f"{model.name!r} is a keras.applications {family} model: its own preprocess_input is applied; drop `input_norm`."
    )
  preprocess = keras_preprocessing(family) if family else mean_std_preprocessing(*input_norm) if input_norm else None
  shape = getattr(model, "input_shape", None)
  size = None
  if isinstance(shape, tuple) and len(shape) == 4 and all(isinstance(d, int) for d in shape[1:3]):
    size = (int(shape[1]), int(shape[2]))
  parts: dict[str, Any] = {
    "name": model.name,
    "make_tap": lambda layer, layout: keras_tap(model, layer, layout=layout, preprocess=preprocess, logits=True),
    "list_layers": lambda x: list_keras_layers(model, x, preprocess=preprocess),
    "input_size": size,
  }
  outputs = getattr(model, "output_shape", None)
  if family is not None and isinstance(outputs, tuple) and outputs[-1:] == (1000,):
    from jaxcam import models

    parts["class_name"], parts["class_id"] = models.class_name, models.imagenet_class
  return parts
