"""Build and execute the notebooks (outputs committed): python notebooks/_build.py [NAME ...]."""

from __future__ import annotations

import os
import sys

import nbformat
from nbclient import NotebookClient

HERE = os.path.dirname(os.path.abspath(__file__))


def md(text):
  return nbformat.v4.new_markdown_cell(text.strip())


def code(text):
  return nbformat.v4.new_code_cell(text.strip())


QUICKSTART = [
    md("""
# jaxcam quickstart

Class activation maps for JAX/Flax by autodiff: a *tap* exposes one layer's output `A` of any Flax model, and
`dS/dA` comes from the same forward/backward pass; every method is a pure, jittable function of `(tap, x, target)`.
Set `JAXCAM_NOTEBOOK_SMALL=1` to run on two photos only (the test suite does).
"""),
    code("""
import os, functools, time
import numpy as np, jax, jax.numpy as jnp
import jaxcam
from jaxcam import models, viz

SMALL = os.environ.get("JAXCAM_NOTEBOOK_SMALL") == "1"
names = ["chelsea", "coffee"] if SMALL else ["chelsea", "coffee", "rocket", "astronaut", "motorcycle"]
photos = models.sample_images(names)
module, variables = models.efficientnet_lite0(pretrained=True)   # real ImageNet weights, no network
x = models.preprocess(list(photos.values()), "efficientnet_lite0")  # (B, 224, 224, 3) in [0, 1]
logits = jax.jit(module.apply)(variables, x)
for n, p in zip(names, jax.nn.softmax(logits)):
    top = np.argsort(-np.asarray(p))[:3]
    print(n, [(models.class_name(int(i)), round(float(p[i]), 3)) for i in top])
"""),
    md("## Every method at the default layer (one forward and one backward pass for all of them)"),
    code("""
tap = jaxcam.linen_tap(module, variables)          # layer omitted: the model's default_layer ("head")
print(tap, tap.activation_shape(x))
methods = jaxcam.method_names()
results = jaxcam.explain_many(methods, tap, x)       # {method: Explanation}
fig = viz.grid(list(photos.values()), {m: np.asarray(results[m].maps) for m in methods},
               [models.class_name(int(t)) for t in results["gradcam"].target])
viz.show(fig)
"""),
    md("## Inside `jax.jit` and `jax.vmap`\nOptions are bound with `functools.partial`; tap, images and target are ordinary pytree arguments, so new weights never recompile."),
    code("""
f = jax.jit(functools.partial(jaxcam.gradcam_pp, normalize=True))
t = jaxcam.targets.log_softmax(jnp.array([285] * len(names)))   # explain "Egyptian cat" in every photo
t0 = time.perf_counter(); maps = f(tap, x, target=t).block_until_ready(); t1 = time.perf_counter()
maps = f(tap, x, target=t).block_until_ready(); t2 = time.perf_counter()
print(f"first call {t1 - t0:.2f} s (compile), second {t2 - t1:.3f} s, maps {maps.shape}")
single = jax.vmap(lambda xi: jaxcam.gradcam_pp(tap, xi[None], target=jaxcam.targets.log_softmax(285))[0])(x)
print("vmap over single images == batched call:", bool(jnp.allclose(single, maps, atol=1e-5)))
"""),
    md("## Choosing a layer"),
    code("""
layers = jaxcam.list_layers(module, variables, x[:1])
for info in layers[-6:]:
    print(info)
"""),
    code("""
mid = jaxcam.linen_tap(module, variables, "blocks/10")   # a middle block: finer, less semantic
fused = jaxcam.linen_tap(module, variables, ["blocks/10", "head"])   # both layers from one forward pass
maps_mid = jaxcam.layercam(mid, x)
maps_fused = jaxcam.layercam(fused, x)
viz.show(viz.grid(list(photos.values()), {"layercam head": np.asarray(results["layercam"].maps),
                                          "layercam blocks/10": np.asarray(maps_mid),
                                          "fused (mean)": np.asarray(maps_fused)}))
"""),
    md("## Differentiating through a CAM\nGradient-family maps are differentiable w.r.t. the input and the parameters."),
    code("""
def concentration(x):
    m = jaxcam.gradcam(tap, x, target=285)
    return jnp.sum(m[:, 60:160, 60:160]) / jnp.sum(m)
g = jax.grad(concentration)(x[:1])
print("d(concentration)/dx:", g.shape, float(jnp.abs(g).max()))
"""),
]

NOTEBOOKS = {"quickstart": QUICKSTART}


def build(name: str, execute: bool = True) -> str:
  nb = nbformat.v4.new_notebook()
  nb.cells = NOTEBOOKS[name]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  if execute:
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
  path = os.path.join(HERE, f"{name}.ipynb")
  nbformat.write(nb, path)
  return path


if __name__ == "__main__":
  for n in sys.argv[1:] or list(NOTEBOOKS):
    print(build(n))
