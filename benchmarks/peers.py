"""jaxcam against pytorch-grad-cam and torchcam: interleaved timing, peak memory, map agreement.

    benchmarks/peers-env.sh /tmp/jaxcam-peers      # once: torch, torchvision, grad-cam, torchcam, timm
    PEERS_PYTHON=/tmp/jaxcam-peers/bin/python python benchmarks/peers.py \
        [--models resnet50 efficientnet_lite0] [--batches 1 16] [--methods gradcam gradcam_pp] [--rounds 10] \
        [--json out.json]

Issue 12's rows: guided backpropagation (pgc: one image per call), KPCA-CAM, DFF (no map comparison), and
jaxcam-only smoothing (8 noisy copies; compare with the plain row), e.g.:
    ... peers.py --models resnet18 --batches 16 --methods guided kpcacam dff gradcam smooth8_gradcam --rounds 3

Gradient-free methods (issue 11), e.g.:
    ... peers.py --models efficientnet_lite0 --batches 1 --methods scorecam_floor scorecam fasterscorecam --rounds 3
    ... peers.py --models resnet50 --batches 1 --methods ablationcam --rounds 2
    ... peers.py --models efficientnet_lite0 --batches 16 --methods scorecam --rounds 0   # peak memory, one call

For each model x batch x method, fresh worker processes (one per library: jaxcam here, pytorch-grad-cam and
torchcam in the peers' environment) build the same network with the same weights and images, then take
alternating requests (jaxcam, pgc, torchcam, jaxcam, ...) for `--rounds` rounds so machine drift cancels. Reported
per library: median seconds per image (min-max), first call, peak memory (max RSS minus RSS after building);
per pair, the median of the per-round ratios with their min-max; and the largest difference between the peers'
maps and jaxcam's where the formulas agree (pgc at input resolution; torchcam at layer resolution).
Without PEERS_PYTHON the peers are skipped and only jaxcam is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TORCHCAM_METHODS = {"gradcam", "gradcam_pp", "layercam", "xgradcam", "scorecam"}
TORCHCAM_AGREES = {"gradcam", "layercam", "xgradcam", "scorecam"}  # torchcam's Grad-CAM++ never applies alpha
JAXCAM_ONLY = {
  "fasterscorecam",
  "scorecam_floor",
  "smooth8_gradcam",
  "smooth8_gradcam_pp",
  "gradcam_layer3",
}  # top_n=64 Score-CAM;
# Score-CAM's masked forwards alone; jaxcam.smooth(method, num_samples=8) (compare with the plain method's row)
# metrics (issue 13): the peers' results themselves are compared (noise off for ROAD), e.g.
#   ... peers.py --models efficientnet_lite0 --batches 8 --methods road_morf --rounds 3 --chunk 16
#   ... peers.py --models efficientnet_lite0 --batches 16 --methods deletion_insertion --rounds 3 --chunk 32
# ViT-S/16 (issue 14; timm layout, seeded weights, benchmarks/_vit.py), tokens of the last block's norm1:
#   ... peers.py --models vit_s16 --batches 16 --methods gradcam --rounds 3
METRIC_ROWS = {"road_morf": ["pgc"], "deletion_insertion": ["torchcam"]}
NO_MAP_COMPARISON = {"dff"}  # same NMF problem, different solver and random start: factors are not comparable


class Worker:
  def __init__(self, python: str, lib: str):
    self.lib = lib
    self.proc = subprocess.Popen(
      [python, os.path.join(HERE, "_worker.py"), lib],
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      text=True,
      env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )

  def ask(self, **req):
    self.proc.stdin.write(json.dumps(req) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{self.lib} worker died (request {req})")
    return json.loads(line)

  def close(self):
    try:
      self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass
    self.proc.wait(timeout=60)


def one_config(model, batch, method, rounds, peers_python, gap=0.0, warm=False, chunk=32):
  """`rounds` interleaved timed calls after each library's first call; with rounds=0 the first call is the only
  one (time and peak memory of a single, cold explanation: for runs too long to repeat)."""
  libs = ["jaxcam"]
  if peers_python and method == "forward":
    libs += ["torch", "torch_cl"]
  elif peers_python and method in METRIC_ROWS:
    libs += METRIC_ROWS[method]
  elif peers_python and method not in JAXCAM_ONLY:
    libs.append("pgc")
    if method in TORCHCAM_METHODS and model != "vit_s16":  # torchcam has no reshape_transform
      libs.append("torchcam")
  workers = {lib: Worker(sys.executable if lib == "jaxcam" else peers_python, lib) for lib in libs}
  try:
    setup = {}
    for lib, w in workers.items():
      setup[lib] = w.ask(cmd="setup", model=model, batch=batch, method=method, chunk=chunk)
      print(f"  {lib} {model} b{batch} {method}: first call {setup[lib]['first_call_s']:.1f} s", file=sys.stderr)
    times = {lib: [] if rounds else [setup[lib]["first_call_s"]] for lib in libs}
    for _ in range(rounds):
      for lib in libs:  # interleaved: A B C A B C ...
        time.sleep(gap)  # let the previous worker's threads go idle before the next one starts
        if warm:  # one untimed call first: each library's turn starts with its memory and code paged back in
          workers[lib].ask(cmd="run")
        times[lib].append(workers[lib].ask(cmd="run")["s"])
    mem = {lib: w.ask(cmd="mem")["peak_extra_mb"] for lib, w in workers.items()}
    diffs = {}
    with tempfile.TemporaryDirectory() as tmp:
      ours = os.path.join(tmp, "jaxcam.npy")
      workers["jaxcam"].ask(cmd="maps", path=ours)  # maps at input resolution; logits for "forward"
      compared = [] if method in NO_MAP_COMPARISON else [lib for lib in libs if lib == "pgc"]
      compared = libs[1:] if method in METRIC_ROWS else compared
      for lib in libs[1:] if method == "forward" else compared:
        p = os.path.join(tmp, f"{lib}.npy")
        workers[lib].ask(cmd="maps", path=p)
        diffs[lib] = float(np.abs(np.load(ours) - np.load(p)).max())
      if "torchcam" in workers and method in TORCHCAM_AGREES:
        ours_l = os.path.join(tmp, "jaxcam_layer.npy")
        workers["jaxcam"].ask(cmd="maps", path=ours_l, layer_res=True)
        p = os.path.join(tmp, "torchcam.npy")
        workers["torchcam"].ask(cmd="maps", path=p)
        diffs["torchcam"] = float(np.abs(np.load(ours_l) - np.load(p)).max())
  finally:
    for w in workers.values():
      w.close()
  row = {"model": model, "batch": batch, "method": method, "rounds": rounds, "chunk": chunk, "libs": {}}
  for lib in libs:
    t = times[lib]
    row["libs"][lib] = {
      "median_s_per_image": statistics.median(t) / batch,
      "min_s": min(t),
      "max_s": max(t),
      "first_call_s": setup[lib]["first_call_s"],
      "peak_extra_mb": mem[lib],
    }
  for peer in libs[1:]:
    ratios = [a / b for a, b in zip(times["jaxcam"], times[peer])]  # < 1: jaxcam faster
    row[f"time_ratio_vs_{peer}"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    row[f"memory_ratio_vs_{peer}"] = mem["jaxcam"] / max(mem[peer], 1e-9)
  row["max_map_diff"] = diffs
  return row


def floor_table(rows):
  out = [
    "| model | batch | JAX forward s/img | torch NCHW s/img | torch channels-last s/img | JAX/torch NCHW (min-max) | "
    "JAX/torch channels-last (min-max) | max logit diff |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lib = r["libs"]
    s = lambda k: f"{lib[k]['median_s_per_image']:.4f}" if k in lib else "-"
    ratio = lambda k: f"{r[k]['median']:.2f} ({r[k]['min']:.2f}-{r[k]['max']:.2f})" if k in r else "-"
    diff = max(r["max_map_diff"].values(), default=float("nan"))
    out.append(
      f"| {r['model']} | {r['batch']} | {s('jaxcam')} | {s('torch')} | {s('torch_cl')} | "
      f"{ratio('time_ratio_vs_torch')} | {ratio('time_ratio_vs_torch_cl')} | {diff:.1e} |"
    )
  return "\n".join(out)


def table(rows):
  out = [
    "| model | batch | method | jaxcam s/img | pgc s/img | torchcam s/img | jaxcam/pgc time (min-max) | "
    "jaxcam/torchcam time (min-max) | extra MB jaxcam / pgc / torchcam | first call s (jaxcam) | "
    "max map diff pgc / tc |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lib = r["libs"]
    s = lambda k: f"{lib[k]['median_s_per_image']:.4f}" if k in lib else "-"
    ratio = lambda k: f"{r[k]['median']:.2f} ({r[k]['min']:.2f}-{r[k]['max']:.2f})" if k in r else "-"
    mem = " / ".join(f"{lib[k]['peak_extra_mb']:.0f}" if k in lib else "-" for k in ("jaxcam", "pgc", "torchcam"))
    diff = " / ".join(f"{r['max_map_diff'][k]:.1e}" if k in r["max_map_diff"] else "-" for k in ("pgc", "torchcam"))
    out.append(
      f"| {r['model']} | {r['batch']} | {r['method']} | {s('jaxcam')} | {s('pgc')} | {s('torchcam')} | "
      f"{ratio('time_ratio_vs_pgc')} | {ratio('time_ratio_vs_torchcam')} | {mem} | "
      f"{lib['jaxcam']['first_call_s']:.2f} | {diff} |"
    )
  return "\n".join(out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
  p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
  p.add_argument("--methods", nargs="*", default=["gradcam", "gradcam_pp", "layercam", "xgradcam", "hirescam"])
  p.add_argument(
    "--floors",
    action="store_true",
    help="also time the forward pass alone: JAX vs torch NCHW and channels-last (the floor-vs-floor ratio)",
  )
  p.add_argument("--rounds", type=int, default=10, help="timed rounds (0: the first call only, cold)")
  p.add_argument("--chunk", type=int, default=32, help="copies at a time for gradient-free methods (every library)")
  p.add_argument("--gap", type=float, default=0.0, help="seconds of idle time before each timed request")
  p.add_argument("--warm", action="store_true", help="an untimed call before each timed one (steady-state turns)")
  p.add_argument("--json")
  args = p.parse_args(argv)
  peers_python = os.environ.get("PEERS_PYTHON")
  if not peers_python:
    print("PEERS_PYTHON is not set: measuring jaxcam alone (see benchmarks/peers-env.sh)", file=sys.stderr)
  rows, floors = [], []
  for model in args.models:
    for batch in args.batches:
      if args.floors:
        floors.append(one_config(model, batch, "forward", args.rounds, peers_python, args.gap, args.warm))
        print(floor_table(floors[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
      for method in args.methods:
        rows.append(one_config(model, batch, method, args.rounds, peers_python, args.gap, args.warm, args.chunk))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
  print(
    f"CPU: {os.cpu_count()} cores; rounds: {args.rounds}; chunk: {args.chunk}; ratios < 1 mean jaxcam is faster / "
    "smaller"
  )
  if floors:
    print(floor_table(floors))
  if rows:
    print(table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"floors": floors, "methods": rows}, f, indent=2)


if __name__ == "__main__":
  main()
