"""`jaxcam explain`: files or folders through `jaxcam.stream` (shards, resume, overlays); `--model package.module:attr`
for your own model; `jaxcam merge-manifests` for runs split across processes."""

from __future__ import annotations

import os
import sys

import numpy as np

from jaxcam import _progress
from jaxcam.cli._common import (
  EXIT_PARTIAL,
  CliError,
  _check_out,
  _init_distributed,
  _load_model,
  _resolve_target,
  collect_images,
  import_model,
  imported_tap,
  is_imported,
  method_options,
)


def cmd_explain(args) -> int:
  import jaxcam

  try:
    spec = jaxcam.get_method(args.method)
  except (KeyError, ValueError, TypeError) as e:
    raise CliError(str(e).strip("'\"")) from None
  if args.batch_size is not None and args.batch_size < 1:
    raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")
  if args.shard_size < 0:
    raise CliError(f"--shard-size must be positive (0: one shard), got {args.shard_size}")
  if args.size < 1:
    raise CliError(f"--size must be at least 1, got {args.size} (the input size of an imported model, in pixels)")
  if args.devices < 0:
    raise CliError(f"--devices must be at least 1 (0: every local device), got {args.devices}")
  if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
    _init_distributed(args)
  args.options = method_options(spec, args.option, args.seed)
  try:
    jaxcam.api.check_eigen_smooth(spec, args.eigen_smooth)
  except ValueError as e:
    raise CliError(str(e).replace("`eigen_smooth=False`", "no --eigen-smooth")) from None
  _check_out(args.out)
  files = collect_images(args.inputs)
  if args.batch_size is None:
    args.batch_size = _default_batch_size(len(files), args)
  from jaxcam import models

  if is_imported(args.model):  # module:attribute of a model object (or a function returning one): auto-detection
    tap, size, class_name, target = _imported_model(args, files)
  else:
    target = _resolve_target(args.target)
    module, variables = _load_model(args.model, args.weights)
    size, class_name = models.input_size(args.model), models.class_name
    try:
      tap = jaxcam.linen_tap(module, variables, args.layer)  # the default layer: what auto-detection chooses
    except (KeyError, ValueError, TypeError) as e:
      raise CliError(str(e)) from None
  _check_options_trace(spec, tap, size, target, args)
  os.makedirs(args.out, exist_ok=True)
  shard = args.shard_size or -(-len(files) // args.batch_size) * args.batch_size  # default: one shard, overlays
  return _explain_stream(args, spec, files, target, tap, shard, args.overlays or not args.shard_size, size, class_name)


def _default_batch_size(n_files: int, args) -> int:
  """8 (rounded up to the device count), or fewer when one shard holds every image (no --shard-size): a few images
  run as one batch of their own size (rounded up to the device count), not padded to 8."""
  import jax

  n_dev = args.devices or len(jax.local_devices())
  full = -(-8 // n_dev) * n_dev  # 8 rounded up to the devices
  return full if args.shard_size else min(full, -(-n_files // n_dev) * n_dev)


def _check_options_trace(spec, tap, size: int, target, args) -> None:
  """--option values that pass the option table but not the method (a string where a number goes, a value out of
  its choices): found by tracing the method once on an abstract batch (`jax.eval_shape`: nothing is compiled or
  run), before anything is written."""
  if not args.option:
    return
  import jax
  import jax.numpy as jnp

  import jaxcam

  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)

  def trace(x):
    ex = jaxcam.explain(
      spec, tap, x, target, progress=False, eigen_smooth=args.eigen_smooth, aug_smooth=args.aug_smooth, **args.options
    )
    return ex.maps

  try:
    jax.eval_shape(trace, x)
  except (TypeError, ValueError, KeyError) as e:
    raise CliError(f"--option: {str(e).strip(chr(39) + chr(34))}".splitlines()[0]) from None


def _imported_model(args, files: list[str]):
  """(tap, input size, class_name, target) for ``--model package.module:attribute`` (`import_model`); the layer is
  --layer or found by `jaxcam.find_layer` on the first image."""
  import jax.numpy as jnp

  from jaxcam import autoexplain, models, stream

  m = import_model(args.model, args.weights)
  size = m.input_size[0] if m.input_size else args.size
  target: object = None
  try:
    if args.target is not None:
      target = int(args.target) if args.target.strip().isdigit() else autoexplain._resolve_target(args.target, m, 1)
  except (KeyError, ValueError, TypeError) as e:
    raise CliError(str(e)) from None
  x = None
  if args.layer is None and m.default_layer is None:
    x = jnp.asarray(models.resize_uint8(stream.decode_image(files[0]), size).astype(np.float32)[None] / 255.0)
  return imported_tap(m, x, args.layer, target), size, m.class_name, target


def _explain_stream(args, spec, files, target, tap, shard_size, overlays, size, class_name) -> int:
  """Shards + manifest, resumable, unreadable images skipped and listed (see `jaxcam.stream`)."""
  import jax

  from jaxcam import stream
  from jaxcam.batch import local_mesh

  if shard_size % args.batch_size:
    raise CliError(f"--shard-size must be a multiple of --batch-size ({args.batch_size}), got {shard_size}")
  devices = jax.local_devices()
  if args.devices:
    if not 1 <= args.devices <= len(devices):
      raise CliError(f"--devices must be in [1, {len(devices)}] (local devices), got {args.devices}")
    devices = devices[: args.devices]
  if args.batch_size % len(devices):
    raise CliError(f"--batch-size ({args.batch_size}) must be a multiple of the device count ({len(devices)})")
  files = sorted(os.path.abspath(f) for f in files)
  root = os.path.commonpath(files) if len(files) > 1 else os.path.dirname(files[0])
  if os.path.isfile(root):
    root = os.path.dirname(root)
  bar = _progress.bar(len(files), "explaining", unit="img")
  try:
    manifest = stream.explain_files(
      files,
      args.out,
      method=spec,
      tap=tap,
      model=args.model,
      root=root,
      shard_size=shard_size,
      batch_size=args.batch_size,
      input_size=size,
      target=target,
      float16=args.float16,
      mesh=local_mesh(devices),
      overlays=overlays,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      progress=bar.update,
      class_name=class_name,
      chunk_progress=spec.expensive(args.options),
      options=args.options,
      overwrite=args.overwrite,
      eigen_smooth=args.eigen_smooth,
      aug_smooth=args.aug_smooth,
    )
  except (ValueError, TypeError) as e:  # what the method refuses (an option, a layer) names itself
    raise CliError(str(e)) from None
  finally:
    bar.close()
  skipped = manifest.get("skipped", [])
  for rel in skipped:
    print(f"jaxcam: skipped unreadable image {rel!r}: {manifest['entries'][rel]['skipped']}", file=sys.stderr)
  mine = len(manifest.get("entries", {})) if jax.process_count() > 1 else len(files)  # this process's inputs
  if skipped and len(skipped) == mine:
    first = skipped[0]
    raise CliError(f"cannot read image {first!r}: {manifest['entries'][first]['skipped']} (no image was readable)")
  print(
    f"explained {mine - len(skipped)} image(s), skipped {len(skipped)} unreadable, with {spec.name} at "
    f"layer {tap.layer!r}; wrote {args.out}/manifest.json, {args.out}/shards/"
    + (f" and {args.out}/overlays/" if overlays else "")
  )
  return EXIT_PARTIAL if skipped else 0


def cmd_merge(args) -> int:
  from jaxcam import stream

  try:
    merged = stream.merge_manifests(args.out)
  except (FileNotFoundError, ValueError) as e:
    raise CliError(str(e)) from None
  print(f"merged {merged['shards']} shard manifests into {args.out}/manifest.json")
  return 0
