"""`jaxcam.report`: OUT/report.html, one page of a run (``jaxcam explain --report``, ``jaxcam report OUT``).

Fake runs on disk (manifests + tiny PNGs, file names with HTML and URL special characters) are parsed back with
`html.parser`; the slow tier renders a page in headless Chromium and looks for the overlays' pixels."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import sys
import types
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from jaxcam import cli, report

NASTY = ["a<b>&\"c'.png", "x/ü #1?.png", "%41 & co.jpg", "c:d.png"]  # HTML, URL and scheme lookalikes, unicode
MAGENTA = (255, 0, 255)


class _Page(html.parser.HTMLParser):
  """The parts of a page the tests look at: img srcs, link hrefs, headings, cell texts, tags met."""

  def __init__(self, text: str):
    super().__init__(convert_charrefs=True)
    self.srcs: list[str] = []
    self.hrefs: list[str] = []
    self.headings: list[str] = []
    self.tags: set[str] = set()
    self.text: list[str] = []
    self.bold: list[str] = []
    self._in: list[str] = []
    self.feed(text)
    self.close()

  def handle_starttag(self, tag, attrs):
    a = dict(attrs)
    self.tags.add(tag)
    if tag == "img":
      self.srcs.append(a["src"])
    if tag == "a":
      self.hrefs.append(a["href"])
    self._in.append(tag)

  def handle_endtag(self, tag):
    if tag in self._in:
      del self._in[len(self._in) - 1 - self._in[::-1].index(tag) :]

  def handle_data(self, data):
    self.text.append(data)
    if self._in and self._in[-1] == "h2":
      self.headings.append(data)
    if self._in and self._in[-1] == "b":
      self.bold.append(data)


def _png(path, color=MAGENTA, size=(16, 16)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, color).save(path)


def _top5(first: str) -> list[dict]:
  return [{"id": 285, "name": first, "p": 0.75}] + [{"id": i, "name": f"class<{i}>", "p": 0.05} for i in range(4)]


def _explain_run(out, names, method="gradcam", model="toy", skipped=None):
  """What ``jaxcam explain`` leaves in `out`: manifest.json, run.json, overlays/<name>.png."""
  entries = {}
  for n in names:
    rel = os.path.join("overlays", n + ".png")
    _png(os.path.join(out, rel))
    entries[n] = {"overlay": rel, "target": {"id": 285, "name": "Egyptian cat"}, "top5": _top5("Egyptian cat")}
  for n, why in (skipped or {}).items():
    entries[n] = {"shard": 0, "skipped": why}
  manifest = {"method": method, "layer": "head", "model": model, "jaxcam": "0.1.0", "jax": "0.4", "files": 9}
  manifest |= {"shards": 1, "entries": entries, "skipped": sorted(skipped or {})}
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f)
  with open(os.path.join(out, "run.json"), "w", encoding="utf-8") as f:
    json.dump({"sha256": "0" * 64, "inputs": [], "options": {"chunk_size": 64}, "input_size": 224}, f)


def _check_images(out, page: _Page) -> set[str]:
  """Every src and href is a relative path (no scheme, no host, no leading slash) to a file inside `out`."""
  for src in page.srcs + page.hrefs:
    parts = urllib.parse.urlsplit(src)
    assert not parts.scheme and not parts.netloc and not parts.query and not parts.fragment, src
    path = urllib.parse.unquote(parts.path)
    assert not path.startswith("/") and ".." not in path.split("/"), src
    assert os.path.isfile(os.path.join(out, path)), src
  return {urllib.parse.unquote(s) for s in page.srcs}


@pytest.mark.fast
def test_an_explain_run_escapes_every_name_and_references_its_overlays(tmp_path):
  out = tmp_path / "run <1> & 'x'"
  _explain_run(str(out), NASTY, skipped={"bad<script>.png": "ImageDecodeError: <script>alert(1)</script>"})
  path = report.write_report(out)
  assert path == out / "report.html"
  text = path.read_text(encoding="utf-8")
  page = _Page(text)
  assert _check_images(str(out), page) == {f"overlays/{n}.png" for n in NASTY}  # each overlay, once, found on disk
  assert page.tags.isdisjoint({"script", "link", "iframe", "object"}) and "http" not in text  # nothing to fetch
  assert "<script>" not in text and "<b>&" not in text  # escaped, so ...
  words = {t.strip() for t in page.text}
  assert set(NASTY) <= words and "bad<script>.png" in words  # ... the names read back exactly as they are
  assert "ImageDecodeError: <script>alert(1)</script>" in words and "class<0> (0)" in words
  assert page.headings[:1] == ["Overlays"] and {"Skipped (unreadable images)", "Settings", "Versions"} <= set(
    page.headings
  )
  assert {"Egyptian cat (285)", '{"chunk_size": 64}', "input_size", "flax", "devices", "python"} <= words
  assert report.build_report(out) == text  # no timestamp: the same bytes again


@pytest.mark.fast
def test_one_image_many_methods_and_the_metrics_table(tmp_path):
  """A demo run (one image, four methods: one row, four columns in order) and an evaluate run in a subfolder (its
  table, the best of each column in bold in the metric's own direction)."""
  methods = ["gradcam", "gradcam_pp", "layercam", "eigencam"]
  for m in methods[:3]:
    _png(str(tmp_path / f"chelsea_{m}.png"))  # eigencam's overlay is missing: said so in its cell
  summary = {"model": "toy", "layer": "head", "methods": methods, "images": {"chelsea": {"top5": _top5("cat")}}}
  (tmp_path / "summary.json").write_text(json.dumps(summary))
  rows = {
    "gradcam": {"avg_drop": {"mean": 0.2, "std": 0.1, "n": 2}, "insertion": {"mean": 0.4, "std": 0.0, "n": 2}},
    "layercam": {"avg_drop": {"mean": 0.3, "std": 0.1, "n": 2}, "insertion": {"mean": 0.6, "std": 0.0, "n": 2}},
  }
  tie = {"increase": {"mean": 0.0, "std": 0.0, "n": 2}, "s_per_image": {"mean": 0.01, "std": 0.0, "n": 1}}
  rows = {r: v | tie for r, v in rows.items()}
  (tmp_path / "eval").mkdir()
  metrics = ["avg_drop", "increase", "insertion"]
  evaluation = {"model": "toy", "layer": "head", "metrics": metrics, "methods": rows, "images": []}
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(evaluation))
  page = _Page(report.write_report(tmp_path).read_text(encoding="utf-8"))
  assert page.srcs == [f"chelsea_{m}.png" for m in methods[:3]]
  _check_images(str(tmp_path), page)
  assert "missing: chelsea_eigencam.png" in page.text
  assert page.headings[:2] == ["Overlays", "Metrics (eval)"]
  assert page.bold == ["0.200 ± 0.100", "0.600 ± 0.000"]  # avg_drop: lower is better; insertion: higher; a tie: none


@pytest.mark.fast
def test_a_folder_of_explain_runs_is_one_grid_with_a_column_per_run(tmp_path):
  """One ``--out`` per method below OUT: one row per image, one column per run (the folder tells apart two runs of
  one method); a manifest's overlay path that leaves OUT is never linked."""
  names = ["a.png", "b.png"]
  _explain_run(str(tmp_path / "gradcam"), names, "gradcam")
  _explain_run(str(tmp_path / "layercam"), names, "layercam")
  _explain_run(str(tmp_path / "layercam-l2"), names, "layercam", model="other")
  outside = tmp_path / "layercam-l2" / "manifest.json"
  manifest = json.loads(outside.read_text())
  _png(str(tmp_path.parent / "secret.png"))
  manifest["entries"]["b.png"]["overlay"] = "../../secret.png"
  manifest["entries"]["b.png"]["top5"] = _top5("dog")
  outside.write_text(json.dumps(manifest))
  page = _Page(report.write_report(tmp_path).read_text(encoding="utf-8"))
  assert "gradcam" in page.text and "layercam (layercam)" in page.text and "layercam (layercam-l2)" in page.text
  expected = [f"{run}/overlays/{n}.png" for n in names for run in ("gradcam", "layercam", "layercam-l2")]
  expected.remove("layercam-l2/overlays/b.png.png")
  assert page.srcs == expected and "missing: ../../secret.png" in page.text
  _check_images(str(tmp_path), page)
  assert page.text.count("other") == 2  # b.png's two top-5 lists (two models disagree), each under its model


@pytest.mark.fast
def test_no_run_and_a_broken_manifest_are_clear_errors(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match=r"No jaxcam run in .*expected manifest.json \(jaxcam explain\)"):
    report.write_report(tmp_path)
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileNotFoundError, match="got .*file.*, a file"):
    report.write_report(tmp_path / "file")
  assert cli.main(["report", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("jaxcam: error: No jaxcam run in") and err.count("\n") == 1
  (tmp_path / "manifest.json").write_text('{"entries": ')
  with pytest.raises(ValueError, match="Cannot read .*manifest.json.* as the manifest of a jaxcam run"):
    report.write_report(tmp_path)
  (tmp_path / "manifest.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="a JSON object.*got a list"):
    report.write_report(tmp_path)
  assert not (tmp_path / "report.html").exists()


def test_explain_report_from_the_command_line(small_linen, tmp_path, monkeypatch, capsys):
  """``jaxcam explain DIR --report`` (the suite's tiny ConvNet as an imported model, so it runs in seconds): the page
  of the run, every overlay there, special characters in the input names included; ``jaxcam report OUT`` rewrites
  the same page."""
  module, variables, _ = small_linen
  tiny = types.ModuleType("tiny_cnn")
  tiny.build = lambda: (module, variables)  # type: ignore[attr-defined]
  monkeypatch.setitem(sys.modules, "tiny_cnn", tiny)
  rng = np.random.default_rng(0)
  names = ["a & <b>.png", "c #1.png"]
  (tmp_path / "in").mkdir()
  for n in names:
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "in" / n)
  out = tmp_path / "out"
  args = ["explain", str(tmp_path / "in"), "--model", "tiny_cnn:build", "--layer", "body_1", "--size", "12"]
  assert cli.main([*args, "--out", str(out), "--batch-size", "2", "--report"]) == 0
  assert f"wrote {out / 'report.html'}" in capsys.readouterr().out
  text = (out / "report.html").read_text(encoding="utf-8")
  page = _Page(text)
  assert _check_images(str(out), page) == {f"overlays/{n}.png" for n in names}
  words = {t.strip() for t in page.text}
  assert {"tiny_cnn:build", "body_1", "gradcam", *names} <= words
  (out / "report.html").unlink()
  assert cli.main(["report", str(out)]) == 0 and (out / "report.html").read_text(encoding="utf-8") == text


def _screenshot(page: os.PathLike, png: os.PathLike) -> np.ndarray:
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  if chromium is None:
    pytest.skip("chromium is not installed (apt-get install -y chromium): the browser rendering is not checked")
  args = ["--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", f"--screenshot={png}"]
  cmd = [chromium, *args, "--window-size=1200,900", f"file://{os.path.abspath(page)}"]
  subprocess.run(cmd, check=True, capture_output=True, timeout=120)
  return np.asarray(Image.open(png).convert("RGB"))


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tmp_path):
  """The page as a browser draws it: not blank, and the overlays' own pixels (magenta squares) are on screen, so
  their relative paths, special characters included, resolve; a page whose overlays are gone draws none."""
  out = tmp_path / "run"
  _explain_run(str(out), NASTY)
  for n in NASTY:
    _png(str(out / "overlays" / (n + ".png")), MAGENTA, (64, 48))
  shot = _screenshot(report.write_report(out), tmp_path / "shot.png")
  assert shot.shape == (900, 1200, 3) and shot.std() > 10  # not blank
  magenta = np.all(shot == MAGENTA, axis=-1)
  per_image = 200 * 150 * 0.9  # each 64x48 overlay is drawn 200 px wide
  assert magenta.sum() > len(NASTY) * per_image, magenta.sum()
  shutil.rmtree(out / "overlays")  # the negative control: the same page, its images gone
  shot = _screenshot(out / "report.html", tmp_path / "gone.png")
  assert not np.all(shot == MAGENTA, axis=-1).any() and shot.std() > 10


@pytest.mark.slow
def test_a_real_run_report_renders_in_headless_chromium(tmp_path, capsys):
  """``jaxcam explain PHOTOS --report`` with EfficientNet-Lite0 on two bundled photos: the real top classes on the
  page, its overlays there, and Chromium draws it (not blank; the first overlay's own colours on screen)."""
  from jaxcam import models

  photos = tmp_path / "in"
  photos.mkdir()
  for name, arr in models.sample_images(["chelsea", "coffee"]).items():
    Image.fromarray(arr).save(photos / f"{name}.png")
  out = tmp_path / "out"
  assert cli.main(["explain", str(photos), "--out", str(out), "--batch-size", "2", "--report"]) == 0
  page = _Page((out / "report.html").read_text(encoding="utf-8"))
  assert _check_images(str(out), page) == {"overlays/chelsea.png.png", "overlays/coffee.png.png"}
  assert "Egyptian cat (285)" in {t.strip() for t in page.text}
  shot = _screenshot(out / "report.html", tmp_path / "shot.png")
  assert shot.std() > 10
  overlay = np.asarray(Image.open(out / "overlays" / "chelsea.png.png").convert("RGB"))
  hue = overlay[..., 0].astype(int) - overlay[..., 2].astype(int)  # the jet colormap's red-minus-blue spread
  on_screen = shot[..., 0].astype(int) - shot[..., 2].astype(int)
  assert (on_screen > 150).sum() > 0.2 * (hue > 150).mean() * 200 * 133  # red of the map drawn at 200 px wide
