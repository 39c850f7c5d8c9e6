"""`jaxcam.methods.attention`: LeGrad against torchcam, and its errors."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcam
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def tv_vit():
  from tests.nets import TvViT, tv_vit_params

  data = dict(np.load(os.path.join(FIXTURES, "legrad.npz")))
  sd = {k[2:]: v for k, v in data.items() if k.startswith("w/")}
  module = TvViT(patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=24, num_classes=5, num_patches=16)
  variables = jax.tree.map(jnp.asarray, tv_vit_params(sd, num_layers=3, num_heads=2))
  return module, variables, data


@pytest.mark.slow  # 24 s: a torchvision ViT's worth of compilation; the slow tier keeps the parity
def test_legrad_matches_torchcam(tv_vit):
  module, variables, data = tv_vit
  x, ids = jnp.asarray(data["x"]), data["ids"]
  np.testing.assert_allclose(module.apply(variables, x), data["logits"], rtol=1e-4, atol=1e-5)
  tokens = jaxcam.layouts.tokens(prefix=1)
  for tag, layers in (("last", "layers_2"), ("two", ["layers_1", "layers_2"])):
    tap = jaxcam.linen_tap(module, variables, layers, layout=tokens)
    np.testing.assert_allclose(jaxcam.legrad(tap, x, ids, upsample=False), data[f"{tag}_ids"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jaxcam.legrad(tap, x, upsample=False), data[f"{tag}_top"], rtol=1e-4, atol=1e-5)
  up = jaxcam.legrad(jaxcam.linen_tap(module, variables, "layers_2", layout=tokens), x, ids)
  assert up.shape == (2, 32, 32)
  # a `score` method given explicitly equals the module's legrad_score
  tap = jaxcam.linen_tap(module, variables, "layers_2", layout=tokens)
  np.testing.assert_allclose(
    jaxcam.legrad(tap, x, ids, upsample=False, score=type(module).legrad_score), data["last_ids"], rtol=1e-4, atol=1e-5
  )


def test_legrad_errors_and_explain_many(tv_vit, vit):
  module, variables, data = tv_vit
  x = jnp.asarray(data["x"])
  with pytest.raises(ValueError, match=r"layout=jaxcam.layouts.tokens"):
    jaxcam.legrad(jaxcam.linen_tap(module, variables, "conv_proj"), x)
  with pytest.raises(ValueError, match="No nn.MultiHeadDotProductAttention ran inside"):
    jaxcam.legrad(jaxcam.linen_tap(module, variables, "layers_2/ln_2", layout=jaxcam.layouts.tokens()), x)
  vit_module, vit_variables, vx = vit
  with pytest.raises(ValueError, match="define a method `legrad_score`"):
    jaxcam.legrad(jaxcam.linen_tap(vit_module, vit_variables, "block1", layout=jaxcam.layouts.tokens()), vx)
  # explain_many(None) runs the rows that apply: LeGrad on linen token taps only (tests/test_api.py runs explain_many)
  legrad = jaxcam.get_method("legrad")
  assert legrad.applies(jaxcam.linen_tap(module, variables, "layers_1", layout=jaxcam.layouts.tokens()))
  assert not legrad.applies(jaxcam.linen_tap(module, variables, "conv_proj"))
  assert not legrad.applies(jaxcam.linen_tap(module, variables, "layers_1", layout=jaxcam.layouts.tokens(),
                                             where="input"))  # fmt: skip
