"""Deep Feature Factorization: NMF of a layer's activations into concepts, on device.

Collins, Achanta & Süsstrunk, "Deep Feature Factorization for Concept Discovery", arXiv 1806.10206; as
pytorch-grad-cam's ``DeepFeatureFactorization``: the activations of the whole batch ``(B, h, w, C)`` become a
matrix ``V`` of shape ``(C, B h w)`` (NaN zeroed), each channel shifted by its minimum to make it non-negative,
and factorized ``V ~ W H`` with ``W >= 0`` ``(C, K)`` and ``H >= 0`` ``(K, B h w)``. The concepts are the columns
of W plus the channel offsets (embeddings in the layer's channel space); each image's concept maps are the rows of
H, min-max normalized and upsampled to the input. A classifier head applied to the concept embeddings says what
each concept looks like to the model.

pytorch-grad-cam runs scikit-learn's coordinate-descent NMF from an unseeded random start on the CPU; jaxcam
runs Lee & Seung's multiplicative updates for a fixed number of iterations from scikit-learn's "random"
initialization drawn with an explicit `key` (``sqrt(mean(V) / K) * |N(0, 1)|``), jit-compiled: the same
objective, a different solver, so the factors agree with scikit-learn's only up to the usual NMF ambiguities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcam import _checks, _spatial, postprocess
from jaxcam._errors import check_key

__all__ = ["Concepts", "dff", "nmf", "nmf_init"]

_EPS = 1e-10


@functools.partial(
  jax.tree_util.register_dataclass, data_fields=["maps", "concepts", "scores", "error"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class Concepts:
  """The result of `dff` (a pytree).

  Args:
    maps: ``(B, K, H, W)`` concept maps in [0, 1] (``(B, K, h, w)`` with ``upsample=False``).
    concepts: ``(C, K)`` concept embeddings (channel offsets added back).
    scores: ``(K, classes)`` the head's output for each concept (None without a head).
    error: the relative reconstruction error ``|V - W H| / |V|``.

  >>> import jax.numpy as jnp, jaxcam
  >>> c = jaxcam.Concepts(jnp.zeros((2, 3, 8, 8)), jnp.zeros((4, 3)), None, jnp.array(0.1))
  >>> c.maps.shape, c.concepts.shape, c.scores
  ((2, 3, 8, 8), (4, 3), None)
  """

  maps: jax.Array
  concepts: jax.Array
  scores: jax.Array | None
  error: jax.Array


def nmf_init(v: jax.Array, n_components: int, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """scikit-learn's ``init="random"``: ``W, H = sqrt(mean(V) / K) * |N(0, 1)|`` (drawn from `key`)."""
  k_w, k_h = jax.random.split(key)
  scale = jnp.sqrt(jnp.mean(v) / n_components)
  w = scale * jnp.abs(jax.random.normal(k_w, (v.shape[0], n_components), v.dtype))
  h = scale * jnp.abs(jax.random.normal(k_h, (n_components, v.shape[1]), v.dtype))
  return w, h


def nmf(v: jax.Array, w: jax.Array, h: jax.Array, *, iterations: int = 200) -> tuple[jax.Array, jax.Array]:
  """`iterations` rounds of Lee & Seung's multiplicative updates for ``min |V - W H|_F``, W and H >= 0.

  ``H <- H (W^T V) / (W^T W H + eps)``, then ``W <- W (V H^T) / (W H H^T + eps)`` (eps 1e-10). Pure and jit-able.
  """
  hp = jax.lax.Precision.HIGHEST

  def step(_, wh):
    w, h = wh
    h = h * jnp.matmul(w.T, v, precision=hp) / (jnp.matmul(jnp.matmul(w.T, w, precision=hp), h, precision=hp) + _EPS)
    w = w * jnp.matmul(v, h.T, precision=hp) / (jnp.matmul(w, jnp.matmul(h, h.T, precision=hp), precision=hp) + _EPS)
    return w, h

  return jax.lax.fori_loop(0, iterations, step, (w, h))


@functools.partial(jax.jit, static_argnames=("n_components", "iterations", "upsample", "head"))
def _dff(tap, x, key, fc, *, n_components, iterations, upsample, head):
  _, acts = tap(x)
  a = jnp.nan_to_num(acts.astype(jnp.promote_types(acts.dtype, jnp.float32)))
  b, c = a.shape[0], a.shape[-1]
  n = _spatial.of_images(x)
  size = _spatial.feature_size(a, n)
  v = _spatial.flatten_positions(a, n).reshape(-1, c).T  # (C, B h w), positions of image 0 first
  offset = jnp.min(v, axis=1, keepdims=True)
  v = v - offset
  w, h = nmf(v, *nmf_init(v, n_components, key), iterations=iterations)
  error = jnp.linalg.norm(v - w @ h) / (jnp.linalg.norm(v) + _EPS)
  concepts = w + offset
  maps = jnp.moveaxis(h.reshape((n_components, b) + size), 0, 1)  # (B, K, h, w)
  maps = postprocess.normalize(maps, spatial_dims=n)  # pytorch-grad-cam's scale_cam_image per concept map
  if upsample:
    maps = postprocess.upsample(maps, _spatial.image_size(x))
  scores = None
  if head is not None:
    scores = head(concepts.T)
  elif fc is not None:
    kernel, bias = fc
    scores = jnp.matmul(concepts.T, kernel.astype(concepts.dtype), precision=jax.lax.Precision.HIGHEST)
    if bias is not None:
      scores = scores + bias.astype(concepts.dtype)[None, :]
  return Concepts(maps, concepts, scores, error)


def dff(
  tap: Any,
  x: jax.Array,
  /,
  n_components: int = 5,
  *,
  key: jax.Array | None = None,
  iterations: int = 200,
  head: Callable[[jax.Array], jax.Array] | str | None = "fc",
  upsample: bool = True,
) -> Concepts:
  """Deep Feature Factorization of the tapped layer over the batch `x` (see the module docstring).

  Args:
    tap: a one-layer tap.
    x: images ``(B, H, W, C)``.
    n_components: K, the number of concepts (1 <= K <= the layer's channels).
    key: the PRNG key of the NMF initialization (default ``jax.random.key(0)``: deterministic, as
      pytorch-grad-cam's ``random_state=0``).
    iterations: multiplicative-update rounds (fixed: one compiled program).
    head: what scores the concepts: "fc" (the model's ``fc_layer`` Dense layer, kernel and bias, when it declares
      one; else no scores), a function ``(K, C) -> (K, classes)`` (define it once: it is static), or None.
    upsample: concept maps at the input's size (else the layer's).

  Returns:
    `Concepts` (maps ``(B, K, H, W)``, concepts ``(C, K)``, scores ``(K, classes)`` or None, error). Draw them
    with `jaxcam.viz.concept_overlay` / `jaxcam.viz.show_concepts`.

  Raises:
    ValueError: bad images, `n_components` or `iterations` not a positive int, more components than channels,
      or a multi-layer tap.
    TypeError: a bad `head`.

  >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxcam
  >>> class Net(nn.Module):
  ...   fc_layer = "fc"  # the Dense layer that scores the concepts
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     a = nn.Sequential([nn.Conv(4, (3, 3)), nn.relu], name="features")(x)
  ...     return nn.Dense(3, name="fc")(a.mean(axis=(1, 2)))
  >>> x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
  >>> tap = jaxcam.linen_tap(Net(), Net().init(jax.random.key(1), x), "features")
  >>> c = jaxcam.dff(tap, x, n_components=2, iterations=20)
  >>> c.maps.shape, c.concepts.shape, c.scores.shape, bool(0 <= c.error < 1)
  ((2, 2, 8, 8), (4, 2), (2, 3), True)
  """
  from jaxcam import api
  from jaxcam import taps as taps_lib
  from jaxcam.methods import classic

  api.check_images(x, spatial_dims=taps_lib.spatial_dims(tap))
  n_components = _checks.check_positive_int("n_components", n_components)
  iterations = _checks.check_positive_int("iterations", iterations)
  upsample = _checks.check_bool("upsample", upsample)
  key = jax.random.key(0) if key is None else check_key(key, method="dff")
  if tap.multi:
    raise ValueError(f"Expected a one-layer tap for dff, got layers {tap.layer!r}.")
  shape = tap.activation_shape(x)
  if len(shape.shape) != x.ndim:
    raise ValueError(
      f"Expected layer {tap.layer!r} to give a feature map (B, *spatial, C) of the input's rank {x.ndim}, got "
      f"{shape.shape}."
    )
  if n_components > shape.shape[-1]:
    raise ValueError(
      f"Expected `n_components` <= the layer's {shape.shape[-1]} channels (a factorization into more concepts than "
      f"channels is not a reduction), got {n_components}."
    )
  fc = None
  if head == "fc":
    head = None
    try:
      fc = classic.resolve_fc(tap, None)
    except (ValueError, KeyError):
      fc = None  # no declared Dense layer: no scores
  elif head is not None and not callable(head):
    raise TypeError(f"Expected `head` to be 'fc', a function (K, C) -> (K, classes) or None, got {head!r}.")
  with api.model_errors(x):
    return _dff(tap, x, key, fc, n_components=n_components, iterations=iterations, upsample=upsample, head=head)
