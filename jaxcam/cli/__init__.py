"""The `jaxcam` command: ``demo``, ``explain``, ``evaluate``, ``layers``, ``merge-manifests``, ``report``.

Outputs are deterministic (no timestamps), so reruns give byte-identical files. ``explain`` always runs through
`jaxcam.stream`: one shard with overlays by default, shards of ``--shard-size`` files for large runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from jaxcam._constants import IMAGE_EXTENSIONS
from jaxcam.cli._common import (
  DEMO_EXTRA,
  EXACT_ROW,
  EXIT_PARTIAL,
  CliError,
  collect_images,
  demo_methods,
  method_options,
)
from jaxcam.cli.demo import cmd_demo
from jaxcam.cli.evaluate import DEFAULT_EVAL_METRICS, EVAL_METRICS, cmd_evaluate, evaluation_table, load_regions
from jaxcam.cli.explain import cmd_explain, cmd_merge
from jaxcam.cli.layers import cmd_layers
from jaxcam.cli.report import cmd_report, report_after

__all__ = [
  "CliError",
  "DEMO_EXTRA",
  "EXACT_ROW",
  "EXIT_PARTIAL",
  "IMAGE_EXTENSIONS",
  "EVAL_METRICS",
  "DEFAULT_EVAL_METRICS",
  "build_parser",
  "cmd_demo",
  "cmd_evaluate",
  "cmd_explain",
  "cmd_layers",
  "cmd_merge",
  "cmd_report",
  "collect_images",
  "demo_methods",
  "evaluation_table",
  "load_regions",
  "method_options",
  "main",
]


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors: ``jaxcam explain: error: ...`` and exit status 2 (argparse's usage block is
  left out: ``--help`` shows it)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
  import jaxcam

  parser = _Parser(prog="jaxcam", description="Class activation maps for JAX/Flax models.")
  parser.add_argument("--version", action="version", version=f"jaxcam {jaxcam.__version__}")
  sub = parser.add_subparsers(dest="command", required=True)
  for add in (_add_demo, _add_explain, _add_merge, _add_evaluate, _add_layers, _add_report):
    add(sub)
  return parser


def _add_demo(sub) -> None:
  """``jaxcam demo``: every cheap method on the bundled photos."""
  demo = sub.add_parser(
    "demo", help="EfficientNet-Lite0 (real weights) on bundled photos: every method, and exact Grad-CAM++"
  )
  demo.add_argument("--out", default="jaxcam-demo", help="output directory (default: jaxcam-demo)")
  demo.add_argument(
    "--all",
    action="store_true",
    help="also the methods whose cost grows with the layer's size or a sample count (Score-CAM family, "
    "Ablation-CAM, Recipro-CAM, Smooth Grad-CAM++): minutes instead of seconds",
  )
  demo.add_argument("--seed", type=int, default=0, help="PRNG seed of the keyed methods (default 0)")
  demo.add_argument("--report", action="store_true", help=_REPORT_HELP)
  demo.set_defaults(func=cmd_demo)


_MODEL_HELP = (
  "a shipped model (default efficientnet_lite0), or package.module:attribute naming a model object (or a function of "
  "no arguments returning one: (linen module, variables), an nnx module, a Keras 3 model, a Hugging Face Flax model); "
  "its layer is found automatically unless --layer is given"
)


def _add_explain(sub) -> None:
  """``jaxcam explain``: images or folders through `jaxcam.stream`."""
  import jaxcam

  ex = sub.add_parser("explain", help="explain images or directories of images")
  ex.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
  ex.add_argument("--model", default="efficientnet_lite0", help=_MODEL_HELP)
  ex.add_argument("--size", type=int, default=224, help="input size for imported models that do not declare one")
  ex.add_argument("--weights", default=None, help="weights file for models without packaged weights")
  ex.add_argument(
    "--method",
    default="gradcam",
    help=f"one of {', '.join(jaxcam.method_names())} (gradcam++ too), or a wrapped method: "
    f"{', '.join(f'{w}(METHOD)' for w in jaxcam.methods.table.wrappers())} (e.g. 'sess(gradcam_pp)'; 'sess' alone is "
    "sess(gradcam))",
  )
  ex.add_argument("--layer", default=None, help="layer path (default: the model's default layer)")
  ex.add_argument("--target", default=None, help="class id or ImageNet name (default: each image's top class)")
  ex.add_argument("--out", default="jaxcam-out", help="output directory")
  ex.add_argument(
    "--batch-size",
    type=int,
    default=None,
    help="images per compiled batch (default: 8, or the number of images when fewer and --shard-size is not given)",
  )
  ex.add_argument(
    "--shard-size",
    type=int,
    default=0,
    help="streaming mode for many images: maps in shards of N files (default: one shard, with overlays); resumable",
  )
  ex.add_argument(
    "--option",
    action="append",
    default=[],
    metavar="NAME=VALUE",
    help="a method option, repeatable (e.g. --option chunk_size=64 --option top_n=64 for Faster-Score-CAM)",
  )
  ex.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="several hosts: jax.distributed coordinator")
  ex.add_argument("--num-processes", type=int, default=None, help="several hosts: how many processes in all")
  ex.add_argument("--process-id", type=int, default=None, help="several hosts: this process's index")
  ex.add_argument("--seed", type=int, default=0, help="PRNG seed for methods that draw noise (sscam, smoothing)")
  ex.add_argument(
    "--eigen-smooth",
    action="store_true",
    help="first principal component of the weighted activations (pytorch-grad-cam's --eigen_smooth)",
  )
  ex.add_argument(
    "--aug-smooth",
    action="store_true",
    help="test-time augmentation: flips x brightness 0.9/1/1.1, maps averaged (pytorch-grad-cam's --aug_smooth)",
  )
  ex.add_argument(
    "--overwrite", action="store_true", help="replace the outputs of a different previous run in --out (else: error)"
  )
  ex.add_argument("--float16", action="store_true", help="store maps as float16")
  ex.add_argument("--devices", type=int, default=0, help="use the first N local devices")
  ex.add_argument(
    "--overlays", action="store_true", help="streaming mode: also write overlay PNGs (default mode always does)"
  )
  ex.add_argument("--report", action="store_true", help=_REPORT_HELP)
  ex.set_defaults(func=cmd_explain)


def _add_merge(sub) -> None:
  """``jaxcam merge-manifests``: the shard manifests of a multi-host run."""
  merge = sub.add_parser("merge-manifests", help="merge the shard manifests of a (multi-host) run")
  merge.add_argument("out")
  merge.set_defaults(func=cmd_merge)


def _add_evaluate(sub) -> None:
  """``jaxcam evaluate``: the metrics table per method."""
  ev = sub.add_parser(
    "evaluate",
    help="faithfulness (Average Drop, Increase, deletion / insertion AUC, ROAD, ADCC, ARCC) and localization "
    "(pointing game, energy, AUROC, IoU) metrics for a set of methods",
  )
  ev.add_argument("inputs", nargs="*", help="images or folders (default: the bundled photos)")
  ev.add_argument("--model", default="efficientnet_lite0", help=_MODEL_HELP)
  ev.add_argument("--size", type=int, default=224, help="input size for imported models that do not declare one")
  ev.add_argument("--weights", default=None, help="a checkpoint for models without packaged weights")
  ev.add_argument("--layer", default=None, help="layer path (default: the model's default layer)")
  ev.add_argument(
    "--methods",
    default="default",
    help="comma-separated rows, gradcam_pp_exact for exact Grad-CAM++ (default: "
    "every fixed-cost row and gradcam_pp_exact)",
  )
  ev.add_argument(
    "--metrics",
    default=None,
    help=f"comma-separated, from {', '.join(EVAL_METRICS)} (default: {','.join(DEFAULT_EVAL_METRICS)}, and the "
    "localization ones with --boxes / --masks)",
  )
  ev.add_argument(
    "--boxes",
    default=None,
    help='a JSON file {"image": [[x0, y0, x1, y1], ...]} in original-image pixels (half-open), keyed by name, '
    "file name or stem",
  )
  ev.add_argument("--masks", default=None, help="a folder of <stem>.png masks at each image's size (nonzero = inside)")
  ev.add_argument("--tolerance", type=int, default=15, help="pointing-game tolerance in input pixels (default 15)")
  ev.add_argument(
    "--score",
    choices=("probability", "logit"),
    default="probability",
    help="what the metrics measure for the top class (default: probability, as the Grad-CAM++ paper)",
  )
  ev.add_argument("--steps", type=int, default=20, help="deletion / insertion steps (default 20)")
  ev.add_argument("--chunk-size", type=int, default=32, help="perturbed copies per forward pass (default 32)")
  ev.add_argument("--seed", type=int, default=0, help="PRNG seed of the keyed methods and of ROAD's noise")
  ev.add_argument("--out", default="jaxcam-eval", help="output directory (default: jaxcam-eval)")
  ev.add_argument("--report", action="store_true", help=_REPORT_HELP)
  ev.set_defaults(func=cmd_evaluate)


_REPORT_HELP = (
  "also write OUT/report.html, one page of the run to open in a browser: the overlays per image and method, the top "
  "classes, the metrics, the settings and versions"
)


def _add_report(sub) -> None:
  """``jaxcam report``: OUT/report.html from the run(s) in OUT."""
  report = sub.add_parser(
    "report",
    help="write OUT/report.html from a finished run (explain, demo, evaluate), or from a folder of runs (one "
    "explain --out per method: one column each)",
  )
  report.add_argument("out", help="the --out folder of a run, or a folder of such folders")
  report.set_defaults(func=cmd_report)


def _add_layers(sub) -> None:
  """``jaxcam layers``: a model's layer paths and output shapes."""
  layers = sub.add_parser("layers", help="layer paths of a model with their output shapes")
  layers.add_argument("--model", default="efficientnet_lite0", help=_MODEL_HELP)
  layers.add_argument("--size", type=int, default=224, help="input size for imported models that do not declare one")
  layers.set_defaults(func=cmd_layers)


def run() -> None:
  """The ``jaxcam`` command (and ``python -m jaxcam.cli``): `main`, then the end of the process.

  Python's teardown of JAX's runtime takes a fresh process about 0.6 s after the work is done (measured on 2 CPU
  cores). When `main` has returned, every output file is closed and every thread it started has finished, so the
  command flushes its streams, runs the exit handlers (JAX's and tqdm's) and ends the process without that
  teardown. With a thread still running (not one of jaxcam's) it exits normally."""
  import atexit
  import threading

  rc = main()
  sys.stdout.flush()
  sys.stderr.flush()
  if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
    sys.exit(rc)
  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(rc)


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  from jaxcam import compile_cache

  compile_cache.enable()  # before the first compilation: a second run compiles nothing again
  try:
    rc = args.func(args)
    return report_after(args, rc) if getattr(args, "report", False) and rc in (0, EXIT_PARTIAL) else rc
  except (CliError, ImportError) as e:
    print(f"jaxcam: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # the file system refused (an --out that is a file, a read-only folder, a full disk)
    where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
    print(f"jaxcam: error: {e.strerror or type(e).__name__}{where}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:  # Ctrl-C: every shard is written atomically, so the run resumes where it stopped
    print("jaxcam: interrupted; finished shards are kept: rerun the same command to resume", file=sys.stderr)
    return 130
