"""One HTML page of a run, to open in a browser: ``jaxcam explain ... --report`` writes ``OUT/report.html``.

The page is built from what is on disk in ``OUT`` only, so `write_report` works on any finished run, in this process
or later (``jaxcam report OUT``). It reads:

- ``manifest.json`` (``jaxcam explain``): one grid column (the run's method), each image's overlay, target and top-5
  classes, the images skipped as unreadable; the settings from the manifest and ``run.json``.
- ``summary.json`` of ``jaxcam demo``: one column per method (the overlays ``<image>_<method>.png``), the top-5.
- ``summary.json`` of ``jaxcam evaluate``: the metrics table (mean ± std per method and metric, the best in bold).
- the same files one folder down: ``OUT/gradcam/``, ``OUT/scorecam/``, ... (one ``jaxcam explain --out`` per
  method) give one grid with a column per method.

The page is plain HTML with inline CSS: no script, no network, no timestamp (rewriting it gives the same bytes on
the same machine). Every ``<img>`` refers to an overlay beside it by a relative, percent-encoded path checked to lie
inside ``OUT`` and to exist; every text from disk (file names, class names, settings) is HTML-escaped.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import platform
import sys
import urllib.parse
from pathlib import Path
from typing import Any

__all__ = ["REPORT_NAME", "build_report", "write_report"]

REPORT_NAME = "report.html"
MAX_ROWS = 500
"""Images shown in the grid at most (a streaming run of thousands lists the rest by count: see manifest.json)."""

_EAGER_ROWS = 12  # rows whose images load at once (a screenshot sees them); later rows load as they scroll in

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
p.sub{color:#555;margin:0 0 16px}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top;text-align:left;font-size:13px}
th{background:#f4f4f6}table.grid td.img{padding:4px;text-align:center}
table.grid img{width:200px;height:auto;display:block;margin:0 auto}
table.grid td:first-child,table.grid th:first-child{min-width:200px;position:sticky;left:0;background:#fff}
table.grid th:first-child{background:#f4f4f6}
.cap{font-size:12px;color:#555}.name{font-weight:600;word-break:break-all;max-width:220px}
ol.top{margin:4px 0 0;padding-left:20px;font-size:12px}.p{color:#777}.miss{color:#b00020;font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}b.best{color:#0a6a2f}
"""


@dataclasses.dataclass
class _Run:
  """What one run folder holds, read into the parts of the page."""

  where: str  # the folder relative to OUT, "" for OUT itself
  kind: str  # "explain", "demo" or "evaluate"
  settings: dict[str, Any]
  columns: list[str] = dataclasses.field(default_factory=list)
  cells: dict[tuple[str, str], dict[str, Any]] = dataclasses.field(default_factory=dict)  # (image, column) -> cell
  top5: dict[str, list] = dataclasses.field(default_factory=dict)
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)
  metrics: dict[str, Any] | None = None


def write_report(out_dir: str | os.PathLike) -> Path:
  """Write ``out_dir/report.html`` (atomically) from the run(s) in `out_dir`; see the module docstring.

  Args:
    out_dir: the ``--out`` folder of ``jaxcam explain``, ``jaxcam demo`` or ``jaxcam evaluate`` (or a folder of
      such folders, one per method).

  Returns:
    The path of the report.

  Raises:
    FileNotFoundError: `out_dir` is not a folder, or holds no run.
    ValueError: a run file there is not what jaxcam writes (truncated, edited, another program's JSON).
  """
  page = build_report(out_dir)
  path = Path(out_dir) / REPORT_NAME
  tmp = path.with_name(f"{REPORT_NAME}.tmp-{os.getpid()}")
  tmp.write_text(page, encoding="utf-8")
  os.replace(tmp, path)
  return path


def build_report(out_dir: str | os.PathLike) -> str:
  """The HTML of `out_dir`'s report (what `write_report` writes), as a string."""
  out = os.fspath(out_dir)
  if not os.path.isdir(out):
    raise FileNotFoundError(
      f"Expected `out_dir` to be the output folder of a jaxcam run, got {out!r}, "
      f"{'a file' if os.path.exists(out) else 'which does not exist'}."
    )
  runs = _find_runs(out)
  if not runs:
    raise FileNotFoundError(
      f"No jaxcam run in {out!r}: expected manifest.json (jaxcam explain) or summary.json (jaxcam demo, jaxcam "
      "evaluate) there or in its subfolders. Run e.g. `jaxcam explain IMAGES --out "
      f"{out} --report` first."
    )
  return _page(os.path.basename(os.path.abspath(out)), runs)


# ------------------------------------------------------------------------------------------------ reading


def _find_runs(out: str) -> list[_Run]:
  """The runs in `out` and in its direct subfolders (sorted by name)."""
  runs = []
  subs = sorted(n for n in os.listdir(out) if os.path.isdir(os.path.join(out, n)) and n not in ("shards", "overlays"))
  for where in ["", *subs]:
    folder = os.path.join(out, where)
    if os.path.isfile(os.path.join(folder, "manifest.json")):
      runs.append(_explain_run(out, where))
    if os.path.isfile(os.path.join(folder, "summary.json")):
      runs.append(_summary_run(out, where))
  return runs


def _read_json(path: str, what: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      obj = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"Cannot read {path!r} as the {what} of a jaxcam run: {e}".splitlines()[0]) from None
  if not isinstance(obj, dict):
    raise ValueError(f"Expected {path!r} to be the {what} of a jaxcam run (a JSON object), got a {type(obj).__name__}.")
  return obj


def _image_src(out: str, where: str, rel: Any) -> str | None:
  """`rel` (a path relative to the run folder `where`) as a path relative to `out`, or None when it is not a
  string, leaves `out`, or names no file."""
  if not isinstance(rel, str) or not rel or os.path.isabs(rel):
    return None
  path = os.path.normpath(os.path.join(where, rel))
  if path == os.pardir or path.startswith(os.pardir + os.sep) or not os.path.isfile(os.path.join(out, path)):
    return None
  return path.replace(os.sep, "/")


def _explain_run(out: str, where: str) -> _Run:
  """A ``jaxcam explain`` run: manifest.json (+ run.json's settings)."""
  path = os.path.join(out, where, "manifest.json")
  manifest = _read_json(path, "manifest")
  entries = manifest.get("entries")
  if not isinstance(entries, dict) or "method" not in manifest:
    raise ValueError(f"Expected {path!r} to be a jaxcam explain manifest (with 'method' and 'entries'); it is not.")
  settings = {k: manifest[k] for k in ("model", "layer", "method") if k in manifest}
  run_path = os.path.join(out, where, "run.json")
  if os.path.isfile(run_path):
    fingerprint = _read_json(run_path, "run.json")
    skip = ("inputs", "sha256", "jaxcam", "jax", *settings)
    settings |= {k: v for k, v in fingerprint.items() if k not in skip and not (k == "method_inputs" and v == "None")}
  settings |= {"images": manifest.get("files", len(entries)), "shards": manifest.get("shards")}
  settings |= {k: manifest[k] for k in ("jaxcam", "jax") if k in manifest}
  column = str(manifest["method"])
  run = _Run(where, "explain", settings, columns=[column])
  for rel in sorted(entries):
    entry = entries[rel]
    if not isinstance(entry, dict):
      continue
    if "skipped" in entry:
      run.skipped[rel] = str(entry["skipped"])
      continue
    run.cells[(rel, column)] = {
      "src": _image_src(out, where, entry.get("overlay")),
      "wanted": entry.get("overlay"),
      "caption": _class_label(entry.get("target")),
    }
    if isinstance(entry.get("top5"), list):
      run.top5[rel] = entry["top5"]
  return run


def _summary_run(out: str, where: str) -> _Run:
  """A ``jaxcam demo`` run (methods: a list, images: {name: {top5, target}}) or a ``jaxcam evaluate`` run (methods:
  {row: {metric: {mean, std, n}}})."""
  path = os.path.join(out, where, "summary.json")
  summary = _read_json(path, "summary")
  methods = summary.get("methods")
  base = {k: summary[k] for k in ("model", "layer") if k in summary}
  if isinstance(methods, dict):
    settings = base | {k: summary[k] for k in ("score", "steps", "metrics", "images") if k in summary}
    return _Run(where, "evaluate", settings, metrics=summary)
  images = summary.get("images")
  if not isinstance(methods, list) or not isinstance(images, dict):
    raise ValueError(f"Expected {path!r} to be the summary.json of jaxcam demo or jaxcam evaluate; it is neither.")
  run = _Run(where, "demo", base | {"methods": methods, "images": len(images)}, columns=[str(m) for m in methods])
  for name, info in images.items():
    info = info if isinstance(info, dict) else {}
    if isinstance(info.get("top5"), list):
      run.top5[name] = info["top5"]
    target = info.get("target")
    for m in run.columns:
      wanted = f"{name}_{m}.png"
      run.cells[(name, m)] = {"src": _image_src(out, where, wanted), "wanted": wanted, "caption": _class_label(target)}
  return run


def _class_label(c: Any) -> str:
  """'Egyptian cat (285)', 'class 285' for a model without class names, '' for nothing."""
  if not isinstance(c, dict) or c.get("id") is None:
    return ""
  return f"{c['name']} ({c['id']})" if c.get("name") else f"class {c['id']}"


# ------------------------------------------------------------------------------------------------ writing


def _e(value: Any) -> str:
  """Any value as escaped HTML text (strings as they are, None as 'none', a list of names or numbers comma-separated,
  the rest as compact sorted JSON)."""
  if value is None:
    return "none"
  if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
    value = ", ".join(map(str, value))  # file names, metric names: a plain list
  text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
  return html.escape(text, quote=True)


def _src(path: str) -> str:
  """A relative file path as an escaped ``src``/``href`` value: percent-encoded (``#``, ``?``, ``%``, ``:`` in a
  file name stay part of the path), never read as a URL scheme or a fragment."""
  return html.escape(urllib.parse.quote(path, safe="/"), quote=True)


def _page(title: str, runs: list[_Run]) -> str:
  """The whole page: header, grid, metrics, skipped images, settings, environment."""
  kinds = sorted({r.kind for r in runs})
  parts = [
    "<!DOCTYPE html>",
    '<html lang="en"><head><meta charset="utf-8">',
    '<meta name="viewport" content="width=device-width, initial-scale=1">',
    f"<title>jaxcam report: {_e(title)}</title><style>{_CSS}</style></head><body>",
    f"<h1>jaxcam report: {_e(title)}</h1>",
    f'<p class="sub">{_e(", ".join(f"jaxcam {k}" for k in kinds))}; {len(runs)} run folder(s)</p>',
  ]
  parts += _grid(runs)
  for run in runs:
    if run.metrics is not None:
      parts += _metrics(run)
  parts += _skipped(runs)
  parts += _settings(runs)
  parts += _environment()
  parts.append("</body></html>")
  return "\n".join(parts) + "\n"


def _columns(runs: list[_Run]) -> list[tuple[_Run, str, str]]:
  """(run, method, header) per grid column; a method met twice is told apart by its folder."""
  cols = [(run, m) for run in runs for m in run.columns]
  names = [m for _, m in cols]
  return [(run, m, m if names.count(m) == 1 else f"{m} ({run.where or '.'})") for run, m in cols]


def _grid(runs: list[_Run]) -> list[str]:
  """The table: a row per image (its name and top-5 classes), a column per method with its overlay."""
  cols = _columns(runs)
  images = list(dict.fromkeys(name for run in runs for name, _ in run.cells))  # first seen first, once each
  if not cols or not images:
    return []
  parts = ["<h2>Overlays</h2>", '<table class="grid"><tr><th>image</th>']
  parts += [f"<th>{_e(header)}</th>" for _, _, header in cols]
  parts.append("</tr>")
  for i, name in enumerate(images[:MAX_ROWS]):
    parts.append(f'<tr><td><div class="name">{_e(name)}</div>{_top5(name, runs)}</td>')
    for run, m, header in cols:
      cell = run.cells.get((name, m))
      parts.append(_cell(cell, f"{name}: {header}", lazy=i >= _EAGER_ROWS))
    parts.append("</tr>")
  parts.append("</table>")
  if len(images) > MAX_ROWS:
    parts.append(f'<p class="sub">and {len(images) - MAX_ROWS} more images (listed in manifest.json)</p>')
  return parts


def _cell(cell: dict | None, alt: str, lazy: bool) -> str:
  if cell is None:
    return '<td class="img"><span class="cap">-</span></td>'
  caption = f'<div class="cap">{_e(cell["caption"])}</div>' if cell["caption"] else ""
  if cell["src"] is None:
    wanted = cell["wanted"]
    why = f"missing: {_e(wanted)}" if wanted else "no overlay (streaming run: add --overlays)"
    return f'<td class="img"><span class="miss">{why}</span>{caption}</td>'
  src = _src(cell["src"])
  loading = ' loading="lazy"' if lazy else ""
  return f'<td class="img"><a href="{src}"><img src="{src}" alt="{_e(alt)}"{loading}></a>{caption}</td>'


def _top5(name: str, runs: list[_Run]) -> str:
  """The image's top-5 classes; several lists (runs of different models) each under their run's model."""
  seen: list[tuple[str, list]] = []
  for run in runs:
    top = run.top5.get(name)
    if top and all(top != t for _, t in seen):
      seen.append((str(run.settings.get("model", run.where)), top))
  out = []
  for model, top in seen:
    head = f'<div class="cap">{_e(model)}</div>' if len(seen) > 1 else ""
    items = []
    for t in top[:5]:
      p = t.get("p") if isinstance(t, dict) else None
      prob = f' <span class="p">{p:.3f}</span>' if isinstance(p, (int, float)) else ""
      items.append(f"<li>{_e(_class_label(t))}{prob}</li>")
    out.append(f'{head}<ol class="top">{"".join(items)}</ol>')
  return "".join(out)


def _metrics(run: _Run) -> list[str]:
  """``jaxcam evaluate``'s table: mean ± std per method and metric (the best per column in bold), seconds per
  image."""
  assert run.metrics is not None
  from jaxcam.metrics.table import METRICS

  wanted = [m for m in run.metrics.get("metrics", []) if isinstance(m, str)]
  rows = run.metrics["methods"]
  where = f" ({_e(run.where)})" if run.where else ""
  parts = [f"<h2>Metrics{where}</h2>", "<table><tr><th>method</th>"]
  parts += [f"<th>{_e(m)} {METRICS[m].arrow if m in METRICS else ''}</th>" for m in wanted]
  parts.append("<th>s/img</th></tr>")
  best = {m: _best(rows, m, METRICS[m].better) for m in wanted if m in METRICS}
  for row, vals in rows.items():
    vals = vals if isinstance(vals, dict) else {}
    parts.append(f"<tr><td>{_e(row)}</td>")
    for m in wanted:
      text = _mean_std(vals.get(m))
      bold = row in best.get(m, ())
      parts.append(f'<td class="num">{f"<b class=best>{text}</b>" if bold else text}</td>')
    cost = vals.get("s_per_image", {})
    mean = cost.get("mean") if isinstance(cost, dict) else None
    parts.append(f'<td class="num">{f"{mean:.3f}" if isinstance(mean, (int, float)) else "-"}</td></tr>')
  parts.append("</table>")
  return parts


def _mean_std(stat: Any) -> str:
  if not isinstance(stat, dict) or not isinstance(stat.get("mean"), (int, float)):
    return "-"
  std = stat.get("std")
  return f"{stat['mean']:.3f} ± {std:.3f}" if isinstance(std, (int, float)) else f"{stat['mean']:.3f}"


def _best(rows: dict, metric: str, better: str) -> set[str]:
  """The methods with the best mean of `metric` ('higher' or 'lower' is better): every one of a tie, none when no
  method has a mean or all share one (nothing to single out)."""
  stats = {row: vals.get(metric) for row, vals in rows.items() if isinstance(vals, dict)}
  means = {r: s["mean"] for r, s in stats.items() if isinstance(s, dict) and isinstance(s.get("mean"), (int, float))}
  if len(set(means.values())) < 2:
    return set()
  best = (max if better == "higher" else min)(means.values())
  return {r for r, m in means.items() if m == best}


def _skipped(runs: list[_Run]) -> list[str]:
  rows = [(run.where, name, why) for run in runs for name, why in sorted(run.skipped.items())]
  if not rows:
    return []
  parts = ["<h2>Skipped (unreadable images)</h2>", "<table><tr><th>run</th><th>image</th><th>reason</th></tr>"]
  parts += [f"<tr><td>{_e(w or '.')}</td><td>{_e(n)}</td><td>{_e(why)}</td></tr>" for w, n, why in rows]
  return [*parts, "</table>"]


def _settings(runs: list[_Run]) -> list[str]:
  """One table: a row per setting, a column per run folder ('-' where a run has no such setting)."""
  keys = list(dict.fromkeys(k for run in runs for k in run.settings))
  parts = ["<h2>Settings</h2>", "<table><tr><th></th>"]
  parts += [f"<th>jaxcam {_e(run.kind)}<br>{_e(f'{run.where}/' if run.where else '.')}</th>" for run in runs]
  parts.append("</tr>")
  for k in keys:
    cells = "".join(f"<td>{_e(run.settings[k]) if k in run.settings else '-'}</td>" for run in runs)
    parts.append(f"<tr><th>{_e(k)}</th>{cells}</tr>")
  return [*parts, "</table>"]


def _environment() -> list[str]:
  """The versions and devices of the process writing the report (with ``--report``: the run's own process)."""
  import importlib.metadata as md

  import jax

  import jaxcam

  def version(dist: str) -> str:
    try:
      return md.version(dist)
    except md.PackageNotFoundError:
      return "not installed"

  devices = jax.devices()
  kinds = sorted({f"{d.platform}: {d.device_kind}" for d in devices})
  env = {
    "jaxcam": jaxcam.__version__,
    "jax": jax.__version__,
    "jaxlib": version("jaxlib"),
    "flax": version("flax"),
    "numpy": version("numpy"),
    "python": sys.version.split()[0],
    "platform": platform.platform(terse=True),
    "devices": f"{len(devices)} x {', '.join(kinds)}",
  }
  parts = ["<h2>Versions</h2>", '<p class="sub">of the process that wrote this report</p><table>']
  parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in env.items()]
  return [*parts, "</table>"]
