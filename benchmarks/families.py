"""`explain_model` per model family: the first call in a fresh process and a warm second call (issue 27).

    python benchmarks/families.py [--only linen,keras] [--json out.json] [--csv out.csv]

Each family runs in a new Python process with the compilation cache off (``JAXCAM_CACHE_DIR=off``), so the first
call pays every trace and compile; the warm call repeats it on the same two photos in that process. Models are small
and seeded (no downloads): the shipped EfficientNet-Lite0 (real weights), a linen convnet with BatchNorm and a
``train`` flag, an nnx convnet, an Equinox CNN through ``function_tap``, a Keras 3 ``MobileNetV3Small`` and
``ResNet50`` (``weights=None``, 96 px), a scanned nnx ViT (``layer="blocks/3/norm1"``, 64 px), Hugging Face Flax
ViT and ResNet (tiny random configs). Columns: build (making the model), first and warm ``explain_model`` seconds,
and the layer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BUILD = {
  "shipped (EfficientNet-Lite0)": "model = 'efficientnet_lite0'",
  "linen + BatchNorm": """
import flax.linen as nn, jax, jax.numpy as jnp
class Net(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    for i, c in enumerate((16, 32, 64)):
      x = nn.Conv(c, (3, 3), strides=2, name=f'conv{i}')(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train, name=f'bn{i}')(x))
    return nn.Dense(10, name='head')(jnp.mean(x, axis=(1, 2)))
net = Net(); model = (net, net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
kw = {'size': 64}
""",
  "nnx": """
from flax import nnx; import jax.numpy as jnp
class Net(nnx.Module):
  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 16, (3, 3), strides=2, rngs=rngs); self.c2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
    self.head = nnx.Linear(32, 10, rngs=rngs)
  def __call__(self, x):
    return self.head(jnp.mean(nnx.relu(self.c2(nnx.relu(self.c1(x)))), axis=(1, 2)))
model = Net(nnx.Rngs(0)); kw = {'size': 64}
""",
  "Equinox (function_tap)": """
import equinox as eqx, jax, jax.numpy as jnp, jaxcam
k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
params = {'c1': eqx.nn.Conv2d(3, 16, 3, stride=2, key=k1), 'c2': eqx.nn.Conv2d(16, 32, 3, stride=2, key=k2),
          'head': eqx.nn.Linear(32, 10, key=k3)}
def body(p, x):
  f = lambda im: jax.nn.relu(p['c2'](jax.nn.relu(p['c1'](im.transpose(2, 0, 1))))).transpose(1, 2, 0)
  return jax.vmap(f)(x)
def head(p, x, a):
  return jax.vmap(p['head'])(jnp.mean(a, axis=(1, 2)))
model = jaxcam.function_tap(body, head, params); kw = {'size': 64}
""",
  "Keras MobileNetV3Small": """
import os; os.environ['KERAS_BACKEND'] = 'jax'
import keras
model = keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3))
""",
  "Keras ResNet50": """
import os; os.environ['KERAS_BACKEND'] = 'jax'
import keras
model = keras.applications.ResNet50(weights=None, input_shape=(96, 96, 3))
""",
  "scanned nnx ViT (blocks/3/norm1)": """
import jax.numpy as jnp
from flax import nnx
DIM, DEPTH = 32, 4
class Block(nnx.Module):
  def __init__(self, rngs):
    self.norm1 = nnx.LayerNorm(DIM, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(2, DIM, decode=False, rngs=rngs)
    self.norm2 = nnx.LayerNorm(DIM, rngs=rngs)
    self.mlp = nnx.Linear(DIM, DIM, rngs=rngs)
  def __call__(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(nnx.gelu(self.norm2(x)))
class ViT(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Conv(3, DIM, (8, 8), strides=8, rngs=rngs)
    @nnx.split_rngs(splits=DEPTH)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs):
      return Block(rngs)
    self.blocks = blocks(rngs)
    self.head = nnx.Linear(DIM, 10, rngs=rngs)
  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def run(t, block):
      return block(t)
    return self.head(run(self.embed(x).reshape(x.shape[0], -1, DIM), self.blocks).mean(axis=1))
model = ViT(nnx.Rngs(0)); kw = {'size': 64, 'layer': 'blocks/3/norm1'}
""",
  "HF Flax ViT": """
from transformers import ViTConfig, FlaxViTForImageClassification
model = FlaxViTForImageClassification(ViTConfig(image_size=64, patch_size=8, hidden_size=64, num_hidden_layers=4,
  num_attention_heads=4, intermediate_size=128, num_labels=10), seed=0)
""",
  "HF Flax ResNet": """
from transformers import ResNetConfig, FlaxResNetForImageClassification
config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], num_labels=10)
model = FlaxResNetForImageClassification(config, seed=0)
kw = {'size': 64}
""",
}

RUN = """
import time, json
t0 = time.perf_counter()
kw = {}
%s
import jax, jaxcam
from jaxcam import models
photos = list(models.sample_images(['chelsea', 'coffee']).values())
t1 = time.perf_counter()
ex = jaxcam.explain_model(model, photos, **kw); jax.block_until_ready(ex.maps)
t2 = time.perf_counter()
ex = jaxcam.explain_model(model, photos, **kw); jax.block_until_ready(ex.maps)
t3 = time.perf_counter()
print('RESULT', json.dumps({'build': t1 - t0, 'first': t2 - t1, 'warm': t3 - t2, 'layer': str(ex.layer)}))
"""


def run_family(name: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in ("JAXCAM_CACHE_DIR", "JAXCAM_TEST_CACHE")}
  env["JAXCAM_CACHE_DIR"] = "off"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  out = subprocess.run([sys.executable, "-c", RUN % BUILD[name]], env=env, capture_output=True, text=True, cwd=ROOT)
  lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
  if out.returncode != 0 or not lines:
    return {"family": name, "error": (out.stderr.strip().splitlines() or ["no output"])[-1]}
  return {"family": name, **json.loads(lines[-1][len("RESULT ") :])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default=None, help="comma-separated family names (substrings)")
  parser.add_argument("--json", default=None)
  parser.add_argument("--csv", default=None)
  args = parser.parse_args()
  names = list(BUILD)
  if args.only:
    keys = [k.strip().lower() for k in args.only.split(",")]
    names = [n for n in names if any(k in n.lower() for k in keys)]
  rows = []
  lines = ["| family | build s | first call s | warm call s | layer |", "|---|---|---|---|---|"]
  for name in names:
    row = run_family(name)
    rows.append(row)
    if "error" in row:
      lines.append(f"| {name} | error: {row['error'][:80]} | | | |")
    else:
      lines.append(f"| {name} | {row['build']:.1f} | {row['first']:.1f} | {row['warm']:.2f} | `{row['layer']}` |")
    print(lines[-1], flush=True)
  report(rows, "\n".join(lines), args.json, args.csv)


if __name__ == "__main__":
  main()
