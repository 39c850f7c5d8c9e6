"""Layers inside scanned stacks ("blocks/3/norm1"): a small ViT whose blocks run under nn.scan (linen) or nnx.scan
over nnx.vmap-stacked state, against its unrolled twin holding the same weights (slices of the stacked ones)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxcam
from tests.conftest import light_options

DEPTH, DIM = 3, 16


class LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    y = nn.LayerNorm(name="norm1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(y, y)
    h = nn.Dense(2 * DIM, name="fc1")(nn.LayerNorm(name="norm2")(x))
    return x + nn.Dense(DIM, name="fc2")(nn.gelu(h)), None


class LinenViT(nn.Module):
  """8x8 images, 4x4 patches: CLS + 4 tokens, DEPTH blocks (scanned, or unrolled as blocks_i); mean-pooled head."""

  unrolled: bool = False

  @nn.compact
  def __call__(self, x):
    t = nn.Conv(DIM, (4, 4), strides=4, name="embed")(x).reshape(x.shape[0], -1, DIM)
    cls = self.param("cls", nn.initializers.normal(0.5), (1, 1, DIM))
    t = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, DIM)), t], axis=1)
    if self.unrolled:
      for i in range(DEPTH):
        t, _ = LinenBlock(name=f"blocks_{i}")(t, None)
    else:
      stack = nn.scan(LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=DEPTH)
      t, _ = stack(name="blocks")(t, None)
    return nn.Dense(5, name="head")(nn.LayerNorm(name="norm")(t)[:, 1:].mean(axis=1))


class NnxBlock(nnx.Module):
  def __init__(self, rngs):
    self.norm1 = nnx.LayerNorm(DIM, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(2, DIM, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(DIM, rngs=rngs)
    self.fc1 = nnx.Linear(DIM, 2 * DIM, rngs=rngs)
    self.fc2 = nnx.Linear(2 * DIM, DIM, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(nnx.gelu(self.fc1(self.norm2(x))))


def vmapped_blocks(rngs):
  """The stack as large nnx ViTs build it (``nnx.vmap`` over the blocks' constructor); slow to trace."""

  @nnx.split_rngs(splits=DEPTH)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def stacked(rngs):
    return NnxBlock(rngs)

  return stacked(rngs)


def stacked_blocks(rngs):
  """The same structure as `vmapped_blocks` (one NnxBlock, its state stacked on axis 0), from DEPTH blocks made
  eagerly (no trace: the default tier stays fast)."""
  graphdef, first = nnx.split(NnxBlock(rngs))
  states = [first] + [nnx.split(NnxBlock(rngs))[1] for _ in range(DEPTH - 1)]
  return nnx.merge(graphdef, jax.tree.map(lambda *a: jnp.stack(a), *states))


class NnxViT(nnx.Module):
  def __init__(self, rngs, make_blocks=stacked_blocks):
    self.embed = nnx.Conv(3, DIM, (4, 4), strides=4, rngs=rngs)
    self.cls = nnx.Param(jax.random.normal(jax.random.key(7), (1, 1, DIM)) * 0.5)
    self.blocks = make_blocks(rngs)
    self.norm = nnx.LayerNorm(DIM, rngs=rngs)
    self.head = nnx.Linear(DIM, 5, rngs=rngs)

  def tokens(self, x):
    t = self.embed(x).reshape(x.shape[0], -1, DIM)
    return jnp.concatenate([jnp.broadcast_to(self.cls[...], (x.shape[0], 1, DIM)), t], axis=1)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(t, block):
      return block(t)

    return self.head(self.norm(body(self.tokens(x), self.blocks))[:, 1:].mean(axis=1))


class NnxUnrolled(nnx.Module):
  """The same weights as `scanned`, its stack sliced into a list of blocks."""

  def __init__(self, scanned: NnxViT):
    scanned = nnx.clone(scanned)
    self.embed, self.cls, self.norm, self.head = scanned.embed, scanned.cls, scanned.norm, scanned.head
    graphdef, state = nnx.split(scanned.blocks)
    self.blocks = nnx.List([nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state)) for i in range(DEPTH)])

  tokens = NnxViT.tokens

  def __call__(self, x):
    t = self.tokens(x)
    for block in self.blocks:
      t = block(t)
    return self.head(self.norm(t)[:, 1:].mean(axis=1))


@pytest.fixture(scope="module")
def linen_pair():
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  scanned = LinenViT()
  # random weights of init's shapes (an abstract init: compiling Flax's init takes seconds)
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(scanned.init, jax.random.key(1), x)
  v = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.4, jnp.float32), shapes)
  p = dict(v["params"])
  unrolled_params = {k: w for k, w in p.items() if k != "blocks"}
  for i in range(DEPTH):
    unrolled_params[f"blocks_{i}"] = jax.tree.map(lambda a: a[i], p["blocks"])
  return (scanned, v), (LinenViT(unrolled=True), {"params": unrolled_params}), x


@pytest.fixture(scope="module")
def nnx_pair():
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  # random weights of the model's shapes (an abstract construction: eager nnx initializers compile op by op)
  graphdef, shapes = nnx.split(nnx.eval_shape(lambda: NnxViT(nnx.Rngs(1))))
  rng = np.random.default_rng(1)
  scanned = nnx.merge(graphdef, jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.4, s.dtype), shapes))
  return scanned, NnxUnrolled(scanned), x


def _taps(pair, backend, layer, layout):
  """(scanned tap at `layer`, unrolled tap at the same layer) for either backend."""
  if backend == "linen":
    (m, v), (mu, vu), x = pair
    return jaxcam.linen_tap(m, v, layer, layout=layout), jaxcam.linen_tap(mu, vu, layer, layout=layout), x
  m, mu, x = pair
  return jaxcam.nnx_tap(m, layer, layout=layout), jaxcam.nnx_tap(mu, layer, layout=layout), x


@jax.jit
def _act_grad_head(tap, x):
  """A, dS/dA at a zero perturbation (S = logit 0 + logit 3) and the head's output at 2A: three programs."""
  out, a = tap(x)
  zero = jax.tree.map(jnp.zeros_like, a)
  g = jax.grad(lambda d: jnp.sum(tap(x, d)[0][:, jnp.array([0, 3])]))(zero)
  return out, a, g, tap.head(x, jax.tree.map(lambda t: 2 * t, a))


TOKENS = jaxcam.layouts.tokens(prefix=1)
BLOCK = jaxcam.layouts.pick(0, then=TOKENS)


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
  "backend,layer,layout",
  [
    ("nnx", "blocks/0/norm1", TOKENS),  # the default tier: one compile each for the scanned model and its twin
    pytest.param("linen", "blocks/1/fc2", TOKENS, marks=SLOW),
    pytest.param("linen", "blocks/0/norm1", TOKENS, marks=SLOW),
    pytest.param("linen", "blocks/2/attn", TOKENS, marks=SLOW),
    pytest.param("linen", "blocks/1", None, marks=SLOW),
    pytest.param("nnx", "blocks/1/fc2", TOKENS, marks=SLOW),
    pytest.param("nnx", "blocks/2/attn", TOKENS, marks=SLOW),
    pytest.param("nnx", "blocks/1", None, marks=SLOW),
  ],
)
def test_activations_gradients_and_head_equal_the_unrolled_twin(linen_pair, nnx_pair, backend, layer, layout):
  if layer == "blocks/1":  # a linen scan body returns (carry, ys); an nnx block returns the tokens
    layout = BLOCK if backend == "linen" else TOKENS
  pair = linen_pair if backend == "linen" else nnx_pair
  tap, twin, x = _taps(pair, backend, layer, layout)
  got, want = _act_grad_head(tap, x), _act_grad_head(twin, x)
  names = ("output", "A", "dS/dA", "head(2A)")
  for name, a, b in zip(names, got, want):
    a, b = jax.tree.leaves(a)[0], jax.tree.leaves(b)[0]
    assert a.shape == b.shape, name
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=name)
  assert float(jnp.abs(jax.tree.leaves(got[2])[0]).max()) > 0  # not a vacuous zero gradient
  # head(2A) differs from the plain output: the replacement reaches the logits
  assert not np.allclose(np.asarray(got[3]), np.asarray(got[0]), atol=1e-4)


@SLOW
@pytest.mark.parametrize("backend", ["linen", "nnx"])
def test_two_iterations_of_one_layer_in_one_pass(linen_pair, nnx_pair, backend):
  pair = linen_pair if backend == "linen" else nnx_pair
  layers = ["blocks/0/norm2", "blocks/2/norm2"]
  tap, twin, x = _taps(pair, backend, layers, None)
  for a, b in zip(_act_grad_head(tap, x)[1:3], _act_grad_head(twin, x)[1:3]):
    for u, w in zip(a, b):
      np.testing.assert_allclose(np.asarray(u), np.asarray(w), rtol=1e-4, atol=1e-5)
  a0, a2 = tap(x)[1]
  assert not np.allclose(np.asarray(a0), np.asarray(a2), atol=1e-3)  # two different iterations


@SLOW
@pytest.mark.parametrize("backend", ["linen", "nnx"])
def test_gradcam_maps_equal_the_unrolled_twin(linen_pair, nnx_pair, backend):
  pair = linen_pair if backend == "linen" else nnx_pair
  tap, twin, x = _taps(pair, backend, "blocks/2/norm2", TOKENS)
  got = jaxcam.explain("gradcam", tap, x, jnp.array([1, 4]), normalize=False)
  want = jaxcam.explain("gradcam", twin, x, jnp.array([1, 4]), normalize=False)
  assert got.maps.shape == (2, 8, 8) and float(want.maps.max()) > 0
  np.testing.assert_allclose(np.asarray(got.maps), np.asarray(want.maps), rtol=1e-4, atol=1e-6)


def test_list_layers_shows_each_iteration(linen_pair, nnx_pair):
  (m, v), _, x = linen_pair
  linen = {i.path: i for i in jaxcam.list_layers(m, v, x)}
  n, _, x = nnx_pair
  nnx_infos = {i.path: i for i in jaxcam.list_layers(n, x)}
  for infos in (linen, nnx_infos):
    assert infos["blocks"].calls == DEPTH  # the stack itself runs once per iteration
    for k in range(DEPTH):
      assert infos[f"blocks/{k}/norm1"].shape == (2, 5, DIM) and infos[f"blocks/{k}/norm1"].calls == 1
      assert infos[f"blocks/{k}/fc1"].shape == (2, 5, 2 * DIM)
    assert f"blocks/{DEPTH}/norm1" not in infos and "blocks/norm1" not in infos
  assert list(linen).index("blocks/0/fc2") < list(linen).index("blocks/1") < list(linen).index("head")
  assert nnx_infos["blocks/1"].shape == (2, 5, DIM)


@pytest.mark.parametrize("backend", ["linen", "nnx"])
def test_clear_errors_for_missing_bad_or_misspelled_iterations(linen_pair, nnx_pair, backend):
  pair = linen_pair if backend == "linen" else nnx_pair

  def call(layer):  # the scanned model only (the unrolled twin has no such layers); a trace, no compile
    if backend == "linen":
      (m, v), _, x = pair
      return jax.eval_shape(jaxcam.linen_tap(m, v, layer), x)
    m, _, x = pair
    return jax.eval_shape(jaxcam.nnx_tap(m, layer), x)

  with pytest.raises(ValueError, match=r"Add the iteration index.*'blocks/2/norm1' \(0 <= index <= 2\)"):
    call("blocks/norm1")
  with pytest.raises(jaxcam.LayerNotFoundError, match=r"0\.\.2.*got 7"):
    call("blocks/7/norm1")
  with pytest.raises(jaxcam.LayerNotFoundError, match=r"Closest: 'blocks/1/norm1'"):
    call("blocks/1/nrom1")
  with pytest.raises(jaxcam.LayerNotFoundError, match="not stacked"):
    call("head/0")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["linen", "nnx"])
def test_method_table_equals_the_unrolled_twin(linen_pair, nnx_pair, backend):
  """Every gradient row, Score-CAM (gradient-free, masked forward passes) and exact Grad-CAM++ (nested jvp through
  the scan) give the unrolled twin's maps."""
  from jaxcam.methods.table import METHODS

  pair = linen_pair if backend == "linen" else nnx_pair
  tap, twin, x = _taps(pair, backend, "blocks/1/norm2", TOKENS)
  names = [n for n, s in METHODS.items() if "grads" in s.needs and s.applies(tap)] + ["scorecam", "gradcam_pp_exact"]
  assert {"gradcam", "gradcam_pp", "layercam", "xgradcam"} <= set(names)
  target = jnp.array([1, 4])
  for name in dict.fromkeys(names):
    opts = light_options(name)
    got = jaxcam.explain(name, tap, x, target, normalize=False, relu=False, **opts)
    want = jaxcam.explain(name, twin, x, target, normalize=False, relu=False, **opts)
    scale = float(jnp.abs(want.maps).max())
    assert scale > 0, name  # a map, not a vacuous zero
    np.testing.assert_allclose(
      np.asarray(got.maps), np.asarray(want.maps), rtol=1e-4, atol=1e-5 * max(scale, 1.0), err_msg=name
    )


@pytest.mark.slow
def test_a_stack_built_with_nnx_vmap_taps_like_its_unrolled_twin():
  x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  model = NnxViT(nnx.Rngs(2), make_blocks=vmapped_blocks)
  assert jax.tree.map(jnp.shape, nnx.state(model)) == jax.tree.map(jnp.shape, nnx.state(NnxViT(nnx.Rngs(2))))
  tap, twin = jaxcam.nnx_tap(model, "blocks/2/norm1"), jaxcam.nnx_tap(NnxUnrolled(model), "blocks/2/norm1")
  for a, b in zip(_act_grad_head(tap, x), _act_grad_head(twin, x)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
