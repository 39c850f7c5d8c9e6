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
  md("## One line: a model and images in, a picture out (the layer is found automatically)"),
  code("""
import jaxcam
from jaxcam import models, viz

ex = jaxcam.explain_model("efficientnet_lite0", list(models.sample_images(["chelsea", "coffee"]).values()))
print(ex.layer, "-", ex.layer_reason)
print([t[0]["name"] for t in ex.top5])
viz.show(ex.show())
"""),
  md("## The building blocks"),
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
  md("## Every cheap method at the default layer (one shared forward and backward pass for all of them)"),
  code("""
tap = jaxcam.linen_tap(module, variables)          # layer omitted: the model's default_layer ("head")
print(tap, tap.activation_shape(x))
results = jaxcam.explain_many(None, tap, x)          # {method: Explanation}; expensive methods only when asked
methods = list(results)
fig = viz.grid(list(photos.values()), {m: np.asarray(results[m].maps) for m in methods},
               [models.class_name(int(t)) for t in results["gradcam"].target])
viz.show(fig)
"""),
  md(
    "## Gradient-free and smoothed methods\nEach is one compiled program over `chunk_size` perturbed copies at a "
    "time; `spec.cost()` says what one image costs. Randomness takes an explicit `key`."
  ),
  code("""
for name in ("scorecam", "ablationcam"):
    print(name, "->", jaxcam.get_method(name).cost())
top = 16 if SMALL else 64
extra = {
    f"Faster-Score-CAM (top {top})": jaxcam.scorecam(tap, x, top_n=top, chunk_size=32),
    "Ablation-CAM": jaxcam.ablationcam(tap, x, chunk_size=256),
    "smoothed Grad-CAM++": jaxcam.explain(jaxcam.smooth("gradcam_pp", num_samples=4 if SMALL else 8, std=0.1),
                                          tap, x, key=jax.random.key(0)).maps,
}
fig = viz.grid(list(photos.values()), {k: np.asarray(v) for k, v in extra.items()}, list(photos))
viz.show(fig)
"""),
  md(
    "## Inside `jax.jit` and `jax.vmap`\nOptions are bound with `functools.partial`; tap, images and target are "
    "ordinary pytree arguments, so new weights never recompile."
  ),
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

DERIVATIVE_STUDY = [
  md("""
# How good is Grad-CAM++'s derivative approximation?

Grad-CAM++ weights each feature-map element by alpha, built from the 2nd and 3rd derivatives of Y = exp(S).
Every implementation replaces them with powers of the first derivative (`g^2`, `g^3`), which is exact only when
the network after the layer is piecewise linear *and* S is the logit. jaxcam computes the exact diagonals
(`jaxcam.derivatives.diagonals`) and compares (`jaxcam.study.compare_derivatives`). Compute budget: under two
minutes on 2 CPU cores (`JAXCAM_NOTEBOOK_SMALL=1`: a fraction of that, fewer images and training steps).
"""),
  code("""
import os, time
import numpy as np, jax, jax.numpy as jnp, optax, flax.linen as nn
import jaxcam
from jaxcam import models, viz, study

SMALL = os.environ.get("JAXCAM_NOTEBOOK_SMALL") == "1"
photos = models.sample_images(["chelsea", "coffee"] if SMALL else None)
module, variables = models.efficientnet_lite0(pretrained=True)
x = jnp.asarray(models.preprocess(list(photos.values()), "efficientnet_lite0"))
top = jnp.argmax(module.apply(variables, x), -1)
tap = jaxcam.linen_tap(module, variables)   # default layer "head": GAP + Dense after it (piecewise linear)

def row(name, rep):
    s = rep.summary()
    return (f"| {name} | {rep.strategy} | {s['median_second_rel_err']:.2e} | {s['median_alpha_rel_err']:.2e} | "
            f"{s['median_map_rel_l2']:.2e} | {s['worst_map_rel_l2']:.2e} | {s['median_map_spearman']:.4f} | "
            f"{s['argmax_moved_fraction']:.2f} |")

header = ["| score (convention) | strategy | median rel. err g^2 | median rel. err alpha | median map rel. L2 | "
          "worst map rel. L2 | median Spearman | argmax moved |", "|---|---|---|---|---|---|---|---|"]
lite_rows, reports = [], {}
for name, target, conv in [("logit (exp)", jaxcam.targets.logit(top), "exp"),
                           ("log_softmax = probability (exp)", jaxcam.targets.log_softmax(top), "exp"),
                           ("softmax (literal)", jaxcam.targets.softmax(top), "literal")]:
    t0 = time.perf_counter()
    reports[name] = rep = study.compare_derivatives(tap, x, target, convention=conv)
    lite_rows.append(row("Lite0 " + name, rep))
    print(f"{name}: {time.perf_counter() - t0:.1f} s")
print(*header, *lite_rows, sep=chr(10))
"""),
  md("""
With the logit under the exp convention the approximation is **exact** (all errors 0): the head after `head` is
global pooling + Dense. With the log-softmax score (Grad-CAM++ of the class probability) the softmax adds
curvature: `h != 0`, so `g^2` is no longer Y''/Y. The literal convention on the softmax score has no
approximation counterpart that makes sense (the usual code computes `g^2, g^3` of S, not derivatives of S).
"""),
  code("""
name = "log_softmax = probability (exp)"
rep = reports[name]
imgs = list(photos.values())
viz.show(viz.grid(imgs, {"approx (g^2, g^3)": np.asarray(rep.maps_approx), "exact": np.asarray(rep.maps_exact),
                         "|difference|": np.abs(np.asarray(rep.maps_exact) - np.asarray(rep.maps_approx))},
                  [models.class_name(int(c)) for c in top]))
"""),
  md("""
## Small networks with smooth heads, trained with optax on scikit-image textures

Four texture classes (brick, grass, gravel, the camera-man's coat region is left out: we use `rough_wall`-like
crops from the bundled textures), 32x32 crops. A shared convolutional body; three heads after the tapped layer:
conv + GELU, conv + SiLU, LayerNorm + GELU (ConvNeXt-like). The tapped layer is the body's output.
"""),
  code("""
from skimage import data
textures = [data.brick(), data.grass(), data.gravel(), data.camera()]
rng = np.random.default_rng(0)
def crops(n, size=32):
    xs, ys = [], []
    for _ in range(n):
        c = rng.integers(len(textures)); img = textures[c]
        i, j = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        xs.append(img[i:i + size, j:j + size, None] / 255.0); ys.append(c)
    return jnp.asarray(np.stack(xs), jnp.float32), jnp.asarray(ys)

class Body(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        return nn.relu(nn.Conv(32, (3, 3), strides=2)(x))

class Head(nn.Module):
    kind: str
    @nn.compact
    def __call__(self, a):
        if self.kind == "layernorm_gelu":
            y = nn.gelu(nn.Dense(32)(nn.LayerNorm()(a)))
        else:
            act = nn.gelu if self.kind == "conv_gelu" else nn.silu
            y = act(nn.Conv(32, (3, 3))(a))
        return nn.Dense(4)(y.mean((1, 2)))

class Net(nn.Module):
    kind: str
    @nn.compact
    def __call__(self, x):
        return Head(self.kind, name="head")(Body(name="body")(x))

steps = 60 if SMALL else 300
xtr, ytr = crops(2048); xte, yte = crops(8 if SMALL else 64)
nets = {}
for kind in ["conv_gelu", "conv_silu", "layernorm_gelu"]:
    net = Net(kind); params = net.init(jax.random.key(0), xtr[:1])
    opt = optax.adam(3e-3); state = opt.init(params)
    @jax.jit
    def step(params, state, xb, yb):
        loss, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
            net.apply(p, xb), yb).mean())(params)
        upd, state = opt.update(g, state)
        return optax.apply_updates(params, upd), state, loss
    for s in range(steps):
        idx = rng.integers(0, len(xtr), 64)
        params, state, loss = step(params, state, xtr[idx], ytr[idx])
    acc = float((net.apply(params, xte).argmax(-1) == yte).mean())
    nets[kind] = (net, params)
    print(f"{kind}: loss {float(loss):.3f}, test accuracy {acc:.2f}")
"""),
  code("""
small_rows = []
for kind, (net, params) in nets.items():
    t = jaxcam.linen_tap(net, params, "body")
    pred = net.apply(params, xte).argmax(-1)
    for name, target in [("logit (exp)", jaxcam.targets.logit(pred)),
                         ("log_softmax (exp)", jaxcam.targets.log_softmax(pred))]:
        rep = study.compare_derivatives(t, xte, target, strategy="generic")
        small_rows.append(row(f"{kind} {name}", rep))
print(*header, *lite_rows, *small_rows, sep=chr(10))
"""),
  md("""
Reading the table: on piecewise-linear heads with the logit the approximation is exact; smooth heads (GELU,
SiLU, LayerNorm) and the softmax make `h` and `t` non-zero, and the approximate alpha drifts from the exact one.
How much the *map* moves is the number that matters to a user: see the map columns. The committed outputs are
from the full run; the README quotes them.
"""),
]

VIT = [
  md("""
# Explaining a vision transformer

A tiny ViT (linen, `nn.MultiHeadDotProductAttention`) is trained for a few seconds to say which quadrant of a
32x32 image holds a bright square, so the right answer to *where does it look* is known. Then: Grad-CAM on a
block's tokens through `jaxcam.layouts.tokens`, LeGrad, the pointing game against the squares, and the errors a
user meets with token layers. Set `JAXCAM_NOTEBOOK_SMALL=1` for fewer training steps (the test suite does).
"""),
  code("""
import os
import numpy as np, jax, jax.numpy as jnp, flax.linen as nn, optax
import jaxcam

SMALL = os.environ.get("JAXCAM_NOTEBOOK_SMALL") == "1"

class Block(nn.Module):
    dim: int = 32
    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4)(y, y)
        return x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(x))))

class ViT(nn.Module):
    def setup(self):
        self.embed = nn.Conv(32, (4, 4), strides=4)
        self.cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, 32))
        self.pos = self.param("pos", nn.initializers.normal(0.02), (1, 65, 32))
        self.blocks = [Block() for _ in range(3)]
        self.norm = nn.LayerNorm()
        self.head = nn.Dense(4)
    def __call__(self, x):
        t = self.embed(x).reshape(x.shape[0], 64, 32)
        t = jnp.concatenate([jnp.broadcast_to(self.cls, (x.shape[0], 1, 32)), t], axis=1) + self.pos
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t)[:, 0])        # the head reads the CLS token
    def legrad_score(self, tokens):                  # LeGrad's per-block score (torchcam's heads(ln(mean)))
        return self.head(self.norm(tokens.mean(axis=1)))

def make(key, n):
    k1, k2, k3 = jax.random.split(key, 3)
    corner = jax.random.randint(k1, (n, 2), 0, 24)                       # top-left of an 8x8 square
    ys, xs = jnp.arange(32)[None, :, None], jnp.arange(32)[None, None, :]
    inside = ((ys >= corner[:, :1, None]) & (ys < corner[:, :1, None] + 8)
              & (xs >= corner[:, 1:, None]) & (xs < corner[:, 1:, None] + 8))
    x = 0.3 * jax.random.uniform(k2, (n, 32, 32, 3)) + 0.7 * inside[..., None]
    centre = corner + 4
    label = (centre[:, 0] >= 16) * 2 + (centre[:, 1] >= 16)
    return x, label, inside

model = ViT()
x_train, y_train, _ = make(jax.random.key(0), 2048)
variables = model.init(jax.random.key(1), x_train[:1])
opt = optax.adam(2e-3)
state = opt.init(variables)

@jax.jit
def step(variables, state, x, y):
    loss, g = jax.value_and_grad(
        lambda v: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, x), y).mean())(variables)
    updates, state = opt.update(g, state)
    return optax.apply_updates(variables, updates), state, loss

steps = 150 if SMALL else 600
for i in range(steps):
    j = (i * 64) % 2048
    variables, state, loss = step(variables, state, x_train[j:j + 64], y_train[j:j + 64])
x, y, inside = make(jax.random.key(2), 64)
acc = float((model.apply(variables, x).argmax(-1) == y).mean())
print(f"loss {float(loss):.3f}, held-out accuracy {acc:.2f} (chance 0.25)")
"""),
  md("""
## Grad-CAM on tokens

A block returns `(B, 1 + 64, 32)`: one CLS token and an 8x8 grid of patches. `layouts.tokens(prefix=1)` drops CLS
and lays the patches on the grid (downstream, CLS passes through untouched). `list_layers` suggests the layout.
"""),
  code("""
for info in jaxcam.list_layers(model, variables, x[:1])[:6]:
    print(info)
tokens = jaxcam.layouts.tokens(prefix=1)
tap = jaxcam.linen_tap(model, variables, "blocks_1", layout=tokens)
gradcam = jaxcam.gradcam(tap, x, y)
legrad = jaxcam.legrad(jaxcam.linen_tap(model, variables, ["blocks_1", "blocks_2"], layout=tokens), x, y)
for name, maps in (("Grad-CAM, blocks_1", gradcam), ("LeGrad, blocks_1 + blocks_2", legrad)):
    hits = jaxcam.metrics.pointing_game(maps, inside).hits
    print(f"{name:28s} pointing game {float(hits.mean()):.2f}")
"""),
  code("""
import matplotlib.pyplot as plt
fig, axes = plt.subplots(3, 6, figsize=(12, 6))
for col in range(6):
    for row, (img, title) in enumerate(((x[col], "image"), (gradcam[col], "Grad-CAM"), (legrad[col], "LeGrad"))):
        axes[row, col].imshow(np.asarray(img), cmap=None if row == 0 else "jet")
        axes[row, col].set_title(title, fontsize=8)
        axes[row, col].axis("off")
plt.tight_layout()
"""),
  md("""
## The errors a user meets

A token layer without a layout, a wrong prefix, and the last block read only through CLS (every map zero: a
warning names the cause).
"""),
  code("""
import warnings
for label, call in (
    ("no layout", lambda: jaxcam.gradcam(jaxcam.linen_tap(model, variables, "blocks_1"), x[:2])),
    ("wrong prefix", lambda: jaxcam.gradcam(jaxcam.linen_tap(model, variables, "blocks_1",
                                                             layout=jaxcam.layouts.tokens(prefix=2)), x[:2])),
):
    try:
        call()
    except ValueError as e:
        print(f"{label}: {e}", end="\\n\\n")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jaxcam.gradcam(jaxcam.linen_tap(model, variables, "blocks_2", layout=tokens), x[:2])
print("after the last block:", caught[0].message if caught else "no warning")
"""),
]

ANOMALY = [
  md("""
# CAMs that localise anomalies: CutPaste on textures

The study's first experiment, small enough for a laptop CPU: an MVTec-AD-style category generated from
scikit-image's brick texture (normal crops; test images with pasted patches, scratches, stains and holes, with exact
masks), a detector fine-tuned from ImageNet EfficientNet-Lite0 on the self-supervised CutPaste task (normal /
cutpaste / scar, with optax), a Gaussian density estimate of its penultimate features as the anomaly score, and CAMs
at the deepest layer scored against the masks. `benchmarks/anomaly.py` runs the full version (three textures, every
method). The data is synthetic: it shows the machinery and how methods compare on clean, texture-like defects, not
how they do on real MVTec-AD photographs. Set `JAXCAM_NOTEBOOK_SMALL=1` for fewer steps (the test suite does).
"""),
  code("""
import os, sys, tempfile
import numpy as np, jax, jax.numpy as jnp
sys.path.insert(0, os.path.abspath(".."))
import jaxcam
from jaxcam import viz
from benchmarks import _anomaly as an

SMALL = os.environ.get("JAXCAM_NOTEBOOK_SMALL") == "1"
size, steps = (64, 10) if SMALL else (128, 200)
root = tempfile.mkdtemp()
(folder,) = an.write_synthetic(root, size=size, n_train=32 if SMALL else 96, n_good=4 if SMALL else 16,
                               n_defect=2 if SMALL else 6, textures=("brick",))
cat = an.load_mvtec(folder, size)
kinds, counts = np.unique(cat.kinds, return_counts=True)
print(cat.name, cat.train.shape, "test:", {str(k): int(c) for k, c in zip(kinds, counts)})
"""),
  md("## CutPaste training (3-way: normal / cutpaste / scar) and the density estimate"),
  code("""
from IPython.display import display
x_aug, y_aug = an.cutpaste_batch(jax.random.key(0), jnp.asarray(cat.train[:1], jnp.float32) / 255)
display(viz.show(viz.grid(list(np.asarray(x_aug)), {}, [an.CLASSES[int(c)] for c in y_aug])))  # the 3 classes
module, variables = an.pretrained_detector(jax.random.key(1), size)
variables, losses = an.train(module, variables, cat.train, key=jax.random.key(2), steps=steps)
gauss = an.fit_gaussian(an.features_of(module, variables, cat.train))
scores = np.asarray(gauss.score(jnp.asarray(an.features_of(module, variables, cat.test))))
print(f"loss {np.mean(losses[:3]):.3f} -> {np.mean(losses[-3:]):.3f}; image AUROC {an.image_auroc(scores, cat.labels):.3f}")
"""),
  md("""
## Where the detector looks

Two targets at the deepest layer (`head`): the classifier's defect log-odds and the anomaly score itself (a custom
target: any object with `evaluate`, here a pytree holding the Gaussian, so a new Gaussian never recompiles).
"""),
  code("""
tap = jaxcam.linen_tap(module, variables, "head")
bad = cat.labels == 1
x = jnp.asarray(cat.test[bad], jnp.float32) / 255
masks = cat.masks[bad]
maps = {}
for name in ("gradcam", "gradcam_pp", "layercam", "eigencam"):
    maps[name] = np.asarray(jaxcam.explain(name, tap, x, target=an.defect_score).maps)
maps["gradcam (GDE)"] = np.asarray(jaxcam.explain("gradcam", tap, x, target=an.gde_target(gauss)).maps)
for name, m in maps.items():
    s = an.localization_scores(m, masks)
    print(f"{name:16s} pixel AUROC {s['pixel_auroc']:.3f}  pointing {s['pointing']:.2f}  IoU {s['iou']:.3f}")
kinds = [k for k, b in zip(cat.kinds, bad) if b]
viz.show(viz.grid(list(cat.test[bad][:4]), {"mask": masks[:4].astype(np.float32), **{k: v[:4] for k, v in maps.items()}},
                  kinds[:4]))
"""),
]

NOTEBOOKS = {"quickstart": QUICKSTART, "derivative_study": DERIVATIVE_STUDY, "vit": VIT, "anomaly_cutpaste": ANOMALY}


TRANSFORMERS = [
  md("""
# Transformer rows side by side: LeGrad, attention rollout, gradient rollout, AttnLRP

The tiny ViT of `vit.ipynb` (linen, `nn.MultiHeadDotProductAttention`, CLS token, 3 blocks), trained briefly (600
Adam steps) on a task whose evidence is known: the class is the *colour* of an 8x8 square on a noisy 32x32 image, so the
only pixels that tell the classes apart are the square's. (`vit.ipynb` asks *which quadrant* holds the square; a
model can answer that from where the square is not, and its maps need not point at the square.) The four rows
explain the same model, the same images and each image's top class; they are scored against the squares
(localization), by perturbing the images (`jaxcam.metrics.evaluate`: the rows of `jaxcam evaluate`) and by their
cost. Set `JAXCAM_NOTEBOOK_SMALL=1` for fewer training steps and images (the test suite does).
"""),
  code("""
import os, time
import numpy as np, jax, jax.numpy as jnp, flax.linen as nn, optax
import jaxcam

SMALL = os.environ.get("JAXCAM_NOTEBOOK_SMALL") == "1"

class Block(nn.Module):
    dim: int = 32
    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4)(y, y)
        return x + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(nn.LayerNorm()(x))))

class ViT(nn.Module):
    def setup(self):
        self.embed = nn.Conv(32, (4, 4), strides=4)
        self.cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, 32))
        self.pos = self.param("pos", nn.initializers.normal(0.02), (1, 65, 32))
        self.blocks = [Block() for _ in range(3)]
        self.norm = nn.LayerNorm()
        self.head = nn.Dense(4)
    def __call__(self, x):
        t = self.embed(x).reshape(x.shape[0], 64, 32)
        t = jnp.concatenate([jnp.broadcast_to(self.cls, (x.shape[0], 1, 32)), t], axis=1) + self.pos
        for b in self.blocks:
            t = b(t)
        return self.head(self.norm(t)[:, 0])        # the head reads the CLS token
    def legrad_score(self, tokens):                  # LeGrad's per-block score (torchcam's heads(ln(mean)))
        return self.head(self.norm(tokens.mean(axis=1)))

COLOURS = jnp.array([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])  # red green blue yellow

def make(key, n):
    k1, k2, k3 = jax.random.split(key, 3)
    corner = jax.random.randint(k1, (n, 2), 0, 24)                       # top-left of an 8x8 square
    ys, xs = jnp.arange(32)[None, :, None], jnp.arange(32)[None, None, :]
    inside = ((ys >= corner[:, :1, None]) & (ys < corner[:, :1, None] + 8)
              & (xs >= corner[:, 1:, None]) & (xs < corner[:, 1:, None] + 8))
    label = jax.random.randint(k3, (n,), 0, 4)                           # the square's colour
    x = 0.4 * jax.random.uniform(k2, (n, 32, 32, 3)) + 0.6 * inside[..., None] * COLOURS[label][:, None, None]
    return x, label, inside

model = ViT()
x_train, y_train, _ = make(jax.random.key(0), 2048)
variables = model.init(jax.random.key(1), x_train[:1])
opt = optax.adam(2e-3)
state = opt.init(variables)

@jax.jit
def step(variables, state, x, y):
    loss, g = jax.value_and_grad(
        lambda v: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, x), y).mean())(variables)
    updates, state = opt.update(g, state)
    return optax.apply_updates(variables, updates), state, loss

steps = 150 if SMALL else 600
for i in range(steps):
    j = (i * 64) % 2048
    variables, state, loss = step(variables, state, x_train[j:j + 64], y_train[j:j + 64])
x, y, inside = make(jax.random.key(2), 32 if SMALL else 64)
ids = model.apply(variables, x).argmax(-1)          # each image's top class (what `jaxcam evaluate` explains)
print(f"loss {float(loss):.3f}, held-out accuracy {float((ids == y).mean()):.2f} (chance 0.25)")
"""),
  md("""
## One tap, four rows

The rollouts read every block's attention, in block order: one linen tap of all three blocks with
`layouts.tokens(prefix=1)` (CLS dropped, the 64 patches on their 8x8 grid). LeGrad reads the same blocks (each
block's own score through `legrad_score`); AttnLRP explains the whole model down to the pixels whatever layer the
tap names. Each row is timed warm (the second call, as `jaxcam evaluate` does).
"""),
  code("""
tap = jaxcam.linen_tap(model, variables, ["blocks_0", "blocks_1", "blocks_2"], layout=jaxcam.layouts.tokens(prefix=1))
ROWS = {"legrad": "LeGrad", "attention_rollout": "attention rollout", "gradient_rollout": "gradient rollout",
        "attnlrp": "AttnLRP"}
maps, cost = {}, {}
for row in ROWS:
    for _ in range(2):                               # the first call compiles
        start = time.perf_counter()
        maps[row] = jax.block_until_ready(jaxcam.explain(row, tap, x, ids).maps)
    cost[row] = (time.perf_counter() - start) / len(x)
    print(f"{row:18s} {maps[row].shape}  {1e3 * cost[row]:.2f} ms/image  ({jaxcam.get_method(row).cost()})")
"""),
  code("""
import matplotlib.pyplot as plt
from matplotlib.patches import Rectangle

def side_by_side(columns):
    fig, axes = plt.subplots(len(ROWS) + 1, len(columns), figsize=(1.6 * len(columns), 1.6 * (len(ROWS) + 1)))
    for c, i in enumerate(columns):
        r0, c0 = np.argwhere(np.asarray(inside[i]))[0]
        for r, (name, img) in enumerate([("image", x[i])] + [(ROWS[m], maps[m][i]) for m in ROWS]):
            ax = axes[r, c]
            ax.imshow(np.asarray(img), cmap=None if r == 0 else "jet", vmin=0, vmax=1)
            if r:                                    # the square, on every map
                ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), 8, 8, fill=False, edgecolor="white", lw=1.2))
            ax.set_xticks([]); ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig

side_by_side(range(6));
"""),
  md("""
## Scores against the squares, faithfulness and cost

Localization (`jaxcam.metrics.pointing_game` with `tolerance=0`: the map's peak inside the square; the energy share
inside it; `jaxcam.metrics.localization`'s pixel AUROC and best IoU over thresholds) and the faithfulness rows of
`jaxcam evaluate` (`jaxcam.metrics.evaluate`, defaults: scores = the top class's probability, deletion/insertion
with 20 steps to black, ROAD). Random-CAM (random weights on the tapped tokens) is the floor; it is not blind to the
square (the square's tokens stand out in any mix of channels). A square covers 6% of an image: a flat map's energy is
0.0625. Mean (± std) over the held-out images.
"""),
  code("""
maps["randomcam"] = jaxcam.explain("randomcam", tap, x, ids, key=jax.random.key(0)).maps
faith = {}
print(f"{'row':18s} {'pointing':>8s} {'energy':>7s} {'AUROC':>6s} {'IoU':>6s} {'ms/img':>7s}")
for row, m in maps.items():
    p = jaxcam.metrics.pointing_game(m, inside, tolerance=0)
    loc = jaxcam.metrics.localization(m, inside)
    ms = f"{1e3 * cost[row]:7.2f}" if row in cost else "      -"
    print(f"{row:18s} {float(p.hits.mean()):8.2f} {float(p.energy.mean()):7.3f} {float(loc.auroc.mean()):6.3f} "
          f"{float(loc.best_iou.mean()):6.3f} {ms}")
    faith[row] = jaxcam.metrics.evaluate(tap, x, row, jaxcam.targets.softmax(ids), maps=m,
                                         method_options={"key": jax.random.key(0)} if row == "randomcam" else None)
names = list(faith["legrad"])
print()
print(f"{'row':18s}" + "".join(f"{n + (' ↑' if jaxcam.metrics.get_metric(n).better == 'higher' else ' ↓'):>18s}"
                                  for n in names))
for row, values in faith.items():
    print(f"{row:18s}" + "".join(f"{np.mean(v):9.3f} ± {np.std(v):5.3f}" for v in values.values()))
"""),
  md("""
How to read them (the committed run: 600 steps, 64 images). The two rollouts put a compact peak on the square
(the highest pixel AUROC and IoU); LeGrad finds it about as often (pointing game) but spreads over the background
(low energy). AttnLRP's map is pixel-level and sparse: most of its mass lies inside the square (the highest energy)
and deleting its top pixels first removes the colour fastest (the lowest deletion), but many of the square's pixels
get no relevance, which lowers its AUROC and IoU. The faint blue squares are where the rows disagree. avg_drop and
insertion hardly separate the rows here: any map that keeps the square keeps the colour.
"""),
  md("""
## AttnLRP's conservation on this model

The input relevance of the target logit (`jaxcam.lrp.relevance`, AttnLRP's default rules) against the logit itself.
LRP-ε is conservative only without biases; AttnLRP's softmax rule also drops its bias term
([docs/lrp.md](../docs/lrp.md)), so the residual measures how much relevance the biases, the position embeddings,
the CLS token and the softmax absorb on this model.
"""),
  code("""
from jaxcam import lrp
logits = model.apply(variables, x)
(relevance,) = lrp.relevance(lambda v: model.apply(variables, v), x, seed=jax.nn.one_hot(ids, 4))
total = np.asarray(relevance.sum(axis=(1, 2, 3)))
score = np.asarray(logits[jnp.arange(len(x)), ids])
print("target logit  ", np.round(score[:6], 3))
print("sum relevance ", np.round(total[:6], 3))
print(f"over {len(x)} images: mean logit {score.mean():.3f}, mean sum {total.mean():.3f}, "
      f"mean |logit - sum| / |logit| {np.mean(np.abs(score - total) / np.abs(score)):.3f}, "
      f"correlation {np.corrcoef(score, total)[0, 1]:.3f}")
"""),
]

NOTEBOOKS["transformers"] = TRANSFORMERS

MODEL_ZOO = [
  md("""
# Models we did not write: a Keras 3 ConvNeXt and a scanned nnx ViT

Where JAX users' vision models live in 2026: **Keras 3 on the JAX backend** (`keras.applications`, KerasHub) and
Flax code whose transformer blocks are **stacked and scanned** (`nnx.vmap` to build them, `nnx.scan` to run them).
`jaxcam.explain_model` takes both as they are. The weights here are random (`weights=None`, no downloads), so the
maps show the machinery, not what a trained model looks at. Set `JAXCAM_NOTEBOOK_SMALL=1` for a quicker run.
"""),
  code("""
import os, time
os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported
import numpy as np, jax, keras, jaxcam
from flax import nnx
from jaxcam import models, viz

small = os.environ.get("JAXCAM_NOTEBOOK_SMALL") == "1"
photos = models.sample_images(["chelsea", "coffee"] if small else ["chelsea", "coffee", "astronaut", "rocket"])
names, images = list(photos), list(photos.values())
size = 64 if small else 128
"""),
  md("""
## Keras 3: ConvNeXt-Tiny

`explain_model` finds the layer (the last spatial layer whose target gradient is non-zero), applies the family's own
`preprocess_input` and drops the output softmax, so targets read logits. Layer names are the ones
`model.summary()` prints.
"""),
  code("""
convnext = keras.applications.ConvNeXtTiny(weights=None, input_shape=(size, size, 3), classes=10)
t0 = time.perf_counter()
ex = jaxcam.explain_model(convnext, images, method="gradcam")
print(f"first call {time.perf_counter() - t0:.1f} s; layer {ex.layer!r}: {ex.layer_reason}")
tap = jaxcam.keras_tap(convnext, ex.layer, preprocess=jaxcam.taps.keras.keras_preprocessing("convnext"), logits=True)
x = np.stack([models.resize_uint8(im, size) for im in images]).astype(np.float32) / 255.0
many = jaxcam.explain_many(["gradcam", "gradcam_pp", "layercam", "eigencam"], tap, x)
viz.show(viz.grid(ex.images, {k: list(np.asarray(v.maps)) for k, v in many.items()}, names))
"""),
  md("""
## A scanned nnx ViT

The blocks' parameters are stacked on axis 0 and run by `nnx.scan`; a layer inside the stack is spelled with its
iteration: `"blocks/3/norm1"` ([docs/scan.md](../docs/scan.md)). `list_layers` lists every iteration.
"""),
  code("""
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
    def run(tokens, block):
      return block(tokens)

    return self.head(run(self.embed(x).reshape(x.shape[0], -1, DIM), self.blocks).mean(axis=1))

vit = ViT(nnx.Rngs(0))
x = np.stack([models.resize_uint8(im, 64) for im in images]).astype(np.float32) / 255.0
for info in jaxcam.list_layers(vit, x)[:8]:
  print(info)
"""),
  code("""
maps = {}
for i in range(DEPTH):
  t0 = time.perf_counter()
  ex = jaxcam.explain_model(vit, images, layer=f"blocks/{i}/norm1", size=64)  # the model declares no input size
  maps[f"blocks/{i}/norm1"] = list(np.asarray(ex.maps))
  print(f"blocks/{i}/norm1: {time.perf_counter() - t0:.2f} s, tokens {ex.feature_sizes}")
viz.show(viz.grid(ex.images, maps, names))
"""),
]
NOTEBOOKS["model_zoo"] = MODEL_ZOO


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
