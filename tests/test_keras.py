"""Keras 3 models (JAX backend) through `jaxcam.keras_tap`, `list_layers` and `explain_model`, checked against the
model's own outputs, functional sub-models and Grad-CAM computed by hand (a GAP + Dense head's gradient in closed
form)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is imported: Keras reads its backend once

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose

import jaxcam

keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # pragma: no cover - another test imported keras on another backend first
  pytest.skip("keras was imported with a backend other than jax", allow_module_level=True)
layers = keras.layers


def _allow():
  """Keras' own ops broadcast (C,) against (B, ..., C): calls of the model outside the tap need rank promotion."""
  return jax.numpy_rank_promotion("allow")


def _randomize_batchnorm(model, seed: int) -> None:
  """Running statistics away from (0, 1), so that a tap in training mode (batch statistics) would differ."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, layers.BatchNormalization):
      c = layer.moving_mean.shape[0]
      layer.moving_mean.assign(rng.normal(size=c).astype(np.float32))
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=c).astype(np.float32))


@pytest.fixture(scope="module")
def functional():
  keras.utils.set_random_seed(0)
  inp = keras.Input((32, 32, 3))
  h = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inp)
  h = layers.BatchNormalization(name="bn1")(h)
  h = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="features")(h)
  h = layers.GlobalAveragePooling2D(name="pool")(h)
  out = layers.Dense(5, name="fc")(h)
  model = keras.Model(inp, out, name="small_cnn")
  _randomize_batchnorm(model, 0)
  return model


class Subclassed(keras.Model):
  def __init__(self):
    super().__init__(name="subclassed")
    self.conv1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")
    self.features = layers.Conv2D(12, 3, strides=2, padding="same", activation="relu", name="features")
    self.pool = layers.GlobalAveragePooling2D(name="pool")
    self.fc = layers.Dense(4, name="fc")

  def call(self, x):
    return self.fc(self.pool(self.features(self.conv1(x))))


@pytest.fixture(scope="module")
def subclassed():
  keras.utils.set_random_seed(1)
  model = Subclassed()
  with _allow():
    model(np.zeros((1, 32, 32, 3), np.float32))
  return model


@pytest.fixture(scope="module")
def x():
  return jax.random.uniform(jax.random.key(0), (3, 32, 32, 3))


def _hand_gradcam(acts: np.ndarray, kernel: np.ndarray, ids: np.ndarray) -> np.ndarray:
  """Grad-CAM under a GAP + Dense head: dS/dA = W[:, c] / (h w) at every position, so the channel weights are
  W[:, c] / (h w) and the map is relu(sum_k w_k A_k)."""
  h, w = acts.shape[1:3]
  weights = kernel[:, ids].T / (h * w)  # (B, C)
  return np.maximum(np.einsum("bhwc,bc->bhw", acts, weights), 0.0)


def test_output_and_activations_equal_keras(functional, x):
  tap = jaxcam.keras_tap(functional, "features")
  with _allow():
    expected = np.asarray(functional(x, training=False))
    sub = keras.Model(functional.input, functional.get_layer("features").output)
    acts = np.asarray(sub(x, training=False))
  out, a = tap(x)
  assert tap.layer == "features"
  assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  assert_allclose(np.asarray(tap.forward(x)), expected, rtol=1e-5, atol=1e-5)
  assert_allclose(np.asarray(a), acts, rtol=1e-5, atol=1e-5)
  assert "call" not in functional.get_layer("features").__dict__  # the layer's call is restored after the trace


def test_gradcam_on_functional_model_equals_hand_computation(functional, x):
  tap = jaxcam.keras_tap(functional, "features")
  with _allow():
    sub = keras.Model(functional.input, functional.get_layer("features").output)
    acts = np.asarray(sub(x, training=False))
    ids = np.argmax(np.asarray(functional(x, training=False)), axis=-1)
  kernel = np.asarray(functional.get_layer("fc").kernel.value)
  ex = jaxcam.explain("gradcam", tap, x, normalize=False, upsample=False)
  np.testing.assert_array_equal(np.asarray(ex.target), ids)
  assert_allclose(np.asarray(ex.maps), _hand_gradcam(acts, kernel, ids), rtol=1e-4, atol=1e-6)
  # dS/dA by jax.grad of the head written by hand (GAP + Dense), at the sub-model's activations
  bias = np.asarray(functional.get_layer("fc").bias.value)
  head = lambda a: jnp.sum((jnp.mean(a, axis=(1, 2)) @ kernel + bias[None])[jnp.arange(3), ids])
  delta = jnp.zeros(acts.shape)
  tap_grads = jax.grad(lambda d: jnp.sum(tap(x, d)[0][jnp.arange(3), ids]))(delta)
  assert_allclose(np.asarray(tap_grads), np.asarray(jax.grad(head)(jnp.asarray(acts))), rtol=1e-5, atol=1e-9)


def test_subclassed_model(subclassed, x):
  tap = jaxcam.keras_tap(subclassed, "features")
  with _allow():
    expected = np.asarray(subclassed(x))
    acts = np.asarray(subclassed.features(subclassed.conv1(x)))
  out, a = tap(x)
  assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
  assert_allclose(np.asarray(a), acts, rtol=1e-5, atol=1e-5)
  ids = np.argmax(expected, axis=-1)
  ex = jaxcam.explain("gradcam", tap, x, normalize=False, upsample=False)
  kernel = np.asarray(subclassed.fc.kernel.value)
  assert_allclose(np.asarray(ex.maps), _hand_gradcam(acts, kernel, ids), rtol=1e-4, atol=1e-6)
  kernel_read, bias_read = tap.dense()  # the last layer is a Dense: CAM reads it without fc=
  assert_allclose(np.asarray(kernel_read), kernel, rtol=0, atol=0)
  assert bias_read is not None and bias_read.shape == (4,)


def test_jit_vmap_and_grad_through_the_tap(functional, x):
  tap = jaxcam.keras_tap(functional, "features")
  out, a = tap(x)
  traces = []

  @jax.jit
  def run(tap, x):
    traces.append(1)
    return tap(x)

  jit_out, jit_a = run(tap, x)
  assert_allclose(np.asarray(jit_out), np.asarray(out), rtol=1e-5, atol=1e-5)
  assert_allclose(np.asarray(jit_a), np.asarray(a), rtol=1e-5, atol=1e-5)
  run(tap, x + 0.1)
  assert len(traces) == 1  # new inputs with the same shapes never retrace
  one = jax.vmap(lambda xi: tap(xi[None])[0][0])(x)
  assert_allclose(np.asarray(one), np.asarray(out), rtol=1e-5, atol=1e-5)
  # the variables are the tap's leaves: d(sum of logits)/d(fc bias) is the batch size for every class
  grads = jax.grad(lambda t: jnp.sum(t(x)[0]))(tap)
  trainable = functional.trainable_variables
  bias_index = next(k for k, v in enumerate(trainable) if v is functional.get_layer("fc").bias)
  assert_allclose(np.asarray(grads.variables[0][bias_index]), np.full(5, 3.0), rtol=1e-6, atol=0)


def test_list_layers_names_as_summary_prints_them(functional, subclassed, x):
  infos = jaxcam.list_layers(functional, x)
  assert [i.path for i in infos] == [layer.name for layer in functional.layers[1:]]  # the InputLayer never runs
  assert [i.shape for i in infos] == [(3, *layer.output.shape[1:]) for layer in functional.layers[1:]]
  assert {i.path: i.type for i in infos}["bn1"] == "BatchNormalization"
  assert [i.path for i in jaxcam.list_layers(subclassed, x)] == ["conv1", "features", "pool", "fc"]
  found, layout, _ = jaxcam.find_layer(functional, x)
  assert (found, layout) == ("features", None)


def test_nested_model_layers_are_named_under_their_model(x):
  keras.utils.set_random_seed(2)
  inner = keras.Sequential([layers.Conv2D(4, 3, padding="same", name="inner_conv")], name="block")
  inp = keras.Input((32, 32, 3))
  out = layers.Dense(2, name="fc")(layers.GlobalAveragePooling2D(name="pool")(inner(inp)))
  model = keras.Model(inp, out)
  assert [i.path for i in jaxcam.list_layers(model, x)] == ["block", "block/inner_conv", "pool", "fc"]
  with _allow():
    acts = np.asarray(inner(x))
  assert_allclose(np.asarray(jaxcam.keras_tap(model, "block/inner_conv")(x)[1]), acts, rtol=1e-5, atol=1e-5)


def test_explain_model_finds_the_layer_and_matches_hand_gradcam(functional):
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  ex = jaxcam.explain_model(functional, images, normalize=False, upsample=False)
  assert ex.layer == "features"
  x = images.astype(np.float32) / 255.0  # a model of one's own takes pixels in [0, 1]
  with _allow():
    acts = np.asarray(keras.Model(functional.input, functional.get_layer("features").output)(x, training=False))
    ids = np.argmax(np.asarray(functional(x, training=False)), axis=-1)
  kernel = np.asarray(functional.get_layer("fc").kernel.value)
  assert_allclose(np.asarray(ex.maps), _hand_gradcam(acts, kernel, ids), rtol=1e-4, atol=1e-6)


def test_errors(functional):
  with pytest.raises(jaxcam.LayerNotFoundError, match=r"got 'featurs'\. Closest: 'features'"):
    jaxcam.keras_tap(functional, "featurs")
  with pytest.raises(TypeError, match=r"Expected `model` to be a keras\.Model"):
    jaxcam.keras_tap(object(), "features")
  with pytest.raises(ValueError, match="declares no `default_layer`.*conv1, bn1, features"):
    jaxcam.keras_tap(functional)
  with pytest.raises(ValueError, match="did not run in the forward pass"):
    jaxcam.keras_tap(functional, functional.layers[0].name)(np.zeros((1, 32, 32, 3), np.float32))


def test_other_backend_says_to_set_keras_backend(functional, monkeypatch):
  monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
  with pytest.raises(ValueError, match="KERAS_BACKEND=jax.*before keras is first imported"):
    jaxcam.keras_tap(functional, "features")


@pytest.mark.slow
def test_resnet50_explain_model_equals_hand_split():
  keras.utils.set_random_seed(0)
  model = keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3), classes=10)
  images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  ex = jaxcam.explain_model(model, images, normalize=False, upsample=False)
  assert ex.layer == "conv5_block3_out"
  x = keras.applications.resnet.preprocess_input(images.astype(np.float32))  # caffe: BGR, ImageNet means
  with _allow():
    acts = np.asarray(keras.Model(model.input, model.get_layer("conv5_block3_out").output)(x, training=False))
  fc = model.get_layer("predictions")
  kernel, bias = np.asarray(fc.kernel.value), np.asarray(fc.bias.value)
  logits = acts.mean(axis=(1, 2)) @ kernel + bias  # the head by hand, before the softmax
  ids = np.argmax(logits, axis=-1)
  assert_allclose(np.asarray(ex.logits), logits, rtol=1e-4, atol=1e-3)
  assert_allclose(np.asarray(ex.maps), _hand_gradcam(acts, kernel, ids), rtol=1e-3, atol=1e-4)
