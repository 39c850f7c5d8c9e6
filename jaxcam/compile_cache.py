"""JAX's persistent compilation cache for jaxcam's front doors: a fresh process compiles nothing it compiled before.

The CLI and `jaxcam.explain_model` call `enable()` before their first compilation. Programs are kept in the user's
cache directory (``$XDG_CACHE_HOME/jaxcam/xla``, default ``~/.cache/jaxcam/xla``); ``JAXCAM_CACHE_DIR=<path>``
moves it and ``JAXCAM_CACHE_DIR=off`` turns it off. A cache directory you configured yourself
(``jax.config.update("jax_compilation_cache_dir", ...)``) is left as it is. Every program is cached, however
quickly it compiled (most of jaxcam's compile in under JAX's default threshold of 1 s). Two processes may share the
directory: JAX writes each entry to a temporary file and renames it into place.

A process that has already compiled something before `enable()` may not use the cache for the rest of its life:
JAX decides once per process whether it caches. The CLI enables it first thing; in your own programs call
``jaxcam.compile_cache.enable()`` (or set JAX's options) before your first `jax.jit` call.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["OFF", "default_dir", "enable"]

OFF = ("off", "0", "false", "no", "none")
"""Values of ``JAXCAM_CACHE_DIR`` that turn the cache off."""


def default_dir() -> str:
  """``$XDG_CACHE_HOME/jaxcam/xla`` (``~/.cache/jaxcam/xla`` when XDG_CACHE_HOME is unset)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "jaxcam", "xla")


def enable() -> str | None:
  """Turn JAX's persistent compilation cache on for this process (see the module docstring); returns the directory
  in use, or None when it is off (``JAXCAM_CACHE_DIR=off``, or the directory cannot be created: a warning then).

  >>> import os
  >>> os.environ["JAXCAM_CACHE_DIR"] = "off"
  >>> enable() is None
  True
  >>> del os.environ["JAXCAM_CACHE_DIR"]
  """
  import jax

  setting = os.environ.get("JAXCAM_CACHE_DIR")
  if setting is not None and setting.strip().lower() in OFF:
    return None
  current = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]
  if current:  # the user's (or the test suite's) own cache wins
    return current
  path = os.path.abspath(os.path.expanduser(setting.strip())) if setting else default_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    warnings.warn(
      f"jaxcam's compilation cache is off: cannot create {path!r} ({e.strerror}). Set JAXCAM_CACHE_DIR to a "
      "writable folder, or JAXCAM_CACHE_DIR=off to silence this.",
      stacklevel=2,
    )
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
