"""Taps: gradients equal closed forms / hand-split models; paths, multi-layer, nnx, errors."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from jaxcam import core
from tests import nets, reference
from tests.nets import Block


def _grads(tap, x, classes):
  fwd = core.forward_and_grads(tap, x, jnp.asarray(classes))
  return fwd.activations[0], fwd.grads[0][:, 0], fwd.logits


def _closed_form(kernel, a, classes):
  """dS/dA for logits = W^T mean_hw(A) + b: W[:, c] / (h w), independent of A."""
  b, h, w, c = a.shape
  col = np.asarray(kernel)[:, classes].T  # (B, C)
  return np.broadcast_to(col[:, None, None, :] / (h * w), (b, h, w, c))


def _resnet():
  module = nets.ResNetTiny()
  x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3))
  variables = nets.randomize_batch_stats(module.init(jax.random.key(3), x))
  return module, variables, x


def test_nnx_containers_list_and_tap():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.convs = nnx.List([nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.Conv(8, 8, (3, 3), rngs=rngs)])
      self.seq = nnx.Sequential(nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.relu)
      self.fc = nnx.Linear(8, 4, rngs=rngs)

    def __call__(self, x):
      for conv in self.convs:
        x = nnx.relu(conv(x))
      return self.fc(self.seq(x).mean((1, 2)))

  model = Net(nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  infos = {i.path: i for i in jaxcam.list_layers(model, x=x)}
  assert infos["convs/1"].shape == (2, 8, 8, 8) and infos["seq/layers/0"].type == "Conv"
  assert infos["fc"].shape == (2, 4)
  for layer in ("convs/1", "seq/layers/0"):
    assert jaxcam.gradcam(jaxcam.nnx_tap(model, layer), x).shape == (2, 8, 8)


@pytest.mark.fast
def test_layer_filters_resolve_to_one_path_and_list_layers_reads_capture_intermediates(vit):
  module, variables, x = vit
  pick_block1 = lambda mdl, name: isinstance(mdl, Block) and mdl.name == "block1"
  tap = jaxcam.linen_tap(module, variables, pick_block1, example=x, layout=jaxcam.layouts.tokens())
  assert tap.layer == "block1"
  by_path = jaxcam.linen_tap(module, variables, "block1", layout=jaxcam.layouts.tokens())
  np.testing.assert_allclose(jaxcam.gradcam(tap, x), jaxcam.gradcam(by_path, x), atol=1e-6)
  multi = jaxcam.linen_tap(
    module, variables, ["block0", pick_block1], example=jax.ShapeDtypeStruct(x.shape, x.dtype),
    layout=jaxcam.layouts.tokens(),
  )  # fmt: skip
  assert multi.layer == ("block0", "block1")
  with pytest.raises(ValueError, match=r"exactly one submodule __call__ .* it selects 2: block0, block1"):
    jaxcam.linen_tap(module, variables, lambda mdl, name: isinstance(mdl, Block), example=x)
  with pytest.raises(ValueError, match="pass `example=`"):
    jaxcam.linen_tap(module, variables, pick_block1)
  # list_layers: shapes from Flax's capture_intermediates, call order and types from the calls, a layout hint
  infos = {i.path: i for i in jaxcam.list_layers(module, variables, x)}
  assert list(infos)[:2] == ["embed", "block0"]
  assert infos["block0"].shape == (2, 17, 16) and infos["block0"].type == "Block"
  assert infos["block0"].layout.startswith("tokens(prefix=1)") and infos["embed"].layout == "grid (default)"
  assert infos["head"].layout == "no spatial axes" and "tokens(prefix=1)" in str(infos["block0"])
  _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  assert infos["block1/MultiHeadDotProductAttention_0"].shape == (
    state["intermediates"]["block1"]["MultiHeadDotProductAttention_0"]["__call__"][0].shape
  )


@pytest.mark.fast
def test_a_module_called_once_per_scan_step_is_listed_as_such():
  class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
      body = nn.scan(lambda m, c, _: (m(c), None), variable_broadcast="params", split_rngs={"params": False}, length=3)
      y, _ = body(nn.Dense(4, name="step"), x, None)
      return nn.Dense(2, name="out")(y)

  x = jnp.ones((2, 4))
  module = Scanned()
  variables = module.init(jax.random.key(0), x)
  infos = {i.path: i for i in jaxcam.list_layers(module, variables, x)}
  assert infos["out"].calls == 1 and infos["out"].shape == (2, 2)
  assert "step" in infos and "not tappable" not in str(infos["out"])


def test_nnx_vit_tokens_match_a_hand_split_and_auto_detection():
  from flax import nnx

  class NnxBlock(nnx.Module):
    def __init__(self, dim, rngs):
      self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=dim, decode=False, rngs=rngs)
      self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
      self.mlp = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x):
      y = self.norm1(x)
      x = x + self.attn(y, y)
      return x + self.mlp(nnx.gelu(self.norm2(x)))

  class NnxViT(nnx.Module):
    def __init__(self, rngs, dim=16):
      self.embed = nnx.Conv(3, dim, (4, 4), strides=4, rngs=rngs)
      self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, dim)) * 0.02)
      self.blocks = nnx.List([NnxBlock(dim, rngs) for _ in range(2)])
      self.norm = nnx.LayerNorm(dim, rngs=rngs)
      self.head = nnx.Linear(dim, 5, rngs=rngs)

    def tokens(self, x):
      t = self.embed(x).reshape(x.shape[0], -1, self.cls.shape[-1])
      return jnp.concatenate([jnp.broadcast_to(self.cls[...], (x.shape[0], 1, t.shape[-1])), t], axis=1)

    def __call__(self, x):
      t = self.tokens(x)
      for b in self.blocks:
        t = b(t)
      return self.head(self.norm(t)[:, 0])  # the head reads CLS

  model = NnxViT(nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
  ids = np.array([1, 4])
  tap = jaxcam.nnx_tap(model, "blocks/1/norm1", layout=jaxcam.layouts.tokens(prefix=1))
  maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)

  # by hand: the network split at blocks[1].norm1 (its output y feeds the attention; x0 is the residual)
  last = model.blocks[1]
  x0 = model.blocks[0](model.tokens(x))
  y = np.asarray(last.norm1(x0))

  def logits_from(y):
    t = x0 + last.attn(y, y)
    t = t + last.mlp(nnx.gelu(last.norm2(t)))
    return model.head(model.norm(t)[:, 0])

  g = np.asarray(jax.grad(lambda y: jnp.sum(logits_from(y)[jnp.arange(2), ids]))(jnp.asarray(y)))
  patches, gp = y[:, 1:], g[:, 1:]
  by_hand = np.maximum(np.sum(gp.mean(axis=1, keepdims=True) * patches, axis=-1), 0).reshape(2, 4, 4)
  np.testing.assert_allclose(maps, by_hand, rtol=1e-4, atol=1e-6)
  # the auto-detection picks the same layer: after it, only CLS reaches the head
  layer, layout, _ = jaxcam.find_layer(model, x, ids)
  assert layer == "blocks/1/norm1" and layout == jaxcam.layouts.tokens(prefix=1)


@pytest.mark.fast
def test_forward_runs_the_plain_model(small_linen):
  module, variables, x = small_linen
  bogus = jaxcam.linen_tap(module, variables, "no/such/layer")  # forward never looks for the layer
  np.testing.assert_allclose(bogus.forward(x), module.apply(variables, x), atol=1e-6)
  nnx_tap = jaxcam.nnx_tap(nets.convnet_nnx(variables), "body_1")
  np.testing.assert_allclose(nnx_tap.forward(x), module.apply(variables, x), atol=1e-6)
  jaxpr = str(jax.make_jaxpr(bogus.forward)(x))
  assert jaxpr.count("conv_general_dilated") == 3  # one pass, nothing recorded twice


@pytest.mark.fast
def test_taps_targets_and_diagonals_are_registered_dataclasses(net):
  taps, _, x, t = net
  for tap in taps.values():
    leaves, treedef = jax.tree_util.tree_flatten(tap)
    assert dataclasses.is_dataclass(tap) and leaves
    assert jax.tree_util.tree_unflatten(treedef, leaves).layer == tap.layer
  target = jaxcam.targets.softmax(t)
  assert jax.tree_util.tree_leaves(target)[0] is t and dataclasses.is_dataclass(target)
  d = jaxcam.derivatives.diagonals(taps["linen"], x, t)
  g, d2, d3 = d
  assert dataclasses.is_dataclass(d) and d.strategy in ("structured", "generic") and g.shape == d2.shape == d3.shape
  assert jax.tree_util.tree_structure(d).num_leaves == 4


@pytest.mark.fast
def test_linen_gradient_closed_form_gap_dense():
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = module.init(jax.random.key(1), x)
  classes = np.array([1, 3])
  a, g, logits = _grads(jaxcam.linen_tap(module, variables), x, classes)
  np.testing.assert_allclose(g, _closed_form(variables["params"]["fc"]["kernel"], a, classes), rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(logits, module.apply(variables, x), rtol=1e-6)


@pytest.mark.fast
def test_linen_input_tap_gradient_is_masked_by_relu():
  """where='input' on the Dense sees the pooled vector; on 'features' the pre-activation is masked by ReLU."""
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = module.init(jax.random.key(1), x)
  classes = np.array([2, 0])
  tap = jaxcam.linen_tap(module, variables, "features/conv")
  pre, g, _ = _grads(tap, x, classes)
  expected = _closed_form(variables["params"]["fc"]["kernel"], pre, classes) * (np.asarray(pre) > 0)
  np.testing.assert_allclose(g, expected, rtol=1e-6, atol=1e-8)
  # The same tensor tapped as the *input* of nothing else: tap the Dense's input (the pooled vector).
  pooled_tap = jaxcam.linen_tap(module, variables, "fc", where="input")
  logits, pooled = pooled_tap(x)
  np.testing.assert_allclose(pooled, jnp.mean(nn.relu(pre), axis=(1, 2)), rtol=1e-6)


@pytest.mark.fast
def test_nnx_gradient_closed_form_and_model_untouched():
  model = nets.GapDenseNnx(nnx.Rngs(0))
  before = jax.tree.map(np.asarray, nnx.state(model))
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  classes = np.array([0, 2])
  tap = jaxcam.nnx_tap(model, "features", where="output")
  fwd = core.forward_and_grads(tap, x, jnp.asarray(classes))
  # The tapped tensor is the conv output (pre-ReLU): closed form masked by ReLU.
  a = np.asarray(fwd.activations[0])
  expected = _closed_form(model.fc.kernel[...], a, classes) * (a > 0)
  np.testing.assert_allclose(fwd.grads[0][:, 0], expected, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(fwd.logits, model(x), rtol=1e-6)
  after = jax.tree.map(np.asarray, nnx.state(model))
  jax.tree.map(np.testing.assert_array_equal, before, after)


@pytest.mark.parametrize("layer", ["layer_0", "layer_1/bn1", "layer_1/conv2"])
def test_linen_deep_model_matches_hand_split(layer):
  """A tap inside residual blocks with eval BatchNorm equals jax.grad of the model split by hand."""
  module, variables, x = _resnet()
  classes = np.array([4, 1])
  tap = jaxcam.linen_tap(module, variables, layer)
  a, g, logits = _grads(tap, x, classes)

  # Hand split: run the model with the layer's output replaced by an explicit argument (flax's own
  # intercept-free route: module.apply with a bound submodule is not available, so re-implement the net).
  p, s = variables["params"], variables["batch_stats"]

  def bn(y, name, block):
    st, pp = s[block][name], p[block][name]
    v = lambda t: t[None, None, None, :]
    return (y - v(st["mean"])) / jnp.sqrt(v(st["var"]) + 1e-5) * v(pp["scale"]) + v(pp["bias"])

  def conv(y, kernel):
    return jax.lax.conv_general_dilated(
      y, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )

  def block(y, name, replace=None):
    pb = p[name]
    t = conv(y, pb["conv1"]["kernel"])
    if replace and replace[0] == "conv1":
      t = replace[1]
    t = bn(t, "bn1", name)
    if replace and replace[0] == "bn1":
      t = replace[1]
    t = jax.nn.relu(t)
    t = conv(t, pb["conv2"]["kernel"])
    if replace and replace[0] == "conv2":
      t = replace[1]
    out = jax.nn.relu(y + bn(t, "bn2", name))
    return out

  def net(x, A):
    y = jax.nn.relu(conv(x, p["stem"]["kernel"]) + p["stem"]["bias"][None, None, None, :])
    blk, _, sub = layer.partition("/")
    y = block(y, "layer_0", (sub, A) if blk == "layer_0" and sub else None)
    if layer == "layer_0":
      y = A
    y = block(y, "layer_1", (sub, A) if blk == "layer_1" and sub else None)
    return y.mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"][None, :]

  np.testing.assert_allclose(net(x, a), logits, rtol=1e-5, atol=1e-5)
  g_ref = jax.grad(lambda A: net(x, A)[jnp.arange(2), classes].sum())(a)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


@pytest.mark.fast
def test_head_replaces_layer_and_residual_reads_x():
  module, variables, x = _resnet()
  tap = jaxcam.linen_tap(module, variables, "layer_1/conv2")
  logits, a = tap(x)
  np.testing.assert_allclose(tap.head(x, a), logits, rtol=1e-6)
  assert not np.allclose(tap.head(x, a * 2.0), logits)
  delta = 0.1 * jax.random.normal(jax.random.key(0), a.shape)
  np.testing.assert_allclose(tap(x, delta)[0], tap.head(x, a + delta), rtol=1e-5, atol=1e-6)


@pytest.mark.fast
def test_multi_layer_single_forward_matches_single_taps():
  module, variables, x = _resnet()
  multi = jaxcam.linen_tap(module, variables, ["layer_0", "layer_1/conv1"])
  assert multi.layer == ("layer_0", "layer_1/conv1")
  logits, (a0, a1) = multi(x)
  np.testing.assert_allclose(a0, jaxcam.linen_tap(module, variables, "layer_0")(x)[1], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a1, jaxcam.linen_tap(module, variables, "layer_1/conv1")(x)[1], rtol=1e-6, atol=1e-6)
  fwd = core.forward_and_grads(multi, x, jnp.array([0, 1]))
  g1 = core.forward_and_grads(jaxcam.linen_tap(module, variables, "layer_1/conv1"), x, jnp.array([0, 1]))
  np.testing.assert_allclose(fwd.grads[1], g1.grads[0], rtol=1e-6)


@pytest.mark.fast
def test_paths_accept_slash_index_and_tuple(small_linen):
  module, variables, x = small_linen
  a_ref = jaxcam.linen_tap(module, variables, "body_1")(x)[1]
  # every spelling resolves to the same path, so the same program runs: exact
  for layer in ("body/1", ("body", 1), "body_1/", None):
    np.testing.assert_array_equal(jaxcam.linen_tap(module, variables, layer)(x)[1], a_ref)


def test_linen_remat_layer():
  """A tap on an nn.remat layer reads what the block without remat computes (same params, applied by hand), its
  gradient is GAP + Dense's closed form, and the jitted Grad-CAM is the numpy one from those."""

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.remat(nets.ConvBlock)(4, name="r")(x)
      return nn.Dense(3)(x.mean((1, 2)))

  m = Net()
  x = jax.random.normal(jax.random.key(1), (2, 6, 6, 3))
  v = m.init(jax.random.key(0), x)
  classes = np.array([0, 2])
  tap = jaxcam.linen_tap(m, v, "r")
  a, g, _ = _grads(tap, x, classes)
  a_ref = np.asarray(nets.ConvBlock(4).apply({"params": v["params"]["r"]}, x), np.float64)
  g_ref = _closed_form(v["params"]["Dense_0"]["kernel"], a_ref, classes)
  np.testing.assert_allclose(a, a_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-8)
  maps = jax.jit(jaxcam.gradcam)(tap, x, jnp.asarray(classes))
  expected = reference.postprocess(reference.channel_map(reference.gradcam_w(a_ref, g_ref), a_ref), (6, 6))
  assert expected.max() > 0.5
  np.testing.assert_allclose(maps, expected, atol=2e-4)


def test_function_tap_grads_reach_params():
  w = jnp.array([[1.0, -2.0], [0.5, 3.0]])

  def body(params, x):
    return jnp.tanh(x @ params["w"])

  def head(params, x, a):
    return jnp.stack([a.sum((1, 2, 3)), (a**2).sum((1, 2, 3))], axis=-1)

  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 2))
  tap = jaxcam.function_tap(body, head, {"w": w})
  a, g, _ = _grads(tap, x, np.array([1, 1]))
  np.testing.assert_allclose(g, 2 * a, rtol=1e-6)

  def loss(params):
    return jaxcam.gradcam(jaxcam.function_tap(body, head, params), x, target=1, normalize=False).sum()

  grad_w = jax.grad(loss)({"w": w})["w"]
  assert np.abs(grad_w).sum() > 0


@pytest.mark.fast
def test_unknown_layer_lists_available_and_closest(small_linen):
  module, variables, x = small_linen
  with pytest.raises(jaxcam.LayerNotFoundError) as err:
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "body_3"), x)
  msg = str(err.value)
  assert "'body_3'" in msg and "Closest" in msg and "body_2" in msg and "fc" in msg


@pytest.mark.fast
def test_unknown_nnx_layer():
  model = nets.GapDenseNnx(nnx.Rngs(0))
  with pytest.raises(KeyError, match="Closest: 'features'"):
    jaxcam.nnx_tap(model, "feature")


@pytest.mark.fast
def test_no_default_layer_lists_candidates():
  module, variables, _ = _resnet()
  with pytest.raises(ValueError, match="declares no `default_layer`.*layer_0"):
    jaxcam.linen_tap(module, variables)


@pytest.mark.fast
def test_layer_called_twice_is_an_error():
  class Shared(nn.Module):
    @nn.compact
    def __call__(self, x):
      block = nets.ConvBlock(3, name="shared")
      return nn.Dense(2)(block(block(x)).mean((1, 2)))

  m = Shared()
  x = jnp.ones((1, 5, 5, 3))
  v = m.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="called more than once"):
    jaxcam.gradcam(jaxcam.linen_tap(m, v, "shared"), x)


@pytest.mark.fast
def test_non_spatial_layer_and_bad_inputs(small_linen):
  module, variables, x = small_linen
  with pytest.raises(ValueError, match=r"layer 'fc'.*\(B, h, w, C\)"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "fc"), x)
  tap = jaxcam.linen_tap(module, variables)
  with pytest.raises(ValueError, match="channels-first"):
    jaxcam.gradcam(tap, jnp.moveaxis(x, -1, 1))
  with pytest.raises(ValueError, match=r"x\[None\]"):
    jaxcam.gradcam(tap, x[0])
  with pytest.raises(TypeError, match="floating point"):
    jaxcam.gradcam(tap, (x * 255).astype(jnp.uint8))
  with pytest.raises(TypeError, match="path string"):
    jaxcam.linen_tap(module, variables, 3)
  with pytest.raises(ValueError, match="inference mode"):
    jaxcam.linen_tap(module, variables, mutable=["batch_stats"])


@pytest.mark.fast
def test_list_layers(small_linen):
  module, variables, x = small_linen
  infos = jaxcam.list_layers(module, variables, x)
  paths = [i.path for i in infos]
  assert paths == ["body_0", "body_0/conv", "body_1", "body_1/conv", "body_2", "body_2/conv", "fc"]
  assert dict((i.path, i.shape) for i in infos)["body_1"] == (3, 6, 6, 8)
  nnx_infos = jaxcam.list_layers(nets.GapDenseNnx(nnx.Rngs(0)), x)
  assert [(i.path, i.shape) for i in nnx_infos] == [("features", (3, 12, 12, 5)), ("fc", (3, 4))]


@pytest.mark.fast
def test_layer_inside_nn_scan_is_refused_or_single():
  class Scanned(nn.Module):
    @nn.compact
    def __call__(self, x):
      body = nn.scan(lambda m, c, _: (m(c), None), variable_broadcast="params", split_rngs={"params": False}, length=2)
      y, _ = body(nets.ConvBlock(3, name="step"), x, None)
      return nn.Dense(2)(y.mean((1, 2)))

  m = Scanned()
  x = jnp.ones((1, 5, 5, 3))
  v = m.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="called more than once"):
    jaxcam.gradcam(jaxcam.linen_tap(m, v, "step"), x)


@pytest.mark.fast
def test_import_has_no_global_side_effects():
  import subprocess
  import sys

  code = (
    "import jax; before = dict(jax.config.values); import os; env = dict(os.environ); import jaxcam; "
    "import jaxcam.models, jaxcam.viz, jaxcam.cli; after = dict(jax.config.values); "
    "assert before == after, set(before.items()) ^ set(after.items()); "
    "assert env.get('XLA_FLAGS') == os.environ.get('XLA_FLAGS'); print('ok')"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.fast
def test_the_tap_protocol_reads_dense_layers_names_layers_and_intercepts(small_linen):
  """What methods may ask of any tap: `dense` (a Dense layer's kernel and bias by path, or the declared fc_layer),
  `layer_index` (which tapped layer a module path is, in the backend's spelling) and `intercept`."""
  module = nets.GapDense()
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = module.init(jax.random.key(1), x)
  linen = jaxcam.linen_tap(module, variables)
  for path in (None, "fc", ("fc",)):
    kernel, bias = linen.dense(path)
    np.testing.assert_array_equal(kernel, variables["params"]["fc"]["kernel"])  # read, not computed
    np.testing.assert_array_equal(bias, variables["params"]["fc"]["bias"])
  with pytest.raises(jaxcam.LayerNotFoundError, match="fc.*'fcc'.*Closest.*'fc'"):
    linen.dense("fcc")
  with pytest.raises(ValueError, match="Dense layer with a 'kernel'"):
    linen.dense("features")
  model = nets.GapDenseNnx(nnx.Rngs(0))
  kernel, bias = jaxcam.nnx_tap(model, "features").dense()
  np.testing.assert_array_equal(kernel, model.fc.kernel[...])
  np.testing.assert_array_equal(bias, model.fc.bias[...])
  fn = jaxcam.function_tap(nets.convnet_body, nets.convnet_head, small_linen[1])
  with pytest.raises(ValueError, match="no named layers.*kernel array"):
    fn.dense()
  # layer_index: linen spells list entries 'blocks_6'; both spellings name the tapped layer
  res_module, res_variables, _ = _resnet()
  res = jaxcam.linen_tap(res_module, res_variables, ["layer/0", "layer_1/conv1"])
  assert res.layer_index(("layer_1", "conv1")) == 1 and res.layer_index(("layer_0",)) == 0  # linen's spelling
  assert res.layer_index(("layer_1",)) is None and fn.layer_index(("body",)) is None
  # intercept: every submodule call with its path; the output is the model's own
  seen = []

  def record(call, args, kwargs, mdl, path):
    seen.append("/".join(path))
    return call(*args, **kwargs)

  assert linen.can_intercept and not fn.can_intercept
  np.testing.assert_allclose(linen.intercept(x, record), module.apply(variables, x), rtol=1e-6, atol=1e-6)
  assert seen[:2] == ["features", "features/conv"] and "fc" in seen
  doubled = linen.intercept(x, lambda call, a, k, mdl, path: 2 * call(*a, **k) if path == ("fc",) else call(*a, **k))
  np.testing.assert_allclose(doubled, 2 * module.apply(variables, x), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="cannot intercept"):
    fn.intercept(x, record)
