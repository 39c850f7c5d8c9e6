"""`jaxcam layers`: a shipped model's layer paths with shapes (no weights needed)."""

from __future__ import annotations

from jaxcam.cli._common import (
  CliError,
)


def cmd_layers(args) -> int:
  import jax.numpy as jnp

  import jaxcam
  from jaxcam import models

  if args.model not in models.MODELS:
    from jaxcam._errors import unknown_name_message

    raise CliError(unknown_name_message("--model", args.model, list(models.MODELS), "a shipped model"))
  import jax

  module = models.get_module(args.model)
  size = models.input_size(args.model)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)  # shapes only: no weights needed
  for info in jaxcam.list_layers(module, variables, x):
    print(info)
  print(f"default layer: {getattr(module, 'default_layer', None)}; fc layer: {getattr(module, 'fc_layer', None)}")
  return 0
