"""Batch explanation of a stream of images, sharded over the local devices, compiled once.

``for out in jaxcam.explain_batches("gradcam", tap, batches): ...`` takes any iterable of image batches (numpy or
jax arrays; ``(images, targets)`` tuples; ``{"images": ..., "targets": ...}`` dicts), re-batches the stream to one
fixed global batch size (a multiple of the device count), pads only the final global batch (dropping the padding
from the results), shards each global batch's leading axis over a mesh of `jax.local_devices()` with the tap's
parameters replicated, and yields one `jaxcam.Explanation` per *input* batch, in input order, with ``maps``
(b, H, W), ``logits`` (b, classes), ``target`` (b,) and ``scores`` (b,) as numpy arrays. Host-to-device transfer
of the next global batches runs in a background thread (`prefetch` of them) while the current one computes. JAX's
SPMD partitioner does the sharding: no collectives are needed, since every image is independent.

Several hosts: run one process per host; each builds its mesh over its own local devices and reads its own
shard of the inputs (``jax.process_index()`` / ``jax.process_count()`` after ``jax.distributed.initialize()``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcam import _checks, api, compile_cache, postprocess
from jaxcam import targets as targets_lib
from jaxcam.methods.table import METHODS, MethodSpec, get_method

__all__ = ["explain_batches", "local_mesh", "run_ahead"]

_AXIS = "batch"


def local_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "batch" over `devices` (default: all local devices of this process).

  Args:
    devices: the devices to shard image batches over; None: ``jax.local_devices()``.

  Returns:
    A `jax.sharding.Mesh` with one axis, "batch" (the one `explain_batches` shards over).

  Examples:
    >>> import jax, jaxcam
    >>> mesh = jaxcam.local_mesh()
    >>> mesh.axis_names, mesh.devices.size == len(jax.local_devices())
    (('batch',), True)
  """
  devices = list(jax.local_devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (_AXIS,))


def _method_spec(method: Any) -> MethodSpec:
  if isinstance(method, (str, MethodSpec)):
    return get_method(method)
  name = getattr(method, "__name__", None)
  if callable(method) and name in METHODS:
    return METHODS[name]
  raise TypeError(
    f"Expected `method` to be a method name ({', '.join(METHODS)}), a MethodSpec or one of jaxcam's public method "
    f"functions, got {method!r}."
  )


def _split_item(item: Any, index: int) -> tuple[np.ndarray, np.ndarray | None]:
  if isinstance(item, dict):
    if "images" not in item:
      raise ValueError(f"Expected batch {index} (a dict) to have an 'images' entry, got keys {sorted(item)}.")
    images, targets = item["images"], item.get("targets")
  elif isinstance(item, tuple):
    if len(item) != 2:
      raise ValueError(f"Expected batch {index} as (images, targets), got a tuple of {len(item)} items.")
    images, targets = item
  else:
    images, targets = item, None
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"Expected batch {index} of images (b, H, W, C), got shape {images.shape}.")
  if targets is not None:
    targets = np.asarray(targets)
    if targets.shape != (images.shape[0],) or not np.issubdtype(targets.dtype, np.integer):
      raise ValueError(
        f"Expected the targets of batch {index} as ({images.shape[0]},) ints, got {targets.dtype} {targets.shape}."
      )
  return images, targets


def _global_batches(items: Iterable[Any], size: int, state: dict) -> Iterator[tuple[np.ndarray, Any, int]]:
  """Yield (images (size, ...), targets or None, n_valid); records input-batch lengths in `state`."""
  buf_x: list[np.ndarray] = []
  buf_t: list[Any] = []
  have = 0
  shape = None
  for index, item in enumerate(items):
    images, targets = _split_item(item, index)
    with_targets = targets is not None
    if state.setdefault("with_targets", with_targets) != with_targets:
      raise ValueError(
        f"Batch {index} {'has' if with_targets else 'lacks'} targets unlike the first batch: give targets for "
        "every batch or for none (None explains each image's top class)."
      )
    if shape is None:
      shape = images.shape[1:]
    elif images.shape[1:] != shape:
      raise ValueError(f"Expected every batch's images of shape (b,) + {shape}, got {images.shape} in batch {index}.")
    state["lengths"].append(images.shape[0])
    buf_x.append(images)
    if with_targets:
      buf_t.append(targets)
    have += images.shape[0]
    while have >= size:
      x = np.concatenate(buf_x)
      t = np.concatenate(buf_t) if with_targets else None
      yield x[:size], (None if t is None else t[:size]), size
      buf_x, have = [x[size:]], have - size
      buf_t = [t[size:]] if t is not None else []
  if have:
    x = np.concatenate(buf_x)
    t = np.concatenate(buf_t) if state.get("with_targets") else None
    pad = size - have  # pad only the final global batch, repeating its last image
    x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    if t is not None:
      t = np.concatenate([t, np.repeat(t[-1:], pad, axis=0)])
    yield x, t, have


def run_ahead(it: Iterator, depth: int) -> Iterator:
  """Consume `it` in a background thread, at most `depth` items ahead; exceptions re-raise in the consumer.

  Args:
    it: any iterator (decoding images, transferring batches to the device: work that overlaps the consumer's).
    depth: how many items the thread may hold ready (at least 1).

  Returns:
    An iterator of `it`'s items, in order.

  Raises:
    Exception: whatever `it` raises, re-raised when the consumer reaches that point.

  Examples:
    >>> from jaxcam.batch import run_ahead
    >>> list(run_ahead(iter(range(5)), depth=2))
    [0, 1, 2, 3, 4]
  """
  q: queue.Queue = queue.Queue(maxsize=max(1, depth))
  done = object()

  def worker():
    try:
      for item in it:
        q.put(item)
      q.put(done)
    except BaseException as e:  # re-raised in the consumer
      q.put(e)

  threading.Thread(target=worker, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item


def explain_batches(
  method: Any,
  tap,
  batches: Iterable[Any],
  *,
  mesh: Mesh | None = None,
  batch_size: int | None = None,
  prefetch: int = 2,
  normalize: bool = True,
  upsample: bool = True,
  relu: bool = True,
  fusion: str = "mean",
  progress: bool = False,
  eigen_smooth: bool = False,
  aug_smooth: Any = False,
  **options,
) -> Iterator[api.Explanation]:
  """Explain a stream of image batches; yields one `jaxcam.Explanation` per input batch, in order, its arrays on
  the host (numpy): maps, logits, target (the class ids explained: given or each image's top class) and scores.
  Item access ``out["maps"]``, ``out["logits"]``, ``out["targets"]`` (the dict form of earlier versions) works too.

  Args:
    method: a method name ("gradcam"), a `MethodSpec` (``jaxcam.smooth(...)`` too) or a public method function
      (``jaxcam.gradcam``).
    tap: a tap; its arrays are replicated over the mesh.
    batches: iterable of ``images``, ``(images, targets)`` or ``{"images", "targets"}`` (numpy or jax arrays;
      targets: (b,) class ids, for every batch or none).
    mesh: a 1-D mesh; default `local_mesh()` over all local devices.
    batch_size: the fixed global batch size, rounded up to a multiple of the device count; default: the first
      input batch's size, rounded up likewise. The whole stream compiles once.
    prefetch: global batches transferred ahead in a background thread.
    normalize, upsample, relu, fusion, eigen_smooth, aug_smooth, **options: as in `jaxcam.explain`.
    progress: a progress bar per chunked map inside each batch (for expensive methods; host callbacks).

  Returns:
    An iterator of `jaxcam.Explanation`, one per input batch (its own size: padding is dropped), numpy arrays.

  Raises:
    ValueError: a bad `batch_size` or `prefetch`, an empty first batch, or bad images/targets (as `explain`).
    TypeError: an unknown option.

  Examples:
    >>> import jax, numpy as np, flax.linen as nn, jaxcam
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     a = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu], name="features")(x)
    ...     return nn.Dense(3)(a.mean(axis=(1, 2)))
    >>> x = np.random.default_rng(0).uniform(size=(5, 8, 8, 3)).astype(np.float32)
    >>> tap = jaxcam.linen_tap(Net(), Net().init(jax.random.key(0), x), "features")
    >>> [ex.maps.shape for ex in jaxcam.explain_batches("gradcam", tap, [x[:3], x[3:]])]  # one compile
    [(3, 8, 8), (2, 8, 8)]
  """
  spec = _method_spec(method)
  post = postprocess.PostOptions.checked(normalize, upsample, relu, fusion)
  spec = api.check_eigen_smooth(spec, eigen_smooth)  # the flag is jaxcam.eigen_smooth(method)
  spec = api.check_aug_smooth(spec, aug_smooth)  # the flag is jaxcam.aug_smooth(method)
  _checks.check_positive_int("batch_size", batch_size, allow_none=True)
  _checks.check_positive_int("prefetch", prefetch)
  traced, static = api.partition_options(api.resolve_options(spec, options))
  mesh = local_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  data = NamedSharding(mesh, PartitionSpec(_AXIS))
  replicated = NamedSharding(mesh, PartitionSpec())
  tap = jax.device_put(tap, replicated)
  traced = jax.device_put(traced, replicated)
  items = iter(batches)
  try:
    first = next(items)
  except StopIteration:
    return
  first_len = _split_item(first, 0)[0].shape[0]
  size = int(first_len if batch_size is None else batch_size)
  if size < 1:
    raise ValueError(f"Expected a non-empty first batch (batch_size=None takes its size), got {first_len} images.")
  size = -(-size // n_dev) * n_dev

  def chain():
    yield first
    yield from items

  state: dict[str, Any] = {"lengths": collections.deque()}

  def put(batch):
    x, t, n_valid = batch
    x = jax.device_put(x, data)
    t = None if t is None else jax.device_put(t.astype(np.int32), data)
    return x, t, n_valid

  _checks.check_bool("progress", progress)
  token = api.program_token(tap, None, {"spec": spec, "static": static, "post": post, "progress": progress})
  run = functools.partial(_run, _jitted(spec, post, progress, static), tap, traced, token and ["batch", token])

  pending: dict[str, list[np.ndarray]] = {"maps": [], "logits": [], "target": [], "scores": []}
  have = 0

  def emit(template):
    nonlocal have
    while state["lengths"] and have >= state["lengths"][0]:
      n = state["lengths"].popleft()
      cat = {k: np.concatenate(v) for k, v in pending.items()}
      for k in pending:
        pending[k] = [cat[k][n:]]
      have -= n
      yield dataclasses.replace(template, **{k: v[:n] for k, v in cat.items()})

  in_flight = None
  for x, t, n_valid in run_ahead(map(put, _global_batches(chain(), size, state)), prefetch):
    ex = run(x, t)  # dispatched asynchronously: the previous result is fetched while this one runs
    if in_flight is not None:
      have += _fetch(*in_flight, pending)
      yield from emit(in_flight[0])
    in_flight = (ex, n_valid)
  if in_flight is not None:
    have += _fetch(*in_flight, pending)
    yield from emit(in_flight[0])


def _run(f, tap, traced, token, x, t):
  """``f(tap, x, t, traced)``, through a program kept on disk when `jaxcam.compile_cache` is on and can name it
  (`token`: computed once per stream; the targets `t`, None or int ids for every batch, never change it)."""
  return compile_cache.cached_call(f, (tap, x, t, traced), {}, token)


@functools.cache
def _jitted(spec, post, progress, static):
  """One jitted explain per method, post-processing flags and static options (its cache holds one executable per
  input shape)."""
  flags = dataclasses.asdict(post)
  return jax.jit(
    lambda tap, x, t, traced: api.explain(spec, tap, x, target=t, progress=progress, **flags, **dict(static), **traced)
  )


def _fetch(ex, n_valid: int, pending) -> int:
  logits = np.asarray(ex.logits)[:n_valid]
  targets = np.asarray(ex.target if ex.target is not None else jnp.argmax(ex.logits, -1))[:n_valid]
  targets_lib.check_ids_in_range(targets, logits.shape[-1])  # their maps are NaN: an error, as everywhere eager
  pending["maps"].append(np.asarray(ex.maps)[:n_valid])
  pending["logits"].append(logits)
  pending["target"].append(targets)
  pending["scores"].append(np.asarray(ex.scores)[:n_valid])
  return n_valid
