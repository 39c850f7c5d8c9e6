"""Shared helpers of the benchmark scripts: timing and reporting."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time

import jax


def time_once(fn) -> float:
  """Seconds of one call of `fn`, its results blocked on."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def time_calls(fn, repeats: int) -> tuple[float, float, float, float]:
  """(first call s, median s, min s, max s) of `fn` (results blocked on), `repeats` calls after the first."""
  first = time_once(fn)
  runs = [time_once(fn) for _ in range(repeats)]
  return first, statistics.median(runs), min(runs), max(runs)


def report(rows: list[dict], table: str, json_path: str | None, csv_path: str | None) -> None:
  """Print the device line and the table; write the rows as JSON and/or CSV."""
  dev = jax.devices()[0]
  print(
    f"device: {dev.device_kind} ({dev.platform}), jax {jax.__version__}, {platform.machine()}, {os.cpu_count()} cpus"
  )
  print(table)
  if json_path:
    with open(json_path, "w") as f:
      json.dump({"device": dev.device_kind, "jax": jax.__version__, "rows": rows}, f, indent=2)
  if csv_path:
    with open(csv_path, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]))
      w.writeheader()
      w.writerows(rows)
