"""The anomaly experiment's pieces (benchmarks/_anomaly.py) and both experiment commands end to end (slow)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import _anomaly as an

pytest.importorskip("optax")


@pytest.mark.fast
def test_synthetic_defects_have_exact_masks():
  rng = np.random.default_rng(0)
  tex = an._texture("brick")
  for kind in an.DEFECTS:
    clean = an._crop(tex, 48, np.random.default_rng(1))
    donor = an._crop(an._texture("grass"), 48, np.random.default_rng(2))
    img, mask = an._defect(clean, kind, donor, rng)
    changed = np.any(img != clean, axis=-1)
    assert mask.any() and not np.any(changed & ~mask), kind  # nothing outside the mask moved
    assert changed[mask].mean() > 0.5, kind  # and (nearly) everything inside did
    if kind == "hole":
      assert np.all(img[mask] == 10)
    if kind == "paste":
      np.testing.assert_array_equal(img[mask], donor[mask])


@pytest.mark.fast
def test_mvtec_layout_round_trip(tmp_path):
  (folder,) = an.write_synthetic(str(tmp_path), size=32, n_train=3, n_good=2, n_defect=1, seed=0, textures=("gravel",))
  assert sorted(os.listdir(os.path.join(folder, "test"))) == ["good", "hole", "paste", "scratch", "stain"]
  cat = an.load_mvtec(folder, 32)
  assert cat.name == "gravel" and cat.train.shape == (3, 32, 32, 3) and cat.test.shape == (6, 32, 32, 3)
  np.testing.assert_array_equal(cat.labels, [1 if k != "good" else 0 for k in cat.kinds])
  assert all(m.any() for m, lab in zip(cat.masks, cat.labels) if lab) and not cat.masks[cat.labels == 0].any()
  again = an.write_synthetic(str(tmp_path / "again"), size=32, n_train=3, n_good=2, n_defect=1, seed=0,
                             textures=("gravel",))  # fmt: skip
  np.testing.assert_array_equal(an.load_mvtec(again[0], 32).test, cat.test)  # deterministic given the seed
  with pytest.raises(FileNotFoundError, match="train/good"):
    an.load_mvtec(str(tmp_path), 32)


def test_cutpaste_batch_labels_and_patch_areas():
  images = jax.random.uniform(jax.random.key(0), (8, 64, 64, 3))
  x, y = an.cutpaste_batch(jax.random.key(1), images)
  np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 8))
  np.testing.assert_array_equal(x[:8], images)
  cut = np.asarray(jnp.any(x[8:16] != images, axis=-1)).mean(axis=(1, 2))
  scar = np.asarray(jnp.any(x[16:] != images, axis=-1)).mean(axis=(1, 2))
  assert np.all(cut <= 0.15 + 0.02) and np.all(cut >= 0.01)  # 2-15 % of the area (nearest-neighbour edges)
  assert np.all(scar <= (16 * 25 / 256**2) * 1.3 + 0.01) and np.all(scar > 0)
  np.testing.assert_array_equal(an.cutpaste_batch(jax.random.key(1), images)[0], x)  # keyed: deterministic


@pytest.mark.fast
def test_ledoit_wolf_and_mahalanobis_against_the_definitions():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((30, 6)) @ rng.standard_normal((6, 6))
  # Ledoit & Wolf (2004), from per-sample outer products: b2 = mean_k ||x_k x_k^T - S||^2 / n, d2 = ||S - mu I||^2
  c = x - x.mean(0)
  n, d = c.shape
  s = c.T @ c / n
  mu = np.trace(s) / d
  b2 = sum(np.sum((np.outer(v, v) - s) ** 2) for v in c) / n**2
  d2 = np.sum((s - mu * np.eye(d)) ** 2)
  shrink = min(b2, d2) / d2
  np.testing.assert_allclose(an.ledoit_wolf(x), shrink * mu * np.eye(d) + (1 - shrink) * s, rtol=1e-10)
  g = an.fit_gaussian(x)
  f = rng.standard_normal((4, 6))
  expected = [np.sqrt((v - x.mean(0)) @ np.linalg.inv(an.ledoit_wolf(x)) @ (v - x.mean(0))) for v in f]
  np.testing.assert_allclose(g.score(jnp.asarray(f)), expected, rtol=1e-5)
  ids, scores, multi = an.gde_target(g).evaluate({"features": jnp.asarray(f, jnp.float32)})
  assert ids is None and not multi and scores.shape == (4, 1)
  np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-4)


@pytest.mark.slow
def test_anomaly_quick_run_trains_and_beats_chance(tmp_path):
  from benchmarks import anomaly

  assert anomaly.main(["--synthetic", "--quick", "--out", str(tmp_path)]) == 0
  res = json.loads((tmp_path / "results.json").read_text())
  cat = res["categories"]["brick"]
  assert cat["loss_last"] < cat["loss_first"] and res["image_auroc"] > 0.5
  assert {"pixel_auroc", "pointing", "iou"} <= set(res["methods"]["gradcam"])
  assert {"pixel_auroc", "pointing", "iou"} <= set(res["methods"]["gradcam"]["gde"])
  assert (tmp_path / "grid_brick.png").exists() and (tmp_path / "results.csv").read_text().startswith("method,")


@pytest.mark.slow
def test_imagenet_grid_on_a_tiny_folder_with_seeded_weights(tmp_path):
  from PIL import Image

  from benchmarks import imagenet_grid
  from jaxcam import models
  from tests.conftest import FIXTURES
  from tests.seeded import seeded_state_dict

  with np.load(os.path.join(FIXTURES, "converters.npz")) as d:
    sd = seeded_state_dict(list(zip([str(k) for k in d["resnet18/keys"]], json.loads(str(d["resnet18/shapes"])))), 7)
  np.savez(tmp_path / "r18.npz", **sd)
  photos = models.sample_images(["chelsea", "coffee", "rocket"])
  tree, flat = tmp_path / "val", tmp_path / "flat"
  lines = []
  for i, (name, arr) in enumerate(photos.items()):
    wnid = ["n01", "n02", "n02"][i]
    os.makedirs(tree / wnid, exist_ok=True)
    os.makedirs(flat, exist_ok=True)
    Image.fromarray(arr).save(tree / wnid / f"{name}.png")
    Image.fromarray(arr).save(flat / f"{name}.png")
    lines.append(f"{name}.png {['n01', 'n02'].index(wnid)}")
  (tmp_path / "labels.txt").write_text("\n".join(lines))
  files, ids = imagenet_grid.list_images(str(tree), None)
  assert ids == [0, 1, 1] and [os.path.basename(f) for f in files] == ["chelsea.png", "coffee.png", "rocket.png"]
  out = tmp_path / "out"
  args = ["--images", str(tree), "--weights", str(tmp_path / "r18.npz"), "--model", "resnet18", "--out", str(out)]
  assert imagenet_grid.main(args) == 0
  res = json.loads((out / "results.json").read_text())
  assert res["layer"] == "layer4" and res["images"] == 3
  for name in ("gradcam", "gradcam_pp", "gradcam_pp_exact", "layercam", "cam"):
    assert 0 <= res["methods"][name]["avg_drop"] <= 100 and 0 <= res["methods"][name]["increase"] <= 100
  flat_out = tmp_path / "flat_out"
  args = ["--images", str(flat), "--labels", str(tmp_path / "labels.txt"), "--weights", str(tmp_path / "r18.npz"),
          "--model", "resnet18", "--out", str(flat_out)]  # fmt: skip
  assert imagenet_grid.main(args) == 0
  assert json.loads((flat_out / "results.json").read_text())["methods"] == res["methods"]  # same labels, same table
  assert (out / "grid.png").exists()
