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
# # 2. Quantization rates: distortion and W2 against K, dimension by dimension
#
# **Claim (Zador 1982; Pierce 1970; Graf & Luschgy 2000).** For a measure mu on R^d with a
# density and a finite moment of order 2 + eps, the optimal K-point quantizer's distortion
# e_K^2 = min E|X - q(X)|^2 decays like K^(-2/d), so its W2 distance to mu
# (= e_K, with Voronoi weights) decays like **K^(-1/d)**; more precisely
# K^(2/d) e_K^2 -> Q_d ||f||_{d/(d+2)} (Zador's constant; Q_1 = 1/12, Q_2 = 5/(18 sqrt 3)).
# Pierce's lemma bounds e_K by C K^(-1/d) for every K, not only asymptotically.
#
# This is why quantizing a class's latents with a few points works in low dimensions and
# why the rate degrades with the latent dimension (curse of dimensionality).
#
# **What we check.** We quantize the uniform measure on [0, 1]^d and the standard normal
# N(0, I_d) for d = 1..4 with K = 4..128 points (k-means++ then Lloyd, `pqdjax.quantize`)
# on a large sample, measure the distortion on a fresh sample, and fit the slope of
# log W2 against log K:
#
# * uniform: fitted slope within 0.05 of -1/d (its asymptotic regime starts at small K);
# * normal: the Gaussian tails make the approach slow: the fitted slope lies between
#   -1/d and 0.8 (-1/d), and for d = 1 the exact optimal quantizers (Lloyd-Max on the
#   density, `pqdjax.theory.normal`) show the local slope reaching -1 (within 0.05) and
#   K^2 e_K^2 approaching Zador's (Panter-Dite) constant sqrt(3) pi / 2;
# * d = 2: the normal's K e_K^2 approaches Zador's constant within 10% at K = 128.

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

from pqdjax.quantize import Lloyd, distortion, quantize
from pqdjax.theory import normal, rates

QUICK = os.environ.get("PQDJAX_NOTEBOOK_QUICK") == "1"  # small sizes for the test suite
DIMS = (1, 2) if QUICK else (1, 2, 3, 4)
KS = (4, 8, 16, 32) if QUICK else (4, 8, 16, 32, 64, 128)
N_TRAIN = 2000 if QUICK else 6000  # the sample that is quantized
N_TEST = 4000 if QUICK else 10000  # a fresh sample on which the distortion is measured
checks = {}
print("mode:", "quick" if QUICK else "full")

# %% [markdown]
# ## Distortion of Lloyd's quantizer against K

# %%
quantize_jit = jax.jit(quantize, static_argnames=("k", "method"))
SAMPLERS = {"uniform": jax.random.uniform, "normal": jax.random.normal}


def distortion_curve(name: str, d: int) -> np.ndarray:
    """Out-of-sample distortion of the K-point Lloyd quantizer of the sample, for every K in KS."""
    key = jax.random.fold_in(jax.random.key(0), d)
    x = SAMPLERS[name](jax.random.fold_in(key, 0), (N_TRAIN, d))
    x_test = SAMPLERS[name](jax.random.fold_in(key, 1), (N_TEST, d))
    out = []
    for k in KS:
        q = quantize_jit(x, jnp.full(N_TRAIN, 1.0 / N_TRAIN), k, jax.random.fold_in(key, k), method=Lloyd(max_iter=200, tol=1e-5))
        out.append(float(distortion(x_test, jnp.full(N_TEST, 1.0 / N_TEST), q.points)))
    return np.array(out)


curves = {(name, d): distortion_curve(name, d) for name in SAMPLERS for d in DIMS}
slopes = {key: rates.loglog_slope(KS, np.sqrt(e2)) for key, e2 in curves.items()}
for (name, d), slope in slopes.items():
    print(f"{name:8s} d={d}: fitted slope of W2 {slope:+.3f}, theory {-1 / d:+.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, name in zip(axes, SAMPLERS):
    for d in DIMS:
        w2 = np.sqrt(curves[name, d])
        (line,) = ax.loglog(KS, w2, "o-", label=f"d={d}: slope {slopes[name, d]:+.2f} (theory {-1 / d:+.2f})")
        ax.loglog(KS, w2[0] * (np.asarray(KS) / KS[0]) ** (-1 / d), ":", color=line.get_color())
    if name == "normal":
        for d in (1, 2):
            if d in DIMS:
                ax.loglog(KS, np.sqrt(normal.zador_normal_distortion(np.asarray(KS), d)), "k--", lw=0.8)
        ax.text(KS[-1], float(np.sqrt(normal.zador_normal_distortion(KS[-1], 1))), " Zador d=1", fontsize=8, va="top")
    ax.set(title=f"{name} on R^d: W2 of the K-point quantizer", xlabel="K", ylabel="W2 = sqrt(distortion)")
    ax.legend(fontsize=8)
fig.suptitle("dotted: the rate K^(-1/d) through the first point; dashed: Zador's asymptote")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The exact optimal quantizers of N(0, 1): local slope and Zador's constant
#
# Lloyd-Max on the density gives the optimal quantizer to float precision, so the
# pre-asymptotic behaviour of the Gaussian can be seen without sampling noise.

# %%
exact_ks = np.array([2, 4, 8, 16, 32] if QUICK else [2, 4, 8, 16, 32, 64, 128])
exact = np.array([float(normal.normal_optimal_quantizer(int(k), iterations=4000)[2]) for k in exact_ks])
local_slopes = np.diff(np.log(np.sqrt(exact))) / np.diff(np.log(exact_ks))
panter_dite = float(normal.zador_normal_distortion(1, 1))
for k, e2, s in zip(exact_ks[1:], exact[1:], local_slopes):
    print(f"K={k:4d}: e_K^2 = {e2:.3e}, K^2 e_K^2 = {k**2 * e2:.4f} (Zador {panter_dite:.4f}), local slope of W2 {s:+.3f}")
if 1 in DIMS:
    sampled = curves["normal", 1]
    print("Lloyd on samples vs exact, K = 4, 8, 16:", np.round(sampled[:3], 4), np.round(exact[1:4], 4))

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].semilogx(exact_ks, exact_ks**2 * exact, "o-", label="K^2 e_K^2 (exact optimal quantizer)")
axes[0].axhline(panter_dite, color="k", ls="--", label="Zador / Panter-Dite sqrt(3) pi / 2")
axes[0].set(xlabel="K", title="N(0, 1): normalised distortion")
axes[0].legend(fontsize=8)
axes[1].semilogx(exact_ks[1:], local_slopes, "o-")
axes[1].axhline(-1, color="k", ls="--")
axes[1].set(xlabel="K", ylabel="local slope of log W2", title="N(0, 1): the slope reaches -1/d = -1")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Do the numbers agree with the theory?

# %%
for d in DIMS:
    checks[f"uniform d={d}: fitted slope within 0.05 of -1/d"] = abs(slopes["uniform", d] + 1 / d) <= 0.05
    checks[f"normal d={d}: fitted slope between -1/d and 0.8 (-1/d)"] = -1 / d - 0.02 <= slopes["normal", d] <= -0.8 / d
checks["N(0,1) exact: local slope of W2 within 0.05 of -1 at the largest K"] = abs(local_slopes[-1] + 1) <= 0.05
checks["N(0,1) exact: K^2 e_K^2 within 10% of Zador's constant at the largest K"] = abs(exact_ks[-1] ** 2 * exact[-1] / panter_dite - 1) <= 0.10
if not QUICK:
    ratio = KS[-1] * curves["normal", 2][-1] / float(normal.zador_normal_distortion(1, 2))
    checks[f"normal d=2: K e_K^2 within 10% of Zador's constant at K={KS[-1]} (ratio {ratio:.3f})"] = abs(ratio - 1) <= 0.10
for claim, ok in checks.items():
    print(f"CHECK {claim}: {'agrees' if ok else 'DISAGREES'}")
print("ALL CLAIMS AGREE" if all(checks.values()) else "SOME CLAIMS DISAGREE")
