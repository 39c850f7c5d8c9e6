"""The entry points (`jaxcam.explain`, `explain_many`, the generated method functions): target forms, option
validation, eager checks and their behaviour inside the user's `jax.jit`, tracing and recompilation."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import models
from tests import nets


def re_escape(text: str) -> str:
  import re

  return re.escape(text)


@pytest.fixture(scope="module")
def setup(small_linen):
  module, variables, x = small_linen
  return module, variables, jaxcam.linen_tap(module, variables, "body_1"), x


ENTRY = {
  "gradcam": lambda tap, x, k: jaxcam.gradcam(tap, x, target=1),
  "explain": lambda tap, x, k: jaxcam.explain("gradcam_pp", tap, x, 1).maps,
  "smooth": lambda tap, x, k: jaxcam.explain(jaxcam.smooth("gradcam", num_samples=2, std=0.1), tap, x, key=k).maps,
  "explain_many": lambda tap, x, k: jaxcam.explain_many(["gradcam", "layercam"], tap, x, 1)["layercam"].maps,
  "scorecam": lambda tap, x, k: jaxcam.scorecam(tap, x, target=1),
  "guided_backprop": lambda tap, x, k: jaxcam.guided_backprop(tap, x, 1),
  "guided_gradcam": lambda tap, x, k: jaxcam.guided_gradcam(tap, None, x, 1),
  "sess": lambda tap, x, k: jaxcam.explain(jaxcam.sess("gradcam", scales=(12,)), tap, x, 1).maps,
}


@pytest.mark.fast
def test_a_cls_head_after_the_last_block_warns(vit):
  module, variables, x = vit
  # the final norm's tokens reach the head only through CLS: the patch tokens have zero gradient
  tap = jaxcam.linen_tap(module, variables, "norm", layout=jaxcam.layouts.tokens())
  with pytest.warns(UserWarning, match="CLS token"):
    maps = jaxcam.gradcam(tap, x)
  assert not np.any(np.asarray(maps))


@pytest.mark.fast
def test_array_options_are_traced_and_never_recompile(net):
  taps, variables, x, t = net
  tap = taps["linen"]
  kernel = variables["params"]["fc"]["kernel"]
  by_path = jaxcam.cam(tap, x, target=t, fc="fc")
  np.testing.assert_allclose(jaxcam.cam(tap, x, target=t, fc=kernel), by_path, atol=1e-6)
  calls = []

  @jax.jit
  def user(tap, x, kernel):  # the kernel is a tracer here: no special case needed
    calls.append(1)
    return jaxcam.cam(tap, x, target=t, fc=kernel)

  np.testing.assert_allclose(user(tap, x, kernel), by_path, atol=1e-6)
  before = jaxcam.api.TRACES["cam"]
  other = user(tap, x, kernel[:, ::-1])  # a new kernel: same shapes, no retrace
  assert len(calls) == 1 and jaxcam.api.TRACES["cam"] == before
  np.testing.assert_allclose(other, jaxcam.cam(tap, x, target=4 - t, fc="fc"), atol=1e-6)
  # eager: a new array option value reuses the compiled program too
  jaxcam.cam(tap, x, target=t, fc=kernel * 2.0)
  assert jaxcam.api.TRACES["cam"] == before
  with pytest.raises(TypeError, match="option `fc` to be an array .* or a hashable"):
    jaxcam.cam(tap, x, target=t, fc=["fc"])


@pytest.mark.fast
def test_explain_many_shares_one_pass_and_equals_explain(net):
  taps, _, x, t = net
  tap = taps["linen"]
  many = jaxcam.explain_many(None, tap, x, target=t)
  keyed = {s.name for s in jaxcam.METHODS.values() if "key" in s.defaults()}  # a key must be passed: explain only
  assert "randomcam" in keyed and "finercam" in many and "refinecam" in many
  assert set(many) == {s.name for s in jaxcam.METHODS.values() if not s.expensive() and s.applies(tap)} - keyed
  assert "legrad" not in many and "cam" in many  # LeGrad reads transformer blocks; this net declares fc_layer
  with pytest.raises(ValueError, match="randomcam needs options"):
    jaxcam.explain_many(["gradcam", "randomcam"], tap, x, target=t)
  key = jax.random.key(7)  # a key lets the keyed cheap rows share the pass too
  keyed_many = jaxcam.explain_many(["gradcam", "randomcam"], tap, x, target=t, key=key)
  np.testing.assert_allclose(
    keyed_many["randomcam"].maps, jaxcam.explain("randomcam", tap, x, target=t, key=key).maps, atol=1e-6
  )
  for name, ex in many.items():
    np.testing.assert_allclose(ex.maps, jaxcam.explain(name, tap, x, target=t).maps, atol=1e-6, err_msg=name)
  exact = jaxcam.get_method("gradcam_pp").expensive({"derivatives": "exact"})
  assert exact and not jaxcam.get_method("gradcam_pp").expensive()


def test_any_pytree_output_and_the_logits_check_moves_to_class_ids():
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  plain = nets.GapDense()
  variables = plain.init(jax.random.key(1), x)
  tap = jaxcam.linen_tap(nets.DictOutput(), variables, "features")
  out, a = tap(x)
  assert set(out) == {"logits", "embedding"} and a.shape == (2, 6, 6, 5)
  with pytest.raises(ValueError, match="logits of shape \\(B, classes\\) for a class-id target.*callable target"):
    jaxcam.gradcam(tap, x, target=1)
  maps = jaxcam.gradcam(tap, x, target=lambda o: o["logits"][:, 1])
  np.testing.assert_allclose(
    maps, jaxcam.gradcam(jaxcam.linen_tap(plain, variables, "features"), x, target=1), atol=1e-6
  )
  emb = jaxcam.explain("layercam", tap, x, target=lambda o: o["embedding"][:, 2])
  assert emb.maps.shape == (2, 6, 6) and set(emb.logits) == {"logits", "embedding"}


@pytest.mark.fast
@pytest.mark.parametrize(
  "kwargs,error,message",
  [
    ({"relu": None}, TypeError, "`relu` to be True or False, got None"),
    ({"normalize": "no"}, TypeError, "`normalize` to be True or False, got 'no'"),
    ({"upsample": "false"}, TypeError, "`upsample` to be True or False, got 'false'"),
    ({"upsample": 1}, TypeError, "`upsample` to be True or False, got 1"),
    ({"fusion": "avg"}, ValueError, "`fusion` to be one of ('mean', 'max'), got 'avg'"),
    ({"progress": "yes"}, TypeError, "`progress` to be None (automatic), True or False"),
    ({"eps": -1}, ValueError, "`eps` to be a finite number > 0, got -1"),
    ({"eps": float("nan")}, ValueError, "`eps` to be a finite number > 0, got nan"),
    ({"eps": "abc"}, TypeError, "`eps` to be a number, got 'abc'"),
    ({"epss": 1e-3}, TypeError, "unexpected option(s) ['epss']"),
  ],
)
def test_every_option_is_validated_and_named(convnet_b2, kwargs, error, message):
  _, _, tap, x = convnet_b2
  with pytest.raises(error, match=re_escape(message)):
    jaxcam.gradcam_pp(tap, x, **kwargs)


@pytest.mark.fast
@pytest.mark.parametrize(
  "method,kwargs,message",
  [
    ("scorecam", {"chunk_size": 0}, "`chunk_size` to be a positive int, got 0"),
    ("scorecam", {"chunk_size": 2.0}, "`chunk_size` to be a positive int, got 2.0"),
    ("scorecam", {"top_n": True}, "`top_n` to be a positive int or None, got True"),
    ("iscam", {"num_samples": 0}, "`num_samples` to be a positive int, got 0"),
    ("sscam", {"std": -0.5, "key": jax.random.key(0)}, "`std` to be a finite number >= 0, got -0.5"),
  ],
)
def test_counts_are_positive_ints_never_clamped(convnet_b2, method, kwargs, message):
  _, _, tap, x = convnet_b2
  with pytest.raises((ValueError, TypeError), match=re_escape(message)):
    jaxcam.explain(method, tap, x, **kwargs)


@pytest.mark.fast
def test_jit_without_partial_explains_the_rule(convnet_b2):
  _, _, tap, x = convnet_b2
  with pytest.raises(TypeError, match="`normalize` is a Python option, but it arrived traced.*functools.partial"):
    jax.jit(jaxcam.gradcam)(tap, x, normalize=False)
  with pytest.raises(TypeError, match="`chunk_size` is a Python option, but it arrived traced"):
    jax.jit(jaxcam.scorecam)(tap, x, chunk_size=4)
  f = jax.jit(functools.partial(jaxcam.gradcam, normalize=False))  # the documented way works
  assert f(tap, x).shape == x.shape[:3]


@pytest.mark.fast
def test_batches_and_builders_validate_too(convnet_b2):
  _, _, tap, x = convnet_b2
  xs = np.asarray(x)
  with pytest.raises(ValueError, match="`batch_size` to be a positive int or None, got 0"):
    list(jaxcam.explain_batches("gradcam", tap, [xs], batch_size=0))
  with pytest.raises(ValueError, match="`prefetch` to be a positive int, got 0"):
    list(jaxcam.explain_batches("gradcam", tap, [xs], prefetch=0))
  with pytest.raises(TypeError, match="`relu` to be True or False"):
    list(jaxcam.explain_batches("gradcam", tap, [xs], relu="yes"))
  with pytest.raises(TypeError, match="`pretrained` to be True or False, got 'no'"):
    models.efficientnet_lite0(pretrained="no")
  with pytest.raises(TypeError, match="`pretrained` to be True or False"):
    models.resnet18(pretrained=0)


@pytest.mark.fast
def test_out_of_range_ids_raise_in_every_eager_entry_point(convnet_b2):
  _, _, tap, x = convnet_b2
  bad = jnp.array([1, 2, 50])
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*got \[50\]"):
    jaxcam.gradcam(tap, x, target=bad)
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*got \[50\]"):
    list(jaxcam.explain_batches("gradcam", tap, [(np.asarray(x), np.asarray(bad))]))
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*got \[-1\]"):
    jaxcam.derivatives.diagonals(tap, x, jnp.array([0, -1, 0]))
  # under the user's jit the ids are not known: those maps are NaN (documented), the others are not
  maps = jax.jit(jaxcam.gradcam)(tap, x, target=bad)
  assert np.isnan(maps[2]).all() and np.isfinite(maps[:2]).all()


@pytest.mark.fast
def test_nan_images_are_refused_by_index(convnet_b2):
  _, _, tap, x = convnet_b2
  with pytest.raises(ValueError, match=r"NaN or Inf in image\(s\) \[1\]"):
    jaxcam.gradcam(tap, x.at[1, 0, 0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match=r"NaN or Inf in image\(s\) \[0, 2\]"):
    jaxcam.explain_many(["gradcam"], tap, x.at[0].set(jnp.inf).at[2, 3].set(jnp.nan))


@pytest.mark.fast
def test_0_255_floats_into_a_model_that_takes_0_1_warn(convnet_b2):
  from tests import nets as test_models

  class Shipped(test_models.ConvNet):  # declares its input mean, as jaxcam's shipped models do: it takes [0, 1]
    input_mean = (0.5, 0.5, 0.5)

  module, variables, _, x = convnet_b2
  tap = jaxcam.linen_tap(Shipped(), variables, "body_2")
  img = jax.nn.sigmoid(x)
  with pytest.warns(UserWarning, match=r"pixel values up to 2\d\d.*takes images in \[0, 1\].*divide by 255"):
    jaxcam.gradcam(tap, img * 255)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jaxcam.gradcam(tap, img)
    jaxcam.gradcam(jaxcam.linen_tap(module, variables, "body_2"), img * 255)  # a user's model: any range


@pytest.mark.fast
def test_a_one_by_one_layer_warns(convnet_b2):
  _, _, tap, x = convnet_b2
  with pytest.warns(UserWarning, match=r"feature map of size \(1, 1\).*constant"):
    jaxcam.gradcam(tap, x[:, :2, :2])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jaxcam.gradcam(tap, x)  # a 6x6 layer: no warning


@pytest.mark.fast
def test_flax_parameter_errors_are_translated(convnet_b2):
  module, variables, tap, x = convnet_b2
  for channels in (1, 4):
    xc = jnp.concatenate([x] * 2, axis=-1)[..., :channels]
    with pytest.raises(ValueError, match=rf"do not fit `x` of shape \(3, 12, 12, {channels}\).*RGB: 3"):
      jaxcam.gradcam(tap, xc)
  other = {"params": {k: v for k, v in variables["params"].items() if k != "body_0"}}  # another model's tree
  with pytest.raises(ValueError, match="variables do not belong to its module"):
    jaxcam.gradcam(jaxcam.linen_tap(module, other, "body_2"), x)


@pytest.mark.fast
def test_no_retrace_on_second_call_and_new_weights(common, small_linen):
  """Counted with a trace counter (Python runs once per trace, never per call), not a private cache size."""
  module, variables, x = small_linen
  tap, _, t = common
  jaxcam.gradcam(tap, x, target=t)
  before = jaxcam.api.TRACES["gradcam"]
  new_vars = jax.tree.map(lambda a: a * 1.5, variables)
  maps = jaxcam.gradcam(jaxcam.linen_tap(module, new_vars, "body_2"), x, target=jnp.array([2, 2, 2]))
  jaxcam.gradcam(tap, x, target=t)
  assert jaxcam.api.TRACES["gradcam"] == before
  assert not np.allclose(maps, jaxcam.gradcam(tap, x, target=t))
  jaxcam.gradcam(tap, x[:2], target=t[:2])  # a new shape is a new trace: the counter does see retraces
  assert jaxcam.api.TRACES["gradcam"] == before + 1

  traces = []

  @jax.jit
  def user_fn(tap, x, target):
    traces.append(1)
    return jaxcam.gradcam_pp(tap, x, target=target, normalize=False)

  user_fn(tap, x, t)
  user_fn(jaxcam.linen_tap(module, new_vars, "body_2"), x, jnp.array([0, 1, 2]))
  assert len(traces) == 1


@pytest.mark.fast
def test_target_forms(common):
  tap, x, _ = common
  logits = tap(x)[0]
  top = np.asarray(jnp.argmax(logits, -1))
  np.testing.assert_allclose(jaxcam.gradcam(tap, x), jaxcam.gradcam(tap, x, target=jnp.asarray(top)), atol=1e-6)
  np.testing.assert_allclose(jaxcam.gradcam(tap, x, target=2), jaxcam.gradcam(tap, x, target=[2, 2, 2]), atol=1e-6)
  ex = jaxcam.explain("gradcam", tap, x, target=jaxcam.targets.softmax(jnp.array([1, 2, 3])))
  np.testing.assert_allclose(ex.scores, jax.nn.softmax(logits)[jnp.arange(3), jnp.array([1, 2, 3])], rtol=1e-6)
  np.testing.assert_array_equal(ex.target, [1, 2, 3])
  custom = jaxcam.explain("gradcam", tap, x, target=lambda lg: lg[:, 1] - lg[:, 0])
  assert custom.target is None
  np.testing.assert_allclose(custom.scores, logits[:, 1] - logits[:, 0], rtol=1e-6)


@pytest.mark.fast
def test_k_targets_per_image_from_one_forward(common):
  tap, x, _ = common
  ids = jnp.array([[0, 1], [2, 3], [4, 0]])
  maps = jaxcam.layercam(tap, x, target=ids)
  assert maps.shape == (3, 2) + x.shape[1:3]
  for k in range(2):
    np.testing.assert_allclose(maps[:, k], jaxcam.layercam(tap, x, target=ids[:, k]), atol=1e-6)
  both = jaxcam.gradcam(tap, x, target=lambda lg: jnp.stack([lg[:, 0], -lg[:, 0]], -1), relu=False, normalize=False)
  np.testing.assert_allclose(both[:, 0], -both[:, 1], rtol=1e-5, atol=1e-7)


@pytest.mark.fast
def test_each_image_score_only_affects_its_own_map(common):
  tap, x, _ = common
  a = jaxcam.gradcam(tap, x, target=jnp.array([1, 1, 1]))
  b = jaxcam.gradcam(tap, x, target=jnp.array([1, 3, 1]))
  # the same compiled program twice (only the target values differ): exact
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[2], b[2])
  assert not np.allclose(a[1], b[1])


@pytest.mark.fast
def test_out_of_range_ids(common):
  tap, x, _ = common
  with pytest.raises(ValueError, match=r"class ids in \[0, 5\).*\[7\]"):
    jaxcam.gradcam(tap, x, target=jnp.array([1, 7, 2]))
  with pytest.raises(ValueError, match=r"\[-1\]"):
    jaxcam.gradcam(tap, x, target=-1)
  with pytest.raises(TypeError, match="ints"):
    jaxcam.gradcam(tap, x, target=jnp.array([1.0, 2.0, 3.0]))
  with pytest.raises(ValueError, match="one row per image"):
    jaxcam.gradcam(tap, x, target=jnp.array([1, 2]))
  # under jit the ids are unknown when tracing: the affected image's map is NaN, the others are intact
  maps = jax.jit(lambda t, x, c: jaxcam.gradcam(t, x, target=c))(tap, x, jnp.array([1, 7, 2]))
  assert np.isnan(maps[1]).all() and np.isfinite(maps[0]).all() and np.isfinite(maps[2]).all()


@pytest.mark.fast
def test_unknown_method_and_option(common):
  tap, x, _ = common
  with pytest.raises(KeyError, match="Closest: 'gradcam_pp'"):
    jaxcam.explain("gradcam_ppp", tap, x)
  assert jaxcam.get_method("GradCAM++").name == "gradcam_pp"
  with pytest.raises(TypeError, match="unexpected option.*'eps'"):
    jaxcam.gradcam(tap, x, eps=1e-3)


@pytest.mark.parametrize("name", sorted(ENTRY))
def test_entry_points_under_jit_with_x_as_argument_or_constant(setup, name):
  _, _, tap, x = setup
  f = ENTRY[name]
  key = jax.random.key(0)
  eager = np.asarray(f(tap, x, key))
  as_arg = jax.jit(f)(tap, x, key)
  closed = jax.jit(lambda k: f(tap, x, k))(key)
  nothing = jax.jit(lambda: f(tap, x, key))()
  for got in (as_arg, closed, nothing):
    np.testing.assert_allclose(got, eager, atol=1e-5)


@pytest.mark.fast
def test_grad_and_vmap_through_a_closure_skip_the_eager_checks():
  """A value the tap closes over may be traced (jax.grad / jax.vmap over it) while tap, x and target are not: the
  eager checks then see traced maps and stand aside (they raised TracerArrayConversionError)."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))

  def total(p):
    tap = jaxcam.function_tap(lambda q, x: jnp.tanh(x * p), lambda q, x, a: a.mean(axis=(1, 2)), jnp.float32(1.0))
    return jaxcam.gradcam(tap, x, target=0, normalize=False).sum()

  g = jax.grad(total)(jnp.float32(0.7))
  with jax.enable_x64(False):
    fd = (total(jnp.float32(0.71)) - total(jnp.float32(0.69))) / 0.02  # central difference, an independent estimate
  np.testing.assert_allclose(g, fd, rtol=2e-2)
  batched = jax.vmap(total)(jnp.array([0.5, 0.7], jnp.float32))
  np.testing.assert_allclose(batched, [total(jnp.float32(0.5)), total(jnp.float32(0.7))], rtol=1e-5)


def test_eager_calls_refuse_non_finite_logits_and_scores():
  """NaN/Inf in the model's output or in the target scores raise in eager calls, naming what and which images;
  under the user's jit the maps carry the NaN (documented)."""
  x = jax.random.normal(jax.random.key(0), (3, 6, 6, 3))

  def head(q, x, a):
    logits = a.mean(axis=(1, 2))
    return jnp.where(jnp.arange(3)[:, None] == 1, jnp.nan, logits)  # image 1's logits are NaN

  tap = jaxcam.function_tap(lambda q, x: jnp.tanh(x * q), head, jnp.float32(1.0))
  with pytest.raises(ValueError, match=r"non-finite model output \(logits\).*image\(s\) \[1\]"):
    jaxcam.gradcam(tap, x, target=0)
  fine = jaxcam.function_tap(lambda q, x: jnp.tanh(x * q), lambda q, x, a: a.mean(axis=(1, 2)), jnp.float32(1.0))
  with pytest.raises(ValueError, match=r"non-finite target scores.*image\(s\) \[0, 1, 2\]"):
    jaxcam.gradcam(fine, x, target=lambda logits: jnp.log(logits[:, 0] - logits[:, 0]))  # log(0)
  logits = jax.jit(lambda x: jaxcam.explain("gradcam", tap, x, 0).logits)(x)  # under jit: no check, NaN kept
  assert np.isnan(logits[1]).all() and np.isfinite(logits[np.array([0, 2])]).all()


@pytest.mark.fast
def test_an_empty_batch_and_a_method_string_for_a_list_are_named(convnet_b2):
  """An empty batch is one clear error (not numpy's zero-size reduction), and explain_many given one name where it
  takes a list says so (not an unknown method 'g')."""
  _, _, tap, x = convnet_b2
  with pytest.raises(ValueError, match="at least one image"):
    jaxcam.gradcam(tap, x[:0])
  with pytest.raises(ValueError, match="at least one image"):
    jaxcam.explain_many(["gradcam"], tap, x[:0])
  with pytest.raises(TypeError, match=r"use \['gradcam'\]"):
    jaxcam.explain_many("gradcam", tap, x)
