"""Taps: one layer's activations of any Flax model, and a point to perturb them, without hooks.

A tap is a pytree whose leaves are the model's arrays (variables or nnx state) and whose static part is the
model structure and the layer path. It is a pure function of the input::

    out, A = tap(x)                  # A: the chosen layer's output, (B, h, w, C); out: the model's output
    out, A = tap(x, delta)           # the layer's output becomes A + delta downstream
    out = tap.head(x, A2)            # the network with the layer's output replaced by A2
    out = tap.forward(x)             # the plain forward pass: nothing recorded, nothing perturbed

The gradient of a score of `logits` with respect to a zero `delta` is exactly dS/dA, computed by the same
forward and backward pass that yields A. Because taps are pytrees they pass through `jax.jit`, `jax.vmap` and
`jax.grad` as ordinary arguments: new weights with the same structure never trigger a recompile.

Layer paths have one syntax everywhere: a "/"-separated string ("layer4/1/conv2") or a tuple of names and
ints (("blocks", 6)). Linen names list entries `blocks_6`; "blocks/6" matches it too. A *list* of paths asks
for several layers at once: A and delta are then tuples with one array per layer, all from one forward pass.

The model's output may be any pytree (logits, a dict, a dataclass); class-id targets check that it is
``(B, classes)`` logits, callable targets pick their score from whatever it is. A `layout` reshapes the layer's
value into the ``(B, h, w, C)`` grid that methods see and back (identity by default; token sequences later).

The package, one concern a module: `paths` (the path syntax), `base` (the `Tap` protocol and the one place that
reads, replaces and perturbs a layer's value), `linen`, `nnx`, `function`, `keras` (one backend each) and
`discovery` (`list_layers` and `find_layer`).
"""

from __future__ import annotations

from jaxcam._errors import LayerNotFoundError
from jaxcam.taps.base import IdentityLayout, LayerInfo, Tap, spatial_dims, suggest_layout
from jaxcam.taps.discovery import find_layer, list_layers
from jaxcam.taps.function import FunctionTap, function_tap
from jaxcam.taps.keras import KerasTap, keras_tap
from jaxcam.taps.linen import LinenTap, captured_calls, linen_tap
from jaxcam.taps.nnx import NnxTap, nnx_tap
from jaxcam.taps.paths import format_path, linen_aliases, parse_path

__all__ = [
  "Tap",
  "IdentityLayout",
  "LinenTap",
  "NnxTap",
  "FunctionTap",
  "KerasTap",
  "LayerInfo",
  "LayerNotFoundError",
  "captured_calls",
  "linen_tap",
  "nnx_tap",
  "function_tap",
  "keras_tap",
  "list_layers",
  "find_layer",
  "suggest_layout",
  "spatial_dims",
  "format_path",
  "parse_path",
  "linen_aliases",
]
