"""AttnLRP's cost (`jaxcam.lrp`) relative to one forward + backward pass (the target score's input gradient).

    python benchmarks/lrp.py [--models vit convnet vit_s16] [--batch 8] [--repeats 20] [--json out.json]

Both sides are jitted functions of the same weights and images: ``grad`` is ``x -> d score / d x`` (one forward
and one backward pass), ``lrp`` is ``x -> jaxcam.lrp.relevance(model, x, seed=one_hot)`` (one forward and one
modified backward pass); ``forward`` is the model alone. Calls are interleaved; the table gives the fastest of
`repeats` calls (robust on a shared machine) and the ratio of medians. The ratio ``lrp / grad`` is the number
issue 28 asks for (target <= 1.5x). Models: ``vit`` (64x64 images, 8x8 patches, dim 64, 4 blocks of 4 heads),
``convnet`` (tests/nets.py's ResNetTiny at 64x64) and ``vit_s16`` (benchmarks/_vit.py's ViT-S/16 at 224x224, for an
accelerator).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)
from _common import report, time_once  # noqa: E402

from jaxcam import lrp  # noqa: E402


class _Block(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    y = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)
    return x + nn.Dense(self.dim)(nn.gelu(nn.Dense(4 * self.dim)(nn.LayerNorm()(x))))


class SmallViT(nn.Module):
  dim: int = 64
  depth: int = 4
  heads: int = 4
  patch: int = 8

  @nn.compact
  def __call__(self, x):
    p = nn.Conv(self.dim, (self.patch, self.patch), strides=self.patch, name="embed")(x)
    b = p.shape[0]
    t = p.reshape(b, -1, self.dim)
    cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.dim))
    t = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)), t], axis=1)
    t = t + self.param("pos", nn.initializers.normal(0.02), (1, t.shape[1], self.dim))
    for i in range(self.depth):
      t = _Block(self.dim, self.heads, name=f"block{i}")(t)
    return nn.Dense(10, name="head")(nn.LayerNorm(name="norm")(t)[:, 0])


def _model(name: str, batch: int):
  """``(apply fn, x)``: the model's function of the images with its weights closed over."""
  key = jax.random.key(0)
  if name == "vit":
    module, size = SmallViT(), 64
  elif name == "convnet":
    from tests.nets import ResNetTiny, randomize_batch_stats

    module, size = ResNetTiny(), 64
  elif name == "vit_s16":
    from _vit import ViTS16

    module, size = ViTS16(), 224
  else:
    raise ValueError(f"Expected --models among vit, convnet, vit_s16, got {name!r}.")
  x = jax.random.uniform(key, (batch, size, size, 3))
  variables = module.init(jax.random.key(1), x[:1])
  if name == "convnet":
    variables = randomize_batch_stats(variables)
  return (lambda xx: module.apply(variables, xx)), x


def bench(name: str, batch: int, repeats: int) -> dict:
  f, x = _model(name, batch)
  classes = f(x).shape[-1]
  seed = jax.nn.one_hot(jnp.arange(batch) % classes, classes)
  forward = jax.jit(f)
  grad = jax.jit(lambda x: jax.grad(lambda x: jnp.sum(f(x) * seed))(x))
  rel = jax.jit(lambda x: lrp.relevance(f, x, seed=seed)[0])
  fns = {"forward": forward, "grad": grad, "lrp": rel}
  row: dict = {"model": name, "batch": batch}
  runs: dict = {k: [] for k in fns}
  for label, fn in fns.items():  # compile
    row[f"{label}_compile_s"] = round(time_once(lambda fn=fn: fn(x)), 2)
  for _ in range(repeats):  # interleaved, so that a busy machine slows every side alike
    for label, fn in fns.items():
      runs[label].append(time_once(lambda fn=fn: fn(x)))
  for label in fns:
    row[f"{label}_ms"] = round(1e3 * min(runs[label]), 3)
    row[f"{label}_median_ms"] = round(1e3 * statistics.median(runs[label]), 3)
  row["lrp_over_grad"] = round(row["lrp_ms"] / row["grad_ms"], 3)
  row["lrp_over_grad_median"] = round(row["lrp_median_ms"] / row["grad_median_ms"], 3)
  return row


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", nargs="+", default=["vit", "convnet"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--json")
  p.add_argument("--csv")
  args = p.parse_args(argv)
  rows = [bench(m, args.batch, args.repeats) for m in args.models]
  head = f"{'model':<10} {'batch':>5} {'forward ms':>11} {'grad ms':>9} {'lrp ms':>9} {'lrp/grad':>9} {'(median)':>9}"
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(
      f"{r['model']:<10} {r['batch']:>5} {r['forward_ms']:>11.2f} {r['grad_ms']:>9.2f} {r['lrp_ms']:>9.2f} "
      f"{r['lrp_over_grad']:>9.2f} {r['lrp_over_grad_median']:>9.2f}"
    )
  report(rows, "\n".join(lines), args.json, args.csv)


if __name__ == "__main__":
  main()
