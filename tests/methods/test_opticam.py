"""`jaxcam.methods.opticam`: Opti-CAM's steps against a hand-written optax loop, its objective, batch independence,
the entry points (explain, explain_many, explain_batches, explain_model, the CLI) and its option errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcam
from jaxcam.methods import opticam
from tests import nets
from tests import reference as ref

LAYER = "body_1"  # ConvNet's 6x6 layer of 8 channels for 12x12 inputs: the mask is upsampled 2x
SEED = 10


@pytest.fixture(scope="module")
def convnet():
  module = nets.ConvNet()
  x = jax.random.uniform(jax.random.key(0), (4, 12, 12, 3))
  # seed 10: every channel of the layer is live in every image. A dead channel (all zeros) only rescales the map,
  # which the min-max normalisation undoes, so its gradient is ~1e-9, below Adam's eps (1e-8): its first steps are
  # rounding noise in any implementation, and a comparison with a reference would test that noise.
  variables = module.init(jax.random.key(SEED), x)
  return module, variables, x, jnp.array([1, 0, 4, 2])


def _reference_masks(a, w):
  """Opti-CAM's mask in plain jnp: ``minmax(bilinear(relu(sum_k softmax(w)_k A_k)))``, bilinear by tests/reference's
  interpolation matrices. a ``(B, h, w, C)``, w ``(B, C)`` -> ``(B, H, W)`` for 12x12 inputs."""
  m = jax.nn.relu(jnp.einsum("bhwc,bc->bhw", a, jax.nn.softmax(w, axis=-1), precision="highest"))
  rows = jnp.asarray(ref._axis_weights(a.shape[1], 12), jnp.float32)
  cols = jnp.asarray(ref._axis_weights(a.shape[2], 12), jnp.float32)
  m = jnp.einsum("Hh,bhw,Ww->bHW", rows, m, cols, precision="highest")
  lo, hi = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
  return jnp.clip((m - lo) / (hi - lo + 1e-7), 0.0, 1.0)


def _reference_run(module, variables, x, ids, steps, lr=0.1):
  """Opti-CAM by hand: A from Flax's capture_intermediates, the target logits of ``x * mask`` from module.apply,
  jax.grad of their negated sum and optax.adam, step by step in Python. Returns the weights after each step
  (T, B, C) and the objective (B, T + 1)."""
  a = jnp.asarray(ref.value_and_grad_at(module, variables, x, LAYER, np.asarray(ids))[0])

  @jax.jit
  def scores_and_grad(w):
    def total(w):
      s = module.apply(variables, x * _reference_masks(a, w)[..., None])[jnp.arange(x.shape[0]), ids]
      return -jnp.sum(s), s

    (_, s), g = jax.value_and_grad(total, has_aux=True)(w)
    return s, g

  w = jnp.zeros((x.shape[0], a.shape[-1]))
  opt = optax.adam(lr)
  state = opt.init(w)
  weights, objective = [], []
  for _ in range(steps):
    s, g = scores_and_grad(w)
    updates, state = opt.update(g, state, w)
    w = optax.apply_updates(w, updates)
    weights.append(jax.nn.softmax(w, axis=-1))
    objective.append(s)
  objective.append(scores_and_grad(w)[0])
  return jnp.stack(weights), jnp.stack(objective, axis=-1)


def test_steps_equal_a_hand_written_optax_loop(convnet):
  module, variables, x, ids = convnet
  tap = jaxcam.linen_tap(module, variables, LAYER)
  weights, objective = _reference_run(module, variables, x[:2], ids[:2], 3)
  for steps in (1, 3):  # one step (Adam's first is about lr * sign(g)) and three (its moments matter)
    got = jaxcam.opticam_trajectory(tap, x[:2], ids[:2], steps=steps)
    assert got.weights.shape == (2, 1, 8) and got.objective.shape == (2, 1, steps + 1)
    np.testing.assert_allclose(got.weights[:, 0], weights[steps - 1], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got.objective[:, 0], objective[:, : steps + 1], rtol=2e-4, atol=1e-5)
  assert not np.allclose(weights[-1], 1 / 8, atol=1e-3), "the weights moved from the uniform start"
  assert float(objective[:, -1].mean()) > float(objective[:, 0].mean()), "and the objective went up"


@pytest.mark.slow  # two compiled programs of 20-50 steps (~5 s); the default tier has the reference check
def test_the_map_keeps_at_least_the_uniform_masks_logit(convnet):
  """On average over a batch, the returned map used as a mask keeps at least the target logit of the uniform start
  (both masks and logits computed here, from the maps `explain` returns and module.apply)."""
  module, variables, x, ids = convnet
  tap = jaxcam.linen_tap(module, variables, LAYER)
  maps = jaxcam.explain("opticam", tap, x, target=ids, steps=20).maps
  a = jnp.asarray(ref.value_and_grad_at(module, variables, x, LAYER, np.asarray(ids))[0])
  uniform = _reference_masks(a, jnp.zeros((x.shape[0], a.shape[-1])))

  def logit(mask):
    return module.apply(variables, x * mask[..., None])[jnp.arange(x.shape[0]), ids]

  final, start = logit(maps), logit(uniform)
  assert float(final.mean()) > float(start.mean()) + 1e-3, (final, start)


def test_a_batch_equals_its_images_and_targets_one_by_one(convnet):
  module, variables, x, ids = convnet
  tap = jaxcam.linen_tap(module, variables, LAYER)
  two = jnp.stack([ids, (ids + 1) % 5], axis=1)  # (B, K=2) targets: each pair optimised on its own
  batch = jaxcam.explain("opticam", tap, x[:2], target=two[:2], steps=4).maps
  assert batch.shape == (2, 2, 12, 12)
  for b in range(2):
    for k in range(2):
      one = jaxcam.explain("opticam", tap, x[b : b + 1], target=two[b : b + 1, k], steps=4).maps[0]
      np.testing.assert_allclose(batch[b, k], one, atol=2e-5)


@pytest.mark.slow  # two compiled programs of 20-50 steps (~5 s); the default tier has the reference check
def test_the_row_through_explain_and_explain_many(convnet):
  module, variables, x, ids = convnet
  tap = jaxcam.linen_tap(module, variables, LAYER)
  spec = jaxcam.get_method("opti-cam")
  assert spec.name == "opticam" and spec.expensive() and spec.output == "channel"
  assert spec.defaults() == {"steps": 50, "learning_rate": 0.1, "baseline": 0.0}
  with pytest.raises(ValueError, match="allow_expensive=True"):
    jaxcam.explain_many(["opticam"], tap, x[:2], target=ids[:2])
  many = jaxcam.explain_many(["opticam", "gradcam"], tap, x[:2], target=ids[:2], allow_expensive=True)
  alone = jaxcam.opticam(tap, x[:2], target=ids[:2])  # the defaults: 50 steps
  np.testing.assert_allclose(many["opticam"].maps, alone, atol=1e-5)
  assert np.isfinite(alone).all() and alone.min() >= 0 and np.allclose(alone.max(axis=(1, 2)), 1.0, atol=1e-4)


@pytest.mark.parametrize(
  "options,error,message",
  [
    ({"steps": 0}, ValueError, "Expected `steps` to be a positive int, got 0"),
    ({"steps": 2.5}, TypeError, "Expected `steps` to be a positive int, got 2.5"),
    ({"learning_rate": float("nan")}, ValueError, "Expected `learning_rate` to be a finite number > 0, got nan"),
    ({"learning_rate": float("inf")}, ValueError, "`learning_rate` to be a finite number > 0, got inf"),
    ({"learning_rate": 0.0}, ValueError, "Opti-CAM's default .the authors' code. is 0.1"),
    ({"learning_rate": "fast"}, TypeError, "Expected `learning_rate` to be a number, got 'fast'"),
  ],
)
def test_bad_options_are_clear_errors(convnet, options, error, message):
  module, variables, x, ids = convnet
  tap = jaxcam.linen_tap(module, variables, LAYER)
  with pytest.raises(error, match=message):
    jaxcam.explain("opticam", tap, x[:1], target=ids[:1], **options)
  with pytest.raises(error, match=message):
    opticam.trajectory(tap, x[:1], ids[:1], **options)


@pytest.mark.slow
def test_explain_batches_explain_model_and_the_cli(convnet, tmp_path):
  """The row through the batch, one-call and command-line entry points, with few steps (``--option steps=3``)."""
  import json

  from PIL import Image

  from jaxcam import cli

  module, variables, x, ids = convnet
  pixels = np.round(np.asarray(x) * 255).astype(np.uint8)  # explain_model and the CLI read 8-bit images
  x = jnp.asarray(pixels, jnp.float32) / 255
  tap = jaxcam.linen_tap(module, variables, LAYER)
  direct = jaxcam.explain("opticam", tap, x, target=ids, steps=3).maps
  out = list(jaxcam.explain_batches("opticam", tap, [(x[:2], ids[:2]), (x[2:], ids[2:])], steps=3))
  np.testing.assert_allclose(np.concatenate([o.maps for o in out]), direct, atol=1e-5)
  one = jaxcam.explain_model((module, variables), pixels, method="opticam", layer=LAYER, target=ids, steps=3)
  np.testing.assert_allclose(np.asarray(one.maps), direct, atol=1e-5)
  Image.fromarray(pixels[0]).save(tmp_path / "a.png")
  args = ["explain", str(tmp_path / "a.png"), "--model", "tests.methods.test_opticam:tiny_model", "--size", "12"]
  args += ["--layer", LAYER, "--method", "opticam", "--option", "steps=3", "--target", str(int(ids[0]))]
  assert cli.main(args + ["--out", str(tmp_path / "o")]) == 0
  manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
  assert manifest["method"] == "opticam"
  with np.load(tmp_path / "o" / "shards" / "maps-00000.npz") as maps:
    np.testing.assert_allclose(maps[manifest["entries"]["a.png"]["index"]], direct[0], atol=1e-3)


def tiny_model():
  """The test ConvNet as ``(module, variables)``, for the CLI's ``--model package.module:attribute``."""
  module = nets.ConvNet()
  return module, module.init(jax.random.key(SEED), jnp.zeros((1, 12, 12, 3)))
