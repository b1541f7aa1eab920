# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Inspecting a distilled set
#
# A run's workdir holds everything it made: the class latents (`encode/latents/process{p}/class{c:04d}.f32`), the
# quantization per IPC and class (`quantize/ipc{K}/class{c:04d}.npz`: points, Voronoi weights, W2 per method),
# the synthetic sets (PNGs under `synthetic/ipc{K}/` with `manifest_{method}.csv`: file, label, class, weight) and
# `results.json` (accuracy per method, IPC and seed). This notebook reads a run
# (`$PQDJAX_RUN_WORKDIR`, default `runs/default`; where there is none, the small
# `configs/default.py:runlocal` run is made first) and shows the images per class with
# their weights, the distribution of the weights, and accuracy and W2 against IPC per method.
#
# **Claim.** The DDOQ weights stored with the images are the Voronoi cell masses of the
# class latent measure: assigning every latent of a class to its nearest quantization
# point (`pqdjax.quantize.assign`) and counting gives them back, and they sum to 1 per
# class; D4M's weights on the same images are uniform.

# %%
import os
import sys

while not os.path.exists("pyproject.toml") and os.getcwd() != "/":  # run from the repository root
    os.chdir("..")
sys.path.insert(0, os.getcwd())

import tempfile
import types

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, Markdown, display

from pqdjax import runs
from pqdjax.data.grouping import class_indices
from pqdjax.data.sources import FASHION_MNIST_CLASSES
from pqdjax.quantize import assign, cell_masses
from pqdjax.figures import distilled_grid

QUICK = os.environ.get("PQDJAX_NOTEBOOK_QUICK") == "1"  # the test suite's setting (nothing to shrink here but the figure count)
checks = {}
print("mode:", "quick" if QUICK else "full")

workdir = runs.find_or_make_run()
run = runs.load_run(workdir)
config = run.results["config"]
print(f"run: {run.workdir}\ndata: {config['data']['name']}, IPCs {run.ipcs}, methods {run.methods}, "
      f"latents {run.latents.shape} (shape {run.latent_shape}), quantizer: {config['quantize']['method']}")
with open(os.path.join(run.workdir, "results.md")) as f:
    display(Markdown(f.read()))

# %% [markdown]
# ## The distilled images of every class, with their weights

# %%
num_classes = run.quantized[run.ipcs[0]]["weights"].shape[0]
class_names = FASHION_MNIST_CLASSES if num_classes == len(FASHION_MNIST_CLASSES) else [f"class {c}" for c in range(num_classes)]
figure_dir = tempfile.mkdtemp(prefix="pqdjax-inspect-")
for ipc in run.ipcs[:1] if QUICK else run.ipcs:
    method = next((m for m in ("ddoq", *run.methods) if (m, ipc) in run.synthetic and m.startswith("ddoq")), None)
    if method is None:
        continue
    stored = run.synthetic[method, ipc]
    path = os.path.join(figure_dir, f"{method}_ipc{ipc}.png")
    distilled_grid(path, types.SimpleNamespace(method=method, images=stored["images"], weights=stored["weights"]), class_names)
    display(Image(filename=path))

# %% [markdown]
# ## How unequal are the weights?
#
# With uniform weights every image would weigh 1/K. The spread of the Voronoi weights is
# what separates DDOQ from D4M; the effective number of images, 1 / sum_k w_k^2, says how
# many equally weighted images the weights amount to.

# %%
fig, axes = plt.subplots(1, len(run.ipcs), figsize=(4.5 * len(run.ipcs), 3.4), squeeze=False)
for ax, ipc in zip(axes[0], run.ipcs):
    weights = run.quantized[ipc]["weights"]
    ax.hist((weights * ipc).ravel(), bins=30, color="C1")
    ax.axvline(1.0, color="k", ls="--", label="uniform (D4M)")
    effective = 1.0 / np.sum(weights**2, axis=1)
    ax.set(title=f"IPC {ipc}: K * weight; effective K {effective.mean():.1f}", xlabel="weight relative to 1/K", ylabel="images")
    ax.legend(fontsize=8)
    print(f"IPC {ipc}: weights from {weights.min():.4f} to {weights.max():.4f} (uniform {1 / ipc:.4f}); "
          f"effective number of images per class {np.round(effective, 1)}")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Accuracy and W2 against IPC, per method

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for method in run.methods:
    cells = run.results["accuracy"].get(method, {})
    ipcs = sorted(int(k) for k in cells)
    means = [100 * cells[str(k)]["mean"] for k in ipcs]
    stds = [100 * cells[str(k)]["std"] for k in ipcs]
    axes[0].errorbar(ipcs, means, yerr=stds, fmt="o-", capsize=3, label=method)
    w2_ipcs = [k for k in ipcs if method in run.results["quantization"][str(k)]["w2"]]  # one W2 per weighted point set
    if w2_ipcs:
        axes[1].plot(w2_ipcs, [run.results["quantization"][str(k)]["w2"][method]["mean"] for k in w2_ipcs], "o-", label=method)
axes[0].axhline(100 * run.results["teacher_test_accuracy"], color="k", ls="--", label="full data (teacher)")
axes[0].set(xscale="log", xlabel="IPC", ylabel="student test accuracy (%)", title="accuracy (mean +- std over seeds)")
axes[1].set(xscale="log", yscale="log", xlabel="IPC", ylabel="mean W2 to the class latents", title="W2 of each method's weighted set")
for ax in axes:
    ax.set_xticks(run.ipcs, [str(k) for k in run.ipcs])
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Do the stored weights agree with the theory?

# %%
groups = class_indices(run.labels, num_classes)
max_error = 0.0
for ipc in run.ipcs:
    points, weights = run.quantized[ipc]["points"], run.quantized[ipc]["weights"]
    for c, idx in enumerate(groups):
        latents = jnp.asarray(run.latents[idx])
        recounted = cell_masses(assign(latents, jnp.asarray(points[c]))[0], jnp.full(len(idx), 1.0 / len(idx)), ipc)
        max_error = max(max_error, float(jnp.max(jnp.abs(recounted - weights[c]))))
print(f"largest difference between stored and recounted Voronoi weights: {max_error:.2e}")
checks["stored DDOQ weights = Voronoi cell masses recounted from the latents (to 1e-4)"] = max_error <= 1e-4
# A cell mass is a float32 sum of up to n sample masses, so a class's weights sum to 1 up to
# about n * eps (7e-4 for Fashion-MNIST's 6,000 images per class).
sum_tolerance = max(len(idx) for idx in groups) * float(np.finfo(np.float32).eps)
sum_error = max(float(np.max(np.abs(run.quantized[k]["weights"].sum(1) - 1.0))) for k in run.ipcs)
print(f"largest |sum of a class's weights - 1|: {sum_error:.1e} (float32 accumulation bound {sum_tolerance:.1e})")
checks["DDOQ weights sum to 1 per class (up to float32 accumulation)"] = sum_error <= sum_tolerance
synthetic_keys = [(m, k) for (m, k) in run.synthetic if k in run.quantized]
checks["the synthetic sets carry those weights (ddoq*) and uniform ones (d4m*, random)"] = all(
    np.allclose(run.synthetic[m, k]["weights"], run.quantized[k]["weights"] if m.startswith("ddoq") else 1.0 / k, atol=1e-6)
    for m, k in synthetic_keys)
for claim, ok in checks.items():
    print(f"CHECK {claim}: {'agrees' if ok else 'DISAGREES'}")
print("ALL CLAIMS AGREE" if all(checks.values()) else "SOME CLAIMS DISAGREE")
