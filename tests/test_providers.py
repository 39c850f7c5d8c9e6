"""`jaxcam.providers` and the method table seen from user code: a new row and a new provider without editing the
package; unknown needs and malformed rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from jaxcam import providers
from tests import nets
from tests import reference as ref


def _drop_scores(tap, x, fwd, *, chunk_size=2):
  """A user's need: S - S_k with channel k of A set to 0, through `tap.head` only, `chunk_size` channels at once."""
  a = fwd.activations[0]
  c = a.shape[-1]
  target = jaxcam.targets.with_ids(fwd.target, fwd.ids)

  def score_without(k):
    keep = 1.0 - jax.nn.one_hot(k, c, dtype=a.dtype)
    return target.evaluate(tap.head(x, a * keep[None, None, None, :]))[1]  # (B, K)

  dropped = jaxcam.chunked_map(score_without, jnp.arange(c), chunk_size=chunk_size)  # (C, B, K)
  return (fwd.scores[..., None] - jnp.moveaxis(dropped, 0, -1),)  # (B, K, C)


def _drop_weights(activations, drops, /):
  del activations
  return drops


DROP = jaxcam.MethodSpec("drop_cam", _drop_weights, "channel", needs=("drop_scores",), title="Drop-CAM")


@pytest.fixture
def drop_provider(monkeypatch):
  monkeypatch.setitem(
    providers.PROVIDERS,
    "drop_scores",
    jaxcam.Provider(
      "drop_scores", _drop_scores, options=(("chunk_size", 2),), expensive=True, cost="one head pass per channel"
    ),
  )


@pytest.mark.fast
def test_user_method_and_provider_without_editing_the_package(net, drop_provider):
  taps, variables, x, t = net
  tap = taps["linen"]
  maps = jaxcam.explain(DROP, tap, x, target=t, normalize=False, relu=False, upsample=False).maps
  # independent reference: numpy loops over channels through the model's own apply (no tap code)
  a = np.asarray(nets.convnet_body(variables, x))
  p = variables["params"]
  head = lambda a: np.asarray(a).mean(axis=(1, 2)) @ np.asarray(p["fc"]["kernel"]) + np.asarray(p["fc"]["bias"])
  rows = np.arange(3)
  full = head(a)[rows, np.asarray(t)]
  w = np.zeros((3, a.shape[-1]))
  for k in range(a.shape[-1]):
    dropped = a.copy()
    dropped[..., k] = 0
    w[:, k] = full - head(dropped)[rows, np.asarray(t)]
  np.testing.assert_allclose(maps, ref.channel_map(w, a), rtol=1e-4, atol=1e-5)
  # its provider's option is an option of the method; chunk size changes nothing
  other = jaxcam.explain(DROP, tap, x, target=t, normalize=False, relu=False, upsample=False, chunk_size=5).maps
  np.testing.assert_allclose(other, maps, rtol=1e-5, atol=1e-6)
  # an expensive need: explain_many refuses it unless asked
  with pytest.raises(ValueError, match="drop_cam.*one head pass per channel.*allow_expensive=True"):
    jaxcam.explain_many([DROP, "gradcam"], tap, x, target=t)
  both = jaxcam.explain_many([DROP, "gradcam"], tap, x, target=t, allow_expensive=True)
  np.testing.assert_allclose(both["drop_cam"].maps, jaxcam.explain(DROP, tap, x, target=t).maps, atol=1e-6)
  # and batch explanation takes the row too
  out = list(jaxcam.explain_batches(DROP, tap, [np.asarray(x)], chunk_size=3))
  np.testing.assert_allclose(out[0]["maps"][:, None], jaxcam.explain(DROP, tap, x).maps[:, None], atol=1e-6)


@pytest.mark.fast
def test_unknown_need_and_bad_rows(net, drop_provider):
  taps, _, x, _ = net
  with pytest.raises(KeyError, match="need of nope.*'grad'.*register_provider"):
    jaxcam.explain(jaxcam.MethodSpec("nope", _drop_weights, "channel", needs=("grad",)), taps["linen"], x)
  with pytest.raises(ValueError, match="`output` to be one of"):
    jaxcam.MethodSpec("bad", _drop_weights, "weights")
  wrong = jaxcam.MethodSpec("wrong", lambda a, g: g[..., :2], "spatial")
  with pytest.raises(ValueError, match="Method .wrong. .output .spatial.. gave maps of shape \\(3, 1, 6, 6, 2\\)"):
    jaxcam.explain(wrong, taps["linen"], x)
  with pytest.raises(TypeError, match="unexpected option.*'eps'.*its options are \\['chunk_size'"):
    jaxcam.explain(DROP, taps["linen"], x, eps=1.0)


@pytest.mark.fast
def test_a_row_registered_later_is_a_jaxcam_function_at_once(net, drop_provider, monkeypatch):
  """``jaxcam.<name>`` is served from the live table: registering (or replacing) a row is all it takes."""
  taps, _, x, t = net
  tap = taps["linen"]
  monkeypatch.setattr(jaxcam.methods.table, "METHODS", dict(jaxcam.METHODS))  # undone after the test
  monkeypatch.setattr(jaxcam, "METHODS", jaxcam.methods.table.METHODS)
  assert not hasattr(jaxcam, "drop_cam")
  jaxcam.register_method(DROP)
  assert "drop_cam" in dir(jaxcam) and jaxcam.drop_cam.__name__ == "drop_cam"
  np.testing.assert_allclose(jaxcam.drop_cam(tap, x, t), jaxcam.explain(DROP, tap, x, t).maps, atol=1e-6)
  negated = jaxcam.MethodSpec("drop_cam", lambda a, d, /: -d, "channel", needs=("drop_scores",))
  jaxcam.register_method(negated, replace=True)
  flipped = jaxcam.drop_cam(tap, x, t, normalize=False, relu=False)
  plain = jaxcam.explain(DROP, tap, x, t, normalize=False, relu=False).maps
  np.testing.assert_allclose(flipped, -np.asarray(plain), rtol=1e-5, atol=1e-6)  # the replaced row, not a snapshot


@pytest.mark.fast
def test_wrapped_rows_are_named_by_a_rule_no_registered_name_can_take():
  """``smooth("gradcam_pp")`` is not the registered Smooth Grad-CAM++ (another algorithm): names differ, always."""
  assert jaxcam.smooth("gradcam_pp").name == "smooth(gradcam_pp)" != jaxcam.get_method("smooth_gradcam_pp").name
  assert jaxcam.finer("layercam").name == "finer(layercam)" and jaxcam.refine("gradcam").name == "refine(gradcam)"
  assert jaxcam.finer("gradcam").name == "finercam" and jaxcam.refine("gradcam_pp").name == "refinecam"  # the rows
  assert jaxcam.smooth(jaxcam.smooth("gradcam")).name == "smooth(smooth(gradcam))"
  for name in ("smooth(gradcam)", "my(row"):
    with pytest.raises(ValueError, match="without parentheses"):
      jaxcam.register_method(jaxcam.MethodSpec(name, _drop_weights, "channel"))


@pytest.mark.fast
def test_provider_options_are_declared_once_in_the_signature():
  """A provider's options and defaults are its keyword-only parameters: no second list to drift."""

  def fn(tap, x, fwd, *, chunk_size=7, key=None, required):
    del tap, x, fwd, chunk_size, key, required

  assert jaxcam.Provider("p", fn).options == (("chunk_size", 7), ("key", None))
  assert jaxcam.Provider("p", fn, options=(("chunk_size", 3),)).options == (("chunk_size", 3),)  # explicit wins
  ss = providers.get_provider("noisy_masked_scores").options
  assert dict(ss)["num_samples"] == 35 and dict(ss)["convention"] == "torchcam"  # SS-CAM's defaults, from the code
  assert jaxcam.get_method("sscam").defaults()["std"] == 2.0
