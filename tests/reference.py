"""Independent numpy implementations of the CAM formulas (loops and plain numpy; no jaxcam code)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def gradcam_w(a, g):
  return g.mean(axis=(-3, -2))


def gradcam_pp_w(a, g, eps=1e-6):
  out = np.zeros(g.shape[:-3] + g.shape[-1:], dtype=np.float64)
  for idx in np.ndindex(*g.shape[:-3]):
    for k in range(g.shape[-1]):
      gk = g[idx][..., k].astype(np.float64)
      s = a[idx][..., k].astype(np.float64).sum()
      alpha = np.zeros_like(gk)
      nz = gk != 0
      alpha[nz] = gk[nz] ** 2 / (2 * gk[nz] ** 2 + s * gk[nz] ** 3 + eps)
      out[idx + (k,)] = (np.maximum(gk, 0) * alpha).sum()
  return out


def xgradcam_w(a, g, eps=1e-7):
  s = a.sum(axis=(-3, -2), keepdims=True)
  return (g * a / (s + eps)).sum(axis=(-3, -2))


def channel_map(w, a):
  return np.einsum("...hwc,...c->...hw", a, w)


def layercam_raw(a, g):
  return (np.maximum(g, 0) * a).sum(-1)


def hirescam_raw(a, g):
  return (g * a).sum(-1)


def gradcam_elementwise_raw(a, g):
  return np.maximum(g * a, 0).sum(-1)


def eigen_raw(f):
  """First-principal-component projection of the centred positions, with whatever sign LAPACK gives the singular
  vector (no sign rule: compare with `up_to_sign`)."""
  out = np.zeros(f.shape[:-1])
  for idx in np.ndindex(*f.shape[:-3]):
    x = f[idx].reshape(-1, f.shape[-1]).astype(np.float64)
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=True)
    out[idx] = (xc @ vt[0]).reshape(f.shape[-3:-1])
  return out


def up_to_sign(raw, like, then=lambda m: m):
  """``then(raw)`` or ``then(-raw)``, per map (..., h, w), whichever is closer to `like`: for references whose sign
  is arbitrary (an SVD's). `like` only picks one of the two; the comparison that follows must still pass."""
  pos, neg = then(raw), then(-raw)
  keep = np.abs(like - pos).sum(axis=(-2, -1)) <= np.abs(like - neg).sum(axis=(-2, -1))
  return np.where(keep[..., None, None], pos, neg)


def minmax(m, eps=1e-7):
  lo = m.min(axis=(-2, -1), keepdims=True)
  m = m - lo
  return m / (m.max(axis=(-2, -1), keepdims=True) + eps)


def _axis_weights(n_in, n_out):
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  src = np.clip(src, 0, n_in - 1)
  lo = np.floor(src).astype(int)
  hi = np.minimum(lo + 1, n_in - 1)
  t = src - lo
  mat = np.zeros((n_out, n_in))
  mat[np.arange(n_out), lo] += 1 - t
  mat[np.arange(n_out), hi] += t
  return mat


def bilinear(m, size):
  """Half-pixel-centre bilinear resize of (..., h, w) maps (cv2 / torch align_corners=False, upsampling)."""
  h, w = m.shape[-2:]
  H, W = size
  return np.einsum("Hh,...hw,Ww->...HW", _axis_weights(h, H), m, _axis_weights(w, W))


def trilinear(m, size):
  """Half-pixel-centre trilinear resize of (..., d, h, w) volumes (torch's interpolate(mode='trilinear'))."""
  d, h, w = m.shape[-3:]
  D, H, W = size
  return np.einsum("Dd,Hh,...dhw,Ww->...DHW", _axis_weights(d, D), _axis_weights(h, H), m, _axis_weights(w, W))


def postprocess(raw, size):
  """pytorch-grad-cam's order: relu, min-max, resize, then (aggregation) relu and min-max again."""
  return minmax(np.maximum(bilinear(minmax(np.maximum(raw, 0)), size), 0))


def value_and_grad_at(module, variables, x, layer, ids, logits=lambda out: out):
  """The output of the submodule at path `layer` (Flax's capture_intermediates) and the gradient of the batch-summed
  target logits w.r.t. it (a perturbation added there by an interceptor written here): no jaxcam code."""
  here = lambda m: "/".join(m.path) == layer
  _, state = module.apply(variables, x, capture_intermediates=lambda m, _: here(m), mutable=["intermediates"])
  node = state["intermediates"]
  for part in layer.split("/"):
    node = node[part]
  a = node["__call__"][0]

  def logits_with(delta):
    def icpt(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      return out + delta if here(context.module) and context.method_name == "__call__" else out

    with nn.intercept_methods(icpt):
      return logits(module.apply(variables, x))

  g = jax.grad(lambda d: jnp.sum(logits_with(d)[jnp.arange(len(ids)), ids]))(jnp.zeros_like(a))
  return np.asarray(a), np.asarray(g)


def patch_grid(tokens):
  """(B, 1 + h*w, D) tokens -> (B, h, w, D): CLS dropped, the patches on their square grid."""
  b, n, d = tokens.shape
  side = int(np.sqrt(n - 1))
  return tokens[:, 1:].reshape(b, side, side, d)


def gradcam_by_hand(module, variables, x, layer, ids, logits=lambda out: out):
  """Grad-CAM on block tokens from a hand-split forward (`value_and_grad_at`): drop CLS, reshape to the square
  grid, weight by the mean gradient."""
  tokens, g = value_and_grad_at(module, variables, x, layer, ids, logits)
  a, g = patch_grid(tokens), patch_grid(g)
  return np.maximum(np.sum(g.mean(axis=(1, 2), keepdims=True) * a, axis=-1), 0)


def minmax_1e8(raw, eps=1e-8):
  lo = raw.min(axis=(-2, -1), keepdims=True)
  return (raw - lo) / ((raw - lo).max(axis=(-2, -1), keepdims=True) + eps)


def activations_and_grads(seed=0, shape=(2, 3, 5, 4, 6)):
  rng = np.random.default_rng(seed)
  a = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)  # post-ReLU activations, some zeros
  g = rng.standard_normal(shape).astype(np.float32)
  g[..., 0, 0, :] = 0.0  # exact zeros exercise alpha's "0 where g == 0" rule
  return a, g
