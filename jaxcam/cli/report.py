"""`jaxcam report OUT` and the ``--report`` flag of ``explain``, ``demo`` and ``evaluate``: ``OUT/report.html``, one
page of the run (`jaxcam.report`)."""

from __future__ import annotations

from jaxcam.cli._common import CliError


def cmd_report(args) -> int:
  """``jaxcam report OUT``: (re)write ``OUT/report.html`` from the run(s) in OUT."""
  print(f"wrote {_write(args.out)} (open it in a browser)")
  return 0


def report_after(args, rc: int) -> int:
  """After a command given ``--report`` that wrote its outputs (exit status 0, or 1 for a run that skipped unreadable
  images): write the report and return the command's exit status. A process of a multi-host run writes none (its
  manifest.json is this process's only): ``jaxcam merge-manifests OUT``, then ``jaxcam report OUT``."""
  if (getattr(args, "num_processes", None) or 1) > 1:
    print(f"jaxcam: no report from one process of several: run `jaxcam report {args.out}` after merge-manifests")
    return rc
  print(f"wrote {_write(args.out)} (open it in a browser)")
  return rc


def _write(out: str) -> str:
  from jaxcam.report import write_report

  try:
    return str(write_report(out))
  except (FileNotFoundError, NotADirectoryError, ValueError) as e:
    raise CliError(str(e)) from None
