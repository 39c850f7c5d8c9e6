"""Progress bars for long compiled runs: ticks sent from inside the program, bars drawn on the host.

A chunked map given a label (``chunked_map(..., progress="gradcam")``) puts one host callback per chunk into the
program it traces (``jax.debug.callback``), and each callback advances a tqdm bar on the host. The label is static
and travels explicitly (`jaxcam.core.Forward.progress`, the `progress` of an inputs hook's ``plain``), so a program
either always reports or never does: turning it on for eager calls never recompiles anything else, and a user's
own `jax.jit` gets no callbacks unless they ask for ``progress=True``. A map of fewer than two chunks reports
nothing.

Bars are keyed by the traced map they count (a *phase*), opened at its first tick and closed when its last
chunk is done; `leave=False` keeps the terminal clean under the CLI's per-image bar.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["tick", "bar"]

_PHASES = itertools.count()
_BARS: dict[int, Any] = {}
_LOCK = threading.Lock()


CHUNK_BAR_DELAY = 1.0
"""Seconds a chunked map must have run before its bar shows: a map done sooner shows none (no bar left at 0%)."""


def bar(total: int, desc: str, *, unit: str = "it", leave: bool = True, delay: float = 0.0):
  """A tqdm bar on stderr (disabled for fewer than two steps; shown only after `delay` seconds)."""
  from tqdm import tqdm

  return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, disable=total < 2, delay=delay)


def _advance(phase: int, total: int, desc: str, n: int, *_: Any) -> None:
  try:
    _update(phase, total, desc, n)
  except Exception:  # a progress bar must never fail the computation it reports on
    pass


def _update(phase: int, total: int, desc: str, n: int) -> None:
  with _LOCK:
    b = _BARS.get(phase)
    if b is None or b.n >= b.total:  # first chunk of this run of the phase (or a run that failed halfway)
      if b is not None:
        b.close()
      b = _BARS[phase] = bar(total, desc, unit="copy", leave=False, delay=CHUNK_BAR_DELAY)
    b.update(n)
    if b.n >= total:
      b.close()
      del _BARS[phase]


def tick(total: int, chunk: int, label: str | None) -> Any:
  """A per-chunk reporter for a traced map of `total` elements in chunks of `chunk` under `label`, or None when no
  report is wanted (no label, or fewer than two chunks). Call the result on each chunk's output
  (``report(out, size)``): the callback depends on it, so it fires when that chunk is computed."""
  if label is None or total <= chunk:
    return None
  phase = next(_PHASES)

  def report(out: Any, size: int) -> None:
    leaves = [v for v in jax.tree_util.tree_leaves(out) if hasattr(v, "dtype")]
    dep = jnp.ravel(leaves[0])[:1] if leaves else jnp.zeros((1,))
    jax.debug.callback(functools.partial(_advance, phase, total, label, size), dep)

  return report
