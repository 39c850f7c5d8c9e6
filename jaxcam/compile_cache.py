"""jaxcam's on-disk caches for its front doors: a fresh process neither compiles nor traces what one before it did.

The CLI and `jaxcam.explain_model` call `enable()` before their first compilation. Everything lives in one folder,
the user's cache directory (``$XDG_CACHE_HOME/jaxcam``, default ``~/.cache/jaxcam``); ``JAXCAM_CACHE_DIR=<path>``
moves it and ``JAXCAM_CACHE_DIR=off`` turns every part off:

- ``xla/``: JAX's persistent compilation cache (XLA executables). Every program is cached, however quickly it
  compiled (most of jaxcam's compile in under JAX's default threshold of 1 s). A JAX cache directory you configured
  yourself (``jax.config.update("jax_compilation_cache_dir", ...)``) is left as it is and used instead.
- ``programs/``: traced and lowered explain programs (`jax.export`), so a fresh process skips tracing the model and
  lowering the program to StableHLO too (the part of a first call XLA's cache cannot save). Only programs jaxcam can
  name completely are stored: a shipped model (a module class defined in jaxcam) under a linen tap, a built-in
  method row, plain option values, on one device; the name includes a digest of jaxcam's own source, the versions
  of jax, jaxlib and flax, the device and the JAX settings that change tracing, and every input's shape and dtype.
  Anything else (your own model, a custom row, a callable option, a progress bar) is traced as usual.
- ``shapes/``: the variable shapes of a shipped model, which converting its packaged weights checks against (found
  otherwise by tracing the model's ``init``).

Two processes may share the folder: every entry is written to a temporary file and renamed into place.

A process that has already compiled something before `enable()` may not use the XLA cache for the rest of its life:
JAX decides once per process whether it caches. The CLI enables it first thing; in your own programs call
``jaxcam.compile_cache.enable()`` (or set JAX's options) before your first `jax.jit` call.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["OFF", "STATS", "cached_call", "cached_json", "default_dir", "enable", "root"]

OFF = ("off", "0", "false", "no", "none")
"""Values of ``JAXCAM_CACHE_DIR`` that turn the cache off."""

STATS: collections.Counter = collections.Counter()
"""This process's program cache events: ``stored`` (traced, exported and written), ``loaded`` (read from disk),
``reused`` (already loaded in this process), ``failed`` (could not be exported or read: traced as usual)."""

_ROOT: list[str] = []  # the folder `enable` chose in this process (empty: the caches are off)
_LOCK = threading.Lock()
_PROGRAMS: dict[str, Callable] = {}  # key -> the loaded program's jitted call
_UNEXPORTABLE: set[str] = set()


def default_dir() -> str:
  """``$XDG_CACHE_HOME/jaxcam`` (``~/.cache/jaxcam`` when XDG_CACHE_HOME is unset).

  Returns:
    The folder `enable` uses when ``JAXCAM_CACHE_DIR`` is unset.

  Examples:
    >>> import os
    >>> from jaxcam import compile_cache
    >>> os.path.basename(compile_cache.default_dir())
    'jaxcam'
  """
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxcam")


def enable() -> str | None:
  """Turn jaxcam's caches on for this process (see the module docstring).

  Returns:
    The cache folder in use (its ``xla/`` holds JAX's compiled programs unless you set JAX's cache folder
    yourself), or None when the caches are off: ``JAXCAM_CACHE_DIR=off``, or the folder cannot be created (a
    warning says so).

  Examples:
    >>> import os
    >>> from jaxcam import compile_cache
    >>> os.environ["JAXCAM_CACHE_DIR"] = "off"
    >>> compile_cache.enable() is None
    True
    >>> del os.environ["JAXCAM_CACHE_DIR"]
  """
  import jax

  setting = os.environ.get("JAXCAM_CACHE_DIR")
  if setting is not None and setting.strip().lower() in OFF:
    _ROOT.clear()
    return None
  path = os.path.abspath(os.path.expanduser(setting.strip())) if setting else default_dir()
  try:
    for sub in ("xla", "programs", "shapes"):
      os.makedirs(os.path.join(path, sub), exist_ok=True)
  except OSError as e:
    warnings.warn(
      f"jaxcam's compilation cache is off: cannot create {path!r} ({e.strerror}). Set JAXCAM_CACHE_DIR to a "
      "writable folder, or JAXCAM_CACHE_DIR=off to silence this.",
      stacklevel=2,
    )
    _ROOT.clear()
    return None
  if not jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]  # the user's (or the tests') own wins
    jax.config.update("jax_compilation_cache_dir", os.path.join(path, "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  _ROOT[:] = [path]
  return path


def root() -> str | None:
  """The cache folder `enable` turned on in this process, or None (never enabled, or off).

  Returns:
    A path, or None.

  Examples:
    >>> import os
    >>> from jaxcam import compile_cache
    >>> os.environ["JAXCAM_CACHE_DIR"] = "off"
    >>> compile_cache.enable(), compile_cache.root()
    (None, None)
    >>> del os.environ["JAXCAM_CACHE_DIR"]
  """
  return _ROOT[0] if _ROOT else None


# ------------------------------------------------------------------------------------------------ keys


def plain(value: Any) -> bool:
  """Whether `value` is plain data that names itself completely in its repr: None, bools, numbers, strings, jaxcam's
  classes, and tuples / lists / dicts / jaxcam dataclasses of them (no arrays, no callables, no user classes)."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return True
  if isinstance(value, type):  # a class of jaxcam's (a ResNet's block): its repr is its qualified name
    return _ours(value)
  if isinstance(value, (tuple, list)):
    return all(plain(v) for v in value)
  if isinstance(value, dict):
    return all(isinstance(k, str) and plain(v) for k, v in value.items())
  if dataclasses.is_dataclass(value) and not isinstance(value, type) and _ours(type(value)):
    return all(plain(getattr(value, f.name)) for f in dataclasses.fields(value))
  return False


def plain_static(value: Any) -> bool:
  """Whether `value` is None, an array, or a jaxcam dataclass whose fields other than arrays are `plain` (a
  `jaxcam.targets` class score: its ids are leaves, its kind is static)."""
  if value is None or hasattr(value, "dtype"):
    return True
  if not (dataclasses.is_dataclass(value) and not isinstance(value, type) and _ours(type(value))):
    return False
  return all(plain_static(v) or plain(v) for v in (getattr(value, f.name) for f in dataclasses.fields(value)))


def _ours(cls: type) -> bool:
  return cls.__module__ == "jaxcam" or cls.__module__.startswith("jaxcam.")


def canonical(value: Any) -> Any:
  """JSON data that names `plain` `value` completely (classes by module and qualified name, dataclasses by class and
  every field): what keys are made of, where a repr could leave something out."""
  if isinstance(value, type):
    return f"{value.__module__}.{value.__qualname__}"
  if isinstance(value, (tuple, list)):
    return [type(value).__name__, [canonical(v) for v in value]]
  if isinstance(value, dict):
    return {k: canonical(v) for k, v in sorted(value.items())}
  if dataclasses.is_dataclass(value):
    return [canonical(type(value)), {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}]
  return value


def module_key(module: Any) -> Any:
  """A shipped linen module's key: its class and every configuration field (not ``parent`` / ``name``)."""
  fields = {n: canonical(getattr(module, n)) for n in module.__dataclass_fields__ if n not in ("parent", "name")}
  return [canonical(type(module)), fields]


def shipped_module(module: Any) -> bool:
  """Whether `module` is a linen module of a class defined in jaxcam whose fields are plain (its code is covered by
  jaxcam's source digest, its configuration by its fields)."""
  fields = getattr(module, "__dataclass_fields__", None)
  if fields is None or not _ours(type(module)):
    return False
  return all(plain(getattr(module, n)) for n in fields if n not in ("parent", "name"))


_DIGEST: list[str] = []


def source_digest() -> str:
  """sha256 of jaxcam's own source files (every ``.py`` of the package), computed once per process: a cached
  program or shape table is never read by a jaxcam whose code differs from the one that wrote it."""
  if not _DIGEST:
    pkg = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(pkg):
      dirnames.sort()
      for name in sorted(filenames):
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          h.update(os.path.relpath(path, pkg).encode())
          with open(path, "rb") as f:
            h.update(f.read())
    _DIGEST.append(h.hexdigest())
  return _DIGEST[0]


def _environment() -> list[Any]:
  """What besides the program's own description changes what tracing and lowering produce."""
  import flax
  import jax
  import jaxlib

  from jaxcam import __version__

  dev = jax.devices()[0]
  settings = [
    "jax_enable_x64",
    "jax_default_matmul_precision",
    "jax_numpy_dtype_promotion",
    "jax_numpy_rank_promotion",
    "jax_default_prng_impl",
    "jax_threefry_partitionable",
    "jax_softmax_custom_jvp",
    "jax_use_shardy_partitioner",
  ]
  config = [repr(getattr(jax.config, s, None)) for s in settings]
  return [source_digest(), __version__, jax.__version__, jaxlib.__version__, flax.__version__, dev.platform,
          dev.device_kind, jax.device_count(), config]  # fmt: skip


_BYPASS = ("jax_disable_jit", "jax_debug_nans", "jax_debug_infs", "jax_default_device")  # set: trace as usual


def _on_default_device(leaves: list) -> bool:
  """Whether JAX runs as it does by default (nothing of `_BYPASS` set) and every array lives on the default
  backend's devices: the program is exported and keyed for that platform."""
  import jax

  if any(getattr(jax.config, name, None) for name in _BYPASS):
    return False
  platform = jax.default_backend()
  for v in leaves:
    devices = getattr(v, "devices", None)
    if devices is not None and any(d.platform != platform for d in devices()):
      return False
  return True


def _aval(v: Any) -> list:
  import jax

  a = jax.typeof(v)  # Python scalars too (weakly typed)
  return [list(a.shape), str(a.dtype), bool(getattr(a, "weak_type", False))]


def _digest(parts: Any) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:40]


def _write_atomic(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


# ------------------------------------------------------------------------------------------------ shapes


def cached_json(kind: str, key: Any, compute: Callable[[], Any]) -> Any:
  """``compute()`` (JSON data), kept under ``<root>/<kind>/`` by a digest of `key` and jaxcam's source when the
  caches are on; computed every time when they are off or `key` is None.

  Args:
    kind: the sub-folder ("shapes").
    key: plain data naming the value completely (None: do not cache).
    compute: a function of no arguments returning JSON-serializable data.

  Returns:
    What `compute` returned (read back from the cache: lists where it gave tuples).

  Examples:
    >>> from jaxcam import compile_cache
    >>> compile_cache.cached_json("shapes", None, lambda: {"fc": [1280, 1000]})  # None: computed, never stored
    {'fc': [1280, 1000]}
  """
  base = root()
  if base is None or key is None:
    return compute()
  path = os.path.join(base, kind, _digest([kind, key, _environment()]) + ".json")
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    pass
  value = compute()
  try:
    _write_atomic(path, json.dumps(value).encode())
  except OSError:
    pass  # a read-only cache still computes
  return value


# ------------------------------------------------------------------------------------------------ programs


def cached_call(jitted: Callable, args: tuple, kwargs: dict[str, Any], token: Any) -> Any:
  """``jitted(*args, **kwargs)``, through a program kept on disk when it can be (see the module docstring).

  The program is `jitted` with `kwargs` fixed, exported (`jax.export`) for the shapes, dtypes and structure of
  `args` and stored under ``<root>/programs/``; a later process with the same key deserializes it and calls it,
  which skips tracing and lowering (and compiling too, when JAX's cache has the executable). Falls back to calling
  `jitted` when the caches are off, `token` is None, an argument is being traced (under your `jit`, `vmap` or
  `grad`), there are several devices, or the program cannot be exported.

  Args:
    jitted: a `jax.jit` function.
    args: its positional arguments (pytrees of arrays; the structure's static parts are part of the key).
    kwargs: its static keyword arguments (plain data, described by `token`).
    token: plain data that, with `args`' structure, names the program completely; None: never cache.

  Returns:
    What `jitted` returns.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jaxcam import compile_cache
    >>> compile_cache.cached_call(jax.jit(lambda x, *, k: x + k), (jnp.ones(2),), {"k": 1}, None).tolist()
    [2.0, 2.0]
  """
  import jax

  base = root()
  if base is None or token is None or jax.device_count() != 1:
    return jitted(*args, **kwargs)
  from jaxcam._eager import under_trace

  leaves, in_tree = jax.tree_util.tree_flatten(args)
  if under_trace(leaves) or not _on_default_device(leaves):
    return jitted(*args, **kwargs)
  key = _digest(["program", token, str(in_tree), [_aval(v) for v in leaves], _environment()])
  if key in _UNEXPORTABLE:
    return jitted(*args, **kwargs)
  fn = _PROGRAMS.get(key)
  if fn is not None:
    STATS["reused"] += 1
  else:
    path = os.path.join(base, "programs", key + ".jaxexp")
    fn = _load(path) or _export(jitted, kwargs, in_tree, leaves, path)
  if fn is None:
    _UNEXPORTABLE.add(key)
    return jitted(*args, **kwargs)
  try:
    out = fn(*leaves)
  except Exception:  # a program that loads but cannot run here: never again in this process
    STATS["failed"] += 1
    with _LOCK:
      _PROGRAMS.pop(key, None)
      _UNEXPORTABLE.add(key)
    return jitted(*args, **kwargs)
  with _LOCK:
    _PROGRAMS[key] = fn
  return out


def _load(path: str) -> Callable | None:
  import jax

  _register_serializations()
  try:
    with open(path, "rb") as f:
      blob = f.read()
  except OSError:
    return None
  try:
    exported = jax.export.deserialize(bytearray(blob))
  except Exception:  # a truncated or foreign file: trace as usual, and overwrite it
    STATS["failed"] += 1
    return None
  STATS["loaded"] += 1
  return jax.jit(exported.call)


def _export(jitted: Callable, kwargs: dict[str, Any], in_tree, leaves: list, path: str) -> Callable | None:
  import jax

  _register_serializations()

  def flat(*flat_args):
    return jitted(*jax.tree_util.tree_unflatten(in_tree, flat_args), **kwargs)

  try:
    exported = jax.export.export(jax.jit(flat))(*leaves)
    blob = exported.serialize()
  except Exception:  # host callbacks, effects, unserializable outputs: not cacheable
    STATS["failed"] += 1
    return None
  try:
    _write_atomic(path, bytes(blob))
  except OSError:
    pass  # a read-only cache still runs the exported program
  STATS["stored"] += 1
  return jax.jit(exported.call)


_REGISTERED: list[bool] = []


def _register_serializations() -> None:
  """`Explanation` (the programs' output) in `jax.export`'s pytree serialization, once per process."""
  if _REGISTERED:
    return
  import jax

  from jaxcam.api import Explanation

  with _LOCK:
    if not _REGISTERED:
      jax.export.register_pytree_node_serialization(
        Explanation,
        serialized_name="jaxcam.Explanation",
        serialize_auxdata=lambda aux: json.dumps(_encode(aux)).encode(),
        deserialize_auxdata=lambda data: _decode(json.loads(bytes(data).decode())),
      )
      _REGISTERED.append(True)


def _encode(value: Any) -> Any:
  if isinstance(value, tuple):
    return {"t": [_encode(v) for v in value]}
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise TypeError(f"cannot store {type(value).__name__} in a cached program's output structure")


def _decode(value: Any) -> Any:
  if isinstance(value, dict):
    return tuple(_decode(v) for v in value["t"])
  return value
