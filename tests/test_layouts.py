"""`jaxcam.layouts`: tokens with a prefix, tuple-valued layers, channels-first, 1-D sequences and 3-D volumes,
each against a hand computation."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests import nets, reference
from tests.nets import Net3d, TinyViT
from tests.reference import gradcam_by_hand


def _value_and_grad_by_hand(module, variables, x, name, ids):
  """A top-level layer's value (Flax's capture_intermediates) and the gradient of the batch-summed target logits
  w.r.t. it (an interceptor adding a perturbation): the reference the taps are checked against."""

  def logits_with(delta):
    def icpt(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if context.module.name == name else out

    with nn.intercept_methods(icpt):
      return module.apply(variables, x)

  _, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  a = np.asarray(state["intermediates"][name]["__call__"][0])
  g = jax.grad(lambda d: jnp.sum(logits_with(d)[jnp.arange(len(ids)), ids]))(jnp.zeros(a.shape))
  return a, np.asarray(g)


class Net1d(nn.Module):
  @nn.compact
  def __call__(self, x):  # (B, L, C)
    x = nn.relu(nn.Conv(8, (3,), name="conv1")(x))
    x = nn.relu(nn.Conv(8, (3,), strides=2, name="conv2")(x))
    return nn.Dense(4, name="fc")(x.mean(axis=1))


@dataclasses.dataclass(frozen=True)
class _Tokens:
  """A layout: the layer's value is (B, h*w, C) tokens."""

  h: int
  w: int

  def to_grid(self, value):
    return value.reshape(value.shape[0], self.h, self.w, value.shape[-1])

  def from_grid(self, grid, value):
    return grid.reshape(value.shape)


def test_gradcam_on_vit_tokens_matches_a_hand_split(vit):
  module, variables, x = vit
  ids = np.array([1, 3])
  tap = jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens(prefix=1))
  maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)
  np.testing.assert_allclose(maps, gradcam_by_hand(module, variables, x, "block0", ids), rtol=1e-4, atol=1e-6)
  assert jaxcam.gradcam(tap, x, ids).shape == (2, 16, 16)  # upsampled to the input
  # a pgc-style reshape_transform (defined once) gives the same grid, and perturbation methods see the same model
  to_grid = lambda t: t[:, 1:].reshape(t.shape[0], 4, 4, t.shape[-1])
  fn_tap = jaxcam.linen_tap(module, variables, "block0", layout=to_grid)
  np.testing.assert_allclose(jaxcam.gradcam(fn_tap, x, ids, normalize=False, upsample=False), maps, atol=1e-6)
  _, a = tap(x)
  np.testing.assert_allclose(tap.head(x, a), module.apply(variables, x), atol=1e-5)  # CLS kept downstream
  # perturbation methods replace the grid: both layouts put a changed grid back the same way (CLS untouched)
  changed = a * jnp.linspace(0.0, 1.0, 16).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(fn_tap.head(x, changed), tap.head(x, changed), atol=1e-6)
  assert not np.allclose(tap.head(x, changed), tap.head(x, a), atol=1e-4)


def test_tuple_layers_dict_outputs_and_channels_first(vit):
  module, variables, x = vit
  ids = np.array([1, 3])
  expected = jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens()), x, ids)
  by_hand = reference.postprocess(gradcam_by_hand(module, variables, x, "block0", ids), (16, 16))
  assert by_hand.max() > 0.5  # (at block1 every map is zero: the patch tokens reach the CLS head no more)
  np.testing.assert_allclose(expected, by_hand, atol=2e-4)  # the maps the other forms are compared with
  tup = TinyViT(as_tuple=True)
  with pytest.raises(ValueError, match=r"a tuple of 2.*layouts.pick"):
    jaxcam.gradcam(jaxcam.linen_tap(tup, variables, "block0", layout=jaxcam.layouts.tokens()), x, ids)
  picked = jaxcam.linen_tap(tup, variables, "block0", layout=jaxcam.layouts.pick(0, then=jaxcam.layouts.tokens()))
  np.testing.assert_allclose(jaxcam.gradcam(picked, x, ids), expected, atol=1e-6)
  _, a = picked(x)
  tokens_tap = jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens())
  np.testing.assert_allclose(picked.head(x, 0.5 * a), tokens_tap.head(x, 0.5 * a), atol=1e-6)  # put back into the tuple
  # a dict output: a static selector, so a second tap built the same way reuses the compiled program
  dicty = TinyViT(dict_output=True)
  build = lambda: jaxcam.linen_tap(dicty, variables, "block0", layout=jaxcam.layouts.tokens(), output="logits")
  np.testing.assert_allclose(jaxcam.gradcam(build(), x, ids), expected, atol=1e-6)
  before = jaxcam.api._explain_jit._cache_size()
  jaxcam.gradcam(build(), x, ids)
  assert jaxcam.api._explain_jit._cache_size() == before
  with pytest.raises(ValueError, match=r"`output='logit'`: No 'logit' in keys \['logits', 'features'\]"):
    jaxcam.gradcam(jaxcam.linen_tap(dicty, variables, "block0", layout=jaxcam.layouts.tokens(), output="logit"), x)
  # similarity to a reference embedding, read through output="features"
  emb = jaxcam.linen_tap(dicty, variables, "block0", layout=jaxcam.layouts.tokens(), output="features")
  ref = dicty.apply(variables, x[::-1])["features"][0]
  assert jaxcam.gradcam(emb, x, jaxcam.targets.similarity(ref)).shape == (2, 16, 16)
  # channels-first pixels: the tap transposes; x and the maps stay channels-last
  cf = jaxcam.linen_tap(
    TinyViT(channels_first=True), variables, "block0", layout=jaxcam.layouts.tokens(), input_layout="NCHW"
  )
  np.testing.assert_allclose(jaxcam.gradcam(cf, x, ids), expected, atol=1e-6)


@pytest.mark.fast
def test_layout_errors(vit):
  module, variables, x = vit
  with pytest.raises(ValueError, match="square number of patch tokens, got 17 after dropping prefix=0"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens(prefix=0)), x)
  with pytest.raises(ValueError, match=r"Expected 2 x 4 = 8 patch tokens"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0", layout=jaxcam.layouts.tokens(grid=(2, 4))), x)
  with pytest.raises(ValueError, match="already a grid"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "embed", layout=jaxcam.layouts.tokens()), x)
  with pytest.raises(ValueError, match=r"feature map \(B, h, w, C\).*layouts.tokens"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block0"), x)
  with pytest.raises(ValueError, match="input_layout"):
    jaxcam.linen_tap(module, variables, "block0", input_layout="CHW")
  with pytest.raises(TypeError, match="`output`"):
    jaxcam.linen_tap(module, variables, "block0", output=1.5)


@pytest.mark.fast
def test_one_dimensional_model_maps_have_the_input_length():
  module = Net1d()
  x = jax.random.normal(jax.random.key(0), (3, 32, 2))
  variables = module.init(jax.random.key(1), x)
  ids = np.array([0, 1, 3])
  tap = jaxcam.linen_tap(module, variables, "conv2", input_layout="NLC")
  raw = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)

  # by hand: the layer's value and gradient from an interceptor, Grad-CAM's mean-gradient weights
  a, g = _value_and_grad_by_hand(module, variables, x, "conv2", ids)  # (B, 16, 8)
  by_hand = np.maximum(np.sum(g.mean(axis=1, keepdims=True) * a, axis=-1), 0)
  np.testing.assert_allclose(raw, by_hand, rtol=1e-4, atol=1e-6)
  # upsampled to the input length: linear interpolation with half-sample centres, edges held
  up = jaxcam.gradcam(tap, x, ids, normalize=False)
  pos = np.clip((np.arange(32) + 0.5) * 16 / 32 - 0.5, 0, 15)
  np.testing.assert_allclose(up, np.stack([np.interp(pos, np.arange(16), m) for m in by_hand]), rtol=1e-4, atol=1e-6)
  maps = jaxcam.explain_many(["gradcam", "layercam"], tap, x, ids)
  assert maps["layercam"].maps.shape == (3, 32) and maps["gradcam"].feature_sizes == ((16,),)
  with pytest.raises(ValueError, match=r"\(B, L, C\) for a tap with input_layout='NLC'"):
    jaxcam.gradcam(tap, x[:, :, None, :])


def test_volume_gradcam_matches_a_hand_computation_with_trilinear_upsampling(net3d):
  module, variables, x = net3d
  ids = np.array([1, 3])
  tap = jaxcam.linen_tap(module, variables, "block", input_layout="NDHWC")

  a, g = _value_and_grad_by_hand(module, variables, x, "block", ids)  # (B, 3, 5, 4, 8)
  raw = np.sum(g.mean(axis=(1, 2, 3), keepdims=True) * a, axis=-1)
  ex = jaxcam.explain("gradcam", tap, x, ids)
  assert ex.maps.shape == (2, 6, 10, 8) and ex.feature_sizes == ((3, 5, 4),)
  mm = lambda m: (m - m.min(axis=(1, 2, 3), keepdims=True)) / (np.ptp(m, axis=(1, 2, 3), keepdims=True) + 1e-7)
  expected = mm(np.maximum(reference.trilinear(mm(np.maximum(raw, 0)), (6, 10, 8)), 0))
  np.testing.assert_allclose(ex.maps, expected, rtol=1e-4, atol=1e-5)
  raw_maps = jaxcam.gradcam(tap, x, ids, normalize=False, upsample=False)
  np.testing.assert_allclose(raw_maps, np.maximum(raw, 0), atol=1e-6)
  # channels-first volumes: the same maps, still channels-last on jaxcam's side
  cf = Net3d(channels_first=True)
  tap_cf = jaxcam.linen_tap(cf, variables, "block", input_layout="NCDHW")
  np.testing.assert_allclose(jaxcam.gradcam(tap_cf, x, ids), ex.maps, atol=1e-6)
  with pytest.raises(ValueError, match=r"rank 5 \(B, D, H, W, C\)"):
    jaxcam.gradcam(tap, x[0])
  with pytest.raises(ValueError, match="input_layout='NDHWC'"):
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "block"), x)


@pytest.mark.fast
def test_layout_hook_reshapes_tokens_to_a_grid(net):
  taps, variables, x, t = net
  body = lambda p, x: (lambda a: a.reshape(a.shape[0], -1, a.shape[-1]))(nets.convnet_body(p, x))
  head = lambda p, x, tok: tok.mean(axis=1) @ p["params"]["fc"]["kernel"] + p["params"]["fc"]["bias"][None, :]
  tap = jaxcam.function_tap(body, head, variables, layout=_Tokens(6, 6))
  assert tap(x)[1].shape == (3, 6, 6, 8)
  for name in ("gradcam", "layercam", "shapleycam"):
    np.testing.assert_allclose(
      jaxcam.explain(name, tap, x, target=t).maps, jaxcam.explain(name, taps["linen"], x, target=t).maps, atol=1e-5
    )
