"""Seconds of a fresh process: the first map with jaxcam's caches off, cold and warm (jaxcam.compile_cache).

    python benchmarks/cache.py [--rounds 2] [--skip-demo] [--json out.json] [--csv out.csv]

Each row runs a new Python process (so every import and compilation is paid again), timed from outside:
`import jaxcam` alone; `jaxcam explain` on two bundled photos (EfficientNet-Lite0, Grad-CAM); `jaxcam demo`;
`explain_model` on two photos (the process's whole time and its first call). Each command runs with
``JAXCAM_CACHE_DIR=off``, then with an empty cache folder (cold: it compiles and stores), then again with that folder
(warm: a second fresh process). The target (issue 29): warm <= half of off. `--rounds` repeats the off / warm pair
and reports the median.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPLAIN_MODEL = (
  "import time; t = time.perf_counter(); import jaxcam, jax; from jaxcam import models; "
  "photos = list(models.sample_images(['chelsea', 'coffee']).values()); t1 = time.perf_counter(); "
  "ex = jaxcam.explain_model('efficientnet_lite0', photos); jax.block_until_ready(ex.maps); "
  "print('first_call', time.perf_counter() - t1)"
)


def _photos(folder: str) -> list[str]:
  from PIL import Image

  from jaxcam import models

  paths = []
  for name, arr in models.sample_images(["chelsea", "coffee"]).items():
    path = os.path.join(folder, f"{name}.png")
    Image.fromarray(arr).save(path)
    paths.append(path)
  return paths


def _run(cmd: list[str], cache: str) -> tuple[float, dict[str, float]]:
  """Wall seconds of `cmd` in a fresh process with ``JAXCAM_CACHE_DIR=cache``, and any ``name seconds`` lines it
  printed (explain_model's first call)."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAXCAM_CACHE_DIR", "JAXCAM_TEST_CACHE")}
  env["JAXCAM_CACHE_DIR"] = cache
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  t0 = time.perf_counter()
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
  wall = time.perf_counter() - t0
  if out.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
  extra = {}
  for line in out.stdout.splitlines():
    parts = line.split()
    if len(parts) == 2 and parts[0] == "first_call":
      extra["first_call"] = float(parts[1])
  return wall, extra


def run(rounds: int, skip_demo: bool) -> list[dict]:
  work = tempfile.mkdtemp(prefix="jaxcam-cache-bench-")
  try:
    photos = _photos(work)
    py = sys.executable
    commands = {
      "import jaxcam": [py, "-c", "import jaxcam"],
      "jaxcam explain (2 photos)": [py, "-m", "jaxcam.cli", "explain", *photos, "--out", os.path.join(work, "out")],
      "explain_model (2 photos)": [py, "-c", EXPLAIN_MODEL],
    }
    if not skip_demo:
      commands["jaxcam demo"] = [py, "-m", "jaxcam.cli", "demo", "--out", os.path.join(work, "demo")]
    rows = []
    for what, cmd in commands.items():
      cache = os.path.join(work, "cache-" + str(len(rows)))
      cold, cold_extra = _run(cmd, cache)
      offs, warms, first_off, first_warm = [], [], [], []
      for _ in range(rounds):
        for folder in ("out", "demo"):
          shutil.rmtree(os.path.join(work, folder), ignore_errors=True)  # a fresh run, not a resumed one
        t, e = _run(cmd, "off")
        offs.append(t)
        first_off += [e["first_call"]] if e else []
        shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
        shutil.rmtree(os.path.join(work, "demo"), ignore_errors=True)
        t, e = _run(cmd, cache)
        warms.append(t)
        first_warm += [e["first_call"]] if e else []
      off, warm = statistics.median(offs), statistics.median(warms)
      rows.append(
        {
          "what": what,
          "cache off s": round(off, 2),
          "cold cache s": round(cold, 2),
          "warm cache s": round(warm, 2),
          "warm / off": round(warm / off, 2),
          "first call off / warm s": (
            f"{statistics.median(first_off):.2f} / {statistics.median(first_warm):.2f}" if first_off else "-"
          ),
          "cold first call s": round(cold_extra["first_call"], 2) if cold_extra else None,
        }
      )
      print(f"  {what}: off {off:.2f} s, cold {cold:.2f} s, warm {warm:.2f} s", file=sys.stderr)
    return rows
  finally:
    shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--skip-demo", action="store_true", help="leave out `jaxcam demo` (the longest row)")
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  rows = run(args.rounds, args.skip_demo)
  head = "| what | cache off s | cold cache s | warm cache s | warm / off | first call off / warm s |"
  lines = [head, "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
      f"| {r['what']} | {r['cache off s']} | {r['cold cache s']} | {r['warm cache s']} | {r['warm / off']} | "
      f"{r['first call off / warm s']} |"
    )
  report(rows, "\n".join(lines), args.json, args.csv)
  return 0


if __name__ == "__main__":
  sys.exit(main())
