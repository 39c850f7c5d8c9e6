"""`jaxcam layers`: a model's layer paths with output shapes: a shipped model (no weights needed) or
``--model package.module:attribute``."""

from __future__ import annotations

from jaxcam.cli._common import CliError, import_model, is_imported


def cmd_layers(args) -> int:
  import jax
  import jax.numpy as jnp

  import jaxcam
  from jaxcam import models

  if args.size < 1:
    raise CliError(f"--size must be at least 1, got {args.size} (the input size of an imported model, in pixels)")
  if is_imported(args.model):
    m = import_model(args.model, None)
    if m.list_layers is None:
      raise CliError(f"--model {args.model}: {m.name} cannot list its layers (a tap: its layer is {m.default_layer!r})")
    h, w = m.input_size or (args.size, args.size)
    try:
      infos = m.list_layers(jnp.zeros((1, h, w, 3), jnp.float32))
    except (KeyError, ValueError, TypeError) as e:
      raise CliError(f"--model {args.model}: {e}") from None
    for info in infos:
      print(info)
    print(f"input size: {h} x {w}" + ("" if m.input_size else " (--size; the model declares none)"))
    return 0
  if args.model not in models.MODELS:
    from jaxcam._errors import unknown_name_message

    raise CliError(
      unknown_name_message("--model", args.model, list(models.MODELS), "a shipped model")
      + " (or package.module:attribute naming your own)"
    )
  module = models.get_module(args.model)
  size = models.input_size(args.model)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)  # shapes only: no weights needed
  for info in jaxcam.list_layers(module, variables, x):
    print(info)
  print(f"default layer: {getattr(module, 'default_layer', None)}; fc layer: {getattr(module, 'fc_layer', None)}")
  return 0
