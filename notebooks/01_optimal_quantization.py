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
# # 1. Optimal quantization in 1-D and 2-D
#
# A K-point quantizer of a measure mu replaces each x by its nearest point among
# c_1..c_K; its distortion is E_mu[min_k |x - c_k|^2]. An optimal quantizer is
# *stationary*: every point is the barycentre (mean) of its Voronoi cell under mu. Lloyd's
# algorithm alternates "assign to the nearest point" and "move each point to its cell's
# barycentre"; each half-step can only lower the distortion.
#
# **Claims checked here.**
# * For N(0, 1) the optimal quantizers are known (Max 1960; `pqdjax.theory.normal`
#   computes them by Lloyd-Max on the density): they are symmetric and stationary, and
#   Lloyd on a sample (`pqdjax.quantize`), best of a few k-means++ starts, reaches their
#   distortion up to sampling error (within 3% with 40000 samples; 10% with the 4000 of
#   the quick mode the tests use). A single start can stop at a worse
#   stationary quantizer: Lloyd finds local optima.
# * Lloyd's distortion never increases from one iteration to the next (up to float32 rounding), on N(0, 1) and on
#   Gaussian mixtures in 1-D and 2-D.
# * CLVQ, the online form of Lloyd that reads the measure in mini-batches, ends within 10%
#   of Lloyd's distortion from the same start; its companion estimate of the cell masses
#   (counts / total) matches the exact Voronoi weights of its points to 0.01; on N(0, 1)
#   with K = 2 its points approach the optimum +-sqrt(2/pi), slowly (to 0.1 here).
# * The Voronoi cells (drawn) partition the plane; their masses are the weights.

# %%
import os
import sys

while not os.path.exists("pyproject.toml") and os.getcwd() != "/":  # run from the repository root
    os.chdir("..")
sys.path.insert(0, os.getcwd())

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from pqdjax.quantize import CLVQState, assign, clvq_step, distortion, kmeans_plus_plus, lloyd, voronoi_weights
from pqdjax.theory import mixture, normal

QUICK = os.environ.get("PQDJAX_NOTEBOOK_QUICK") == "1"  # small sizes for the test suite
N = 4000 if QUICK else 40000  # sample size
ITERATIONS = 15 if QUICK else 40  # Lloyd iterations shown
checks = {}
print("mode:", "quick" if QUICK else "full")

# %% [markdown]
# ## The optimal quantizers of N(0, 1) for small K

# %%
print(" K  distortion   points (weights)")
table = {}
for k in range(1, 9):
    points, weights, dist = normal.normal_optimal_quantizer(k)
    table[k] = (np.asarray(points), np.asarray(weights), float(dist))
    print(f"{k:2d}  {float(dist):.5f}    " + "  ".join(f"{p:+.4f} ({w:.3f})" for p, w in zip(points, weights)))
print("Max (1960), Table I, distortion: K=2 0.3634, K=4 0.1175, K=8 0.03454")

# stationarity: each point is the barycentre of its interval, checked by quadrature on a fine grid
grid = np.linspace(-10, 10, 400001)
density = np.exp(-grid**2 / 2) / np.sqrt(2 * np.pi)
stationarity_error = 0.0
for k, (points, weights, _) in table.items():
    cell = np.argmin(np.abs(grid[:, None] - points[None]), axis=1)
    barycentres = np.array([np.sum(grid[cell == j] * density[cell == j]) / np.sum(density[cell == j]) for j in range(k)])
    stationarity_error = max(stationarity_error, float(np.max(np.abs(barycentres - points))))
print(f"largest |barycentre of the cell - point| over K <= 8: {stationarity_error:.1e}")
checks["N(0,1): the Lloyd-Max quantizers are stationary (points = cell barycentres, to 1e-3)"] = stationarity_error <= 1e-3
checks["N(0,1): the Lloyd-Max quantizers are symmetric"] = all(np.allclose(p, -p[::-1], atol=1e-5) for p, _, _ in table.values())

fig, ax = plt.subplots(figsize=(9, 3.2))
ax.plot(grid[::100], density[::100], "k", lw=1)
for k in (2, 3, 4, 8):
    points, weights, _ = table[k]
    ax.plot(points, np.full(k, 0.45 - 0.05 * k), "o", label=f"K={k}")
    for edge in 0.5 * (points[1:] + points[:-1]):
        ax.plot([edge, edge], [0.45 - 0.05 * k - 0.015, 0.45 - 0.05 * k + 0.015], "k-", lw=0.8)
ax.set(xlim=(-3.5, 3.5), title="optimal quantizers of N(0, 1) (ticks: Voronoi cell boundaries)", yticks=[])
ax.legend(fontsize=8, loc="upper right")
plt.show()

# %% [markdown]
# ## Lloyd's iterations: distortion against iterations
#
# From the same k-means++ start, `lloyd` is run for 0, 1, 2, ... iterations (tolerance 0),
# on a sample of N(0, 1), of a 1-D mixture and of a 2-D mixture.

# %%
lloyd_jit = jax.jit(lloyd)  # max_iter and tol are traced: one compilation per shape


def lloyd_curve(x: jax.Array, k: int, rng: jax.Array) -> np.ndarray:
    mass = jnp.full(x.shape[0], 1.0 / x.shape[0])
    init = kmeans_plus_plus(x, mass, k, rng)
    return np.array([float(lloyd_jit(x, mass, init, i, 0.0).distortion) for i in range(ITERATIONS + 1)])


measures = {
    "N(0, 1)": mixture.gaussian_mixture([1.0], [0.0], [1.0]),
    "1-D mixture": mixture.gaussian_mixture([0.5, 0.3, 0.2], [-2.0, 0.5, 3.0], [0.5, 0.8, 0.4]),
    "2-D mixture": mixture.gaussian_mixture([0.5, 0.3, 0.2], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.5]], [0.7, 0.5, 0.4]),
}
samples = {name: mixture.sample(m, jax.random.key(i), N) for i, (name, m) in enumerate(measures.items())}
K_CURVES = 8
curves = {name: lloyd_curve(x, K_CURVES, jax.random.key(10)) for name, x in samples.items()}

fig, ax = plt.subplots(figsize=(6, 3.6))
for name, curve in curves.items():
    ax.semilogy(curve, "o-", ms=3, label=name)
ax.axhline(table[K_CURVES][2], color="C0", ls="--", lw=0.8, label=f"optimal for N(0, 1), K={K_CURVES}")
ax.set(xlabel="Lloyd iterations", ylabel="distortion", title=f"Lloyd from k-means++, K = {K_CURVES}")
ax.legend(fontsize=8)
plt.show()

for name, curve in curves.items():
    print(f"{name}: distortion {curve[0]:.4f} (k-means++) -> {curve[-1]:.4f} after {ITERATIONS} iterations")
# The distortion is computed in float32 with the expanded |x|^2 - 2 x.c + |c|^2, whose rounding
# is about eps * E|x|^2: allow that much (a few times float32's eps) between iterations.
slack = {name: 4 * float(jnp.finfo(jnp.float32).eps) * float(jnp.mean(jnp.sum(x**2, axis=1))) for name, x in samples.items()}
print("largest increase between iterations:", {name: f"{np.diff(c).max():.1e} (slack {slack[name]:.1e})" for name, c in curves.items()})
checks["Lloyd's distortion never increases between iterations (up to float32 rounding)"] = all(np.all(np.diff(c) <= slack[name]) for name, c in curves.items())
# Lloyd stops at a stationary quantizer, which can be a local optimum: keep the best of a
# few k-means++ starts, each run to convergence.
x = samples["N(0, 1)"]
mass = jnp.full(N, 1.0 / N)
starts = [lloyd_jit(x, mass, kmeans_plus_plus(x, mass, K_CURVES, jax.random.key(s)), 2000, 1e-9) for s in range(8)]
print("distortion of Lloyd from 8 k-means++ starts:", np.round([float(q.distortion) for q in starts], 4))
best = min(starts, key=lambda q: float(q.distortion))
gap = float(best.distortion) / table[K_CURVES][2] - 1
print(f"best of them vs the exact optimum, K = {K_CURVES}: {100 * gap:+.2f}%; points {np.round(np.sort(best.points[:, 0]), 3)}")
tolerance = 0.10 if QUICK else 0.03  # the sampling error of the distortion shrinks like 1/sqrt(N)
checks[f"Lloyd on {N} samples of N(0, 1) reaches the optimal distortion for K={K_CURVES} within {tolerance:.0%}"] = abs(gap) <= tolerance

# %% [markdown]
# ## CLVQ: the online form of Lloyd
#
# CLVQ (competitive learning vector quantization, `pqdjax.quantize.clvq_step`) reads the
# measure in mini-batches: each sample moves its nearest point towards itself with step
# 1/count, count being the number of samples that point has won so far, so every point is
# the mean of the samples it has won (mini-batch k-means, which D4M uses). Only a
# mini-batch and the K points are in memory at a time, and counts / total is the companion
# estimate of the cell masses. Below, from the same k-means++ start as Lloyd above, the
# distortion over the whole sample against the number of samples read (Lloyd reads all N
# per iteration).

# %%
BATCH = 256  # samples per mini-batch
CLVQ_STEPS = 200 if QUICK else 800  # mini-batches
clvq_step_jit = jax.jit(clvq_step)
distortion_jit = jax.jit(distortion)


def run_clvq(x: jax.Array, init: jax.Array, rng: jax.Array, record_every: int = 10):
    """CLVQ from `init` [K, d] on uniform mini-batches of x [N, d]; returns (samples read, distortions, final state)."""
    mass = jnp.full(x.shape[0], 1.0 / x.shape[0])
    state = CLVQState(points=init, counts=jnp.zeros(init.shape[0]))
    read, curve = [0], [float(distortion_jit(x, mass, init))]
    for step in range(1, CLVQ_STEPS + 1):
        rng, batch_rng = jax.random.split(rng)
        state = clvq_step_jit(state, x[jax.random.randint(batch_rng, (BATCH,), 0, x.shape[0])])
        if step % record_every == 0:
            read.append(step * BATCH)
            curve.append(float(distortion_jit(x, mass, state.points)))
    return np.array(read), np.array(curve), state


fig, ax = plt.subplots(figsize=(7, 3.8))
clvq_gap, mass_error = {}, {}
for i, (name, x) in enumerate(samples.items()):
    mass = jnp.full(N, 1.0 / N)
    read, curve, state = run_clvq(x, kmeans_plus_plus(x, mass, K_CURVES, jax.random.key(10)), jax.random.key(20))
    ax.loglog(np.maximum(read, 1), curve, "-", color=f"C{i}", label=f"CLVQ, {name}")
    ax.loglog(N * np.arange(1, ITERATIONS + 1), curves[name][1:], "o", ms=3, color=f"C{i}", label=f"Lloyd, {name}")
    clvq_gap[name] = curve[-1] / curves[name][-1] - 1
    mass_error[name] = float(jnp.max(jnp.abs(voronoi_weights(x, mass, state.points) - state.mass_estimate)))
    print(f"{name}: CLVQ {curve[-1]:.4f} after {read[-1]} samples, Lloyd {curves[name][-1]:.4f} "
          f"({100 * clvq_gap[name]:+.1f}%); |mass estimate - Voronoi weights| <= {mass_error[name]:.4f}")
ax.set(xlabel="samples read", ylabel="distortion", title=f"CLVQ (mini-batches of {BATCH}) and Lloyd, K = {K_CURVES}")
ax.legend(fontsize=7, ncol=2)
plt.show()
checks[f"CLVQ ends within 10% of Lloyd's distortion on all three measures (K={K_CURVES})"] = all(g <= 0.10 for g in clvq_gap.values())
checks["CLVQ's companion mass estimate matches the Voronoi weights of its points to 0.01"] = max(mass_error.values()) <= 0.01

# %% [markdown]
# With the 1/count step each point is the mean of *every* sample it has won, including those
# won while the points were still far from their limit; the old samples are forgotten only
# as 1/count, so CLVQ approaches a stationary quantizer slowly. On N(0, 1) with K = 2:

# %%
x = samples["N(0, 1)"]
_, _, state = run_clvq(x, kmeans_plus_plus(x, jnp.full(N, 1.0 / N), 2, jax.random.key(1)), jax.random.key(2))
clvq_points = np.sort(np.asarray(state.points[:, 0]))
optimum = np.sqrt(2 / np.pi)
print(f"CLVQ, K = 2, after {CLVQ_STEPS * BATCH} samples: points {np.round(clvq_points, 4)}; optimum +-{optimum:.4f}")
checks["CLVQ on N(0, 1), K = 2: points within 0.1 of +-sqrt(2/pi)"] = bool(np.max(np.abs(clvq_points - np.array([-optimum, optimum]))) <= 0.1)

# %% [markdown]
# ## Voronoi cells in 2-D
#
# The plane coloured by nearest point; the points sized by their weight (cell mass).

# %%
def draw_cells(ax, x: jax.Array, k: int, title: str) -> None:
    mass = jnp.full(x.shape[0], 1.0 / x.shape[0])
    q = lloyd_jit(x, mass, kmeans_plus_plus(x, mass, k, jax.random.key(3)), 200, 1e-6)
    lo, hi = jnp.min(x, 0) - 0.5, jnp.max(x, 0) + 0.5
    gx, gy = jnp.meshgrid(jnp.linspace(lo[0], hi[0], 300), jnp.linspace(lo[1], hi[1], 300))
    cells = assign(jnp.stack([gx.ravel(), gy.ravel()], 1), q.points)[0].reshape(gx.shape)
    ax.pcolormesh(gx, gy, cells % 20, cmap="tab20", alpha=0.35, shading="auto")
    ax.scatter(x[:1500, 0], x[:1500, 1], s=1, c="k", alpha=0.3)
    ax.scatter(q.points[:, 0], q.points[:, 1], s=3000 * np.asarray(q.weights), c="C3", edgecolors="k")
    ax.set(title=f"{title}, K={k}: distortion {float(q.distortion):.3f}", aspect="equal")


fig, axes = plt.subplots(1, 2, figsize=(11, 5))
draw_cells(axes[0], jax.random.normal(jax.random.key(5), (N, 2)), 16, "N(0, I_2)")
draw_cells(axes[1], samples["2-D mixture"], 16, "2-D mixture")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Do the numbers agree with the theory?

# %%
for claim, ok in checks.items():
    print(f"CHECK {claim}: {'agrees' if ok else 'DISAGREES'}")
print("ALL CLAIMS AGREE" if all(checks.values()) else "SOME CLAIMS DISAGREE")
