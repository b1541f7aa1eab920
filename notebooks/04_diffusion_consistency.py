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
# # 4. Consistency under the diffusion pushforward
#
# DDOQ does not use the quantization points themselves: it noises each latent point to
# a diffusion time T (the img2img "strength") and denoises it with the diffusion model,
# i.e. it pushes the quantizer nu_K forward through "noise to T, then run the reverse
# process to a small time delta". The data measure mu goes through the same map.
#
# **Claim.** Forward noising contracts W2 (W2(mu_T, nu_T) <= alpha_T W2(mu, nu_K)), and the
# reverse map Phi (probability-flow ODE) is Lipschitz, so for every 1-Lipschitz f
#
#     |E f(Phi(X_T)) - E f(Phi(Y_T))| <= W1(Phi#mu_T, Phi#nu_T) <= Lip(Phi) W2(mu_T, nu_T),
#
# and the gap in E[f] goes to 0 as K grows, tracking W2(mu_T, nu_T) (Tan & Slade, the
# consistency result behind DDOQ). The reverse SDE, run with the same Brownian path from
# coupled starting points, behaves the same way.
#
# **Set-up, where everything is exact.** mu is a 1-D Gaussian mixture, so the score of
# every noised marginal mu_t is known in closed form (`pqdjax.theory.mixture`); nu_K is
# the K-point Lloyd quantizer of mu (`pqdjax.quantize`, with Voronoi weights) computed on
# the N quantiles F^-1((i + 1/2)/N) of mu, a deterministic sample whose error is O(1/N)
# rather than the O(1/sqrt N) of a random one; mu_T and nu_T are mixtures in closed form; in 1-D, W_p is an integral of
# quantile functions, and Phi is increasing, so Phi#mu_T has quantiles Phi(F^-1(u)). The
# supremum of the gap over all 1-Lipschitz f, W1(Phi#mu_T, Phi#nu_T) (Kantorovich-Rubinstein),
# is computed to quadrature accuracy, not estimated from samples.
#
# **What we check**, for every K and T: W2(mu_T, nu_T) <= alpha_T W2(mu, nu_K);
# the worst gap W1(Phi#mu_T, Phi#nu_T) <= Lip(Phi) W2(mu_T, nu_T); both go down as K grows
# (from the smallest to the largest K by at least 10x); and the ratio of the gap to W2(mu_T, nu_T)
# stays within a factor 10 across K (the gap tracks W2(mu_T, nu_T)). For the SDE: the
# gap for f = |x| stays below the coupling distance E|X_delta - Y_delta|, which falls with K.

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

from pqdjax.quantize import Lloyd, assign, quantize
from pqdjax.theory import diffusion, mixture, rates

QUICK = os.environ.get("PQDJAX_NOTEBOOK_QUICK") == "1"  # small sizes for the test suite
KS = (2, 4, 8, 16) if QUICK else (2, 4, 8, 16, 32, 64)
TIMES = (0.5,) if QUICK else (0.25, 0.5, 0.75)  # T, the noising time (strength)
DELTA = 1e-3  # the reverse process stops at delta > 0, where the score is still smooth
N_LEVELS = 4000 if QUICK else 20000  # quadrature nodes in u for quantile integrals (and the quantized sample)
ODE_STEPS = 100 if QUICK else 400
SDE_STEPS = 200 if QUICK else 1000
N_SDE = 4000 if QUICK else 40000
checks = {}
print("mode:", "quick" if QUICK else "full")

schedule = diffusion.VPSchedule()
mu = mixture.gaussian_mixture([0.25, 0.45, 0.30], [-2.0, 0.0, 2.2], [0.35, 0.5, 0.3])
score_fn = diffusion.mixture_score_fn(mu, schedule)  # the data's score: what a perfect model learns
levels = mixture.quantile_levels(N_LEVELS)

# %% [markdown]
# ## The quantizers nu_K of mu

# %%
sample = mixture.quantiles_1d(mu, levels)[:, None]  # [N_LEVELS, 1], equal masses
quantize_jit = jax.jit(quantize, static_argnames=("k", "method"))
quantizers = {}
for k in KS:
    q = quantize_jit(sample, jnp.full(N_LEVELS, 1.0 / N_LEVELS), k, jax.random.key(k), method=Lloyd(max_iter=500, tol=1e-7))
    quantizers[k] = mixture.point_mixture(q.points, q.weights)
w2_data = {k: float(mixture.wasserstein_1d(mu, nu, n_levels=N_LEVELS)) for k, nu in quantizers.items()}
print("W2(mu, nu_K):", {k: round(v, 4) for k, v in w2_data.items()})

grid = jnp.linspace(-4, 4, 800)[:, None]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
axes[0].plot(grid[:, 0], jnp.exp(mixture.log_density(mu, grid)), "k", label="mu")
nu = quantizers[KS[2]]
axes[0].stem(np.asarray(nu.means[:, 0]), np.asarray(nu.weights), linefmt="C1-", markerfmt="C1o", basefmt=" ", label=f"nu_K, K={KS[2]} (height: weight)")
axes[0].legend(fontsize=8)
axes[0].set_title("the data measure and a quantizer")
T_SHOW = TIMES[len(TIMES) // 2]
axes[1].plot(grid[:, 0], jnp.exp(mixture.log_density(diffusion.noised_mixture(mu, schedule, T_SHOW), grid)), "k", label="mu_T")
for k in KS[:3]:
    nu_t = diffusion.noised_mixture(quantizers[k], schedule, T_SHOW)
    axes[1].plot(grid[:, 0], jnp.exp(mixture.log_density(nu_t, grid)), "--", label=f"nu_T, K={k}")
axes[1].legend(fontsize=8)
axes[1].set_title(f"after noising to T={T_SHOW}: the measures merge")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Push both through the reverse ODE and compare
#
# `flow` is Phi: the probability-flow ODE with the data's score, from T down to delta.
# It is applied to the quantiles of mu_T and nu_T; the gaps for a few 1-Lipschitz test
# functions are integrals over u of f(Phi(F^-1(u))).

# %%
TEST_FUNCTIONS = {"|x|": jnp.abs, "sin x": jnp.sin, "clip(x, -1, 1)": lambda x: jnp.clip(x, -1, 1), "relu(x - 1)": lambda x: jax.nn.relu(x - 1)}


def ode_experiment(t_noise: float) -> dict:
    flow = jax.jit(lambda x: diffusion.reverse_ode(score_fn, schedule, x[:, None], t_noise, DELTA, ODE_STEPS)[:, 0])
    mu_t = diffusion.noised_mixture(mu, schedule, t_noise)
    q_mu = mixture.quantiles_1d(mu_t, levels)
    out_mu = flow(q_mu)
    # Lip(Phi) on the support: the largest slope between neighbouring quantiles of mu_T
    lipschitz = float(jnp.max(jnp.diff(out_mu) / jnp.maximum(jnp.diff(q_mu), 1e-12)))
    rows = []
    for k, nu in quantizers.items():
        q_nu = mixture.quantiles_1d(diffusion.noised_mixture(nu, schedule, t_noise), levels)
        out_nu = flow(q_nu)
        rows.append({
            "k": k,
            "w2_T": float(mixture.wasserstein_from_quantiles(q_mu, q_nu)),
            "w1_T": float(mixture.wasserstein_from_quantiles(q_mu, q_nu, p=1.0)),
            "worst_gap": float(mixture.wasserstein_from_quantiles(out_mu, out_nu, p=1.0)),
            "gaps": {name: abs(float(jnp.mean(f(out_mu)) - jnp.mean(f(out_nu)))) for name, f in TEST_FUNCTIONS.items()},
        })
    return {"alpha": float(schedule.alpha(t_noise)), "lipschitz": lipschitz, "rows": rows}


ode = {t: ode_experiment(t) for t in TIMES}
for t, res in ode.items():
    print(f"T={t}: alpha_T={res['alpha']:.3f}, Lip(Phi) ~ {res['lipschitz']:.2f}")
    for r in res["rows"]:
        print(f"  K={r['k']:3d}  W2(mu,nu_K)={w2_data[r['k']]:.4f}  alpha_T*W2={res['alpha'] * w2_data[r['k']]:.4f}  "
              f"W2(mu_T,nu_T)={r['w2_T']:.2e}  worst gap={r['worst_gap']:.2e}  ratio={r['worst_gap'] / r['w2_T']:.2f}")

# %% [markdown]
# ## The reverse SDE, by Monte Carlo with a synchronous coupling
#
# X_0 ~ mu and Y_0 = its nearest quantization point (so Y_0 ~ nu_K with the Voronoi
# weights); both are noised with the same Gaussian draw and run backwards with the same
# Brownian increments. The gap |E f(X_delta) - E f(Y_delta)| is estimated with its
# standard error. Since |E f(X) - E f(Y)| <= E|X - Y| for 1-Lipschitz f, the coupling's
# mean distance bounds it; that bound falls like W2(mu, nu_K), as the synchronous coupling
# does not exploit the mixing that makes W2(mu_T, nu_T) small.

# %%
T_SDE = T_SHOW


def sde_experiment(t_noise: float) -> list[dict]:
    keys = jax.random.split(jax.random.key(7), 3)
    x0 = mixture.sample(mu, keys[0], N_SDE)
    eps = jax.random.normal(keys[1], x0.shape)
    alpha, sigma = schedule.alpha(t_noise), schedule.sigma(t_noise)
    reverse = jax.jit(lambda x: diffusion.reverse_sde(score_fn, schedule, x, t_noise, DELTA, SDE_STEPS, keys[2]))
    out_mu = reverse(alpha * x0 + sigma * eps)
    rows = []
    for k, nu in quantizers.items():
        y0 = nu.means[assign(x0, nu.means)[0]]
        out_nu = reverse(alpha * y0 + sigma * eps)
        diff = jnp.abs(out_mu[:, 0]) - jnp.abs(out_nu[:, 0])  # f = |x|
        rows.append({"k": k, "gap": abs(float(diff.mean())), "stderr": float(diff.std() / np.sqrt(N_SDE)),
                     "mean_distance": float(jnp.mean(jnp.abs(out_mu - out_nu)))})
    return rows


sde = sde_experiment(T_SDE)
for r in sde:
    print(f"SDE T={T_SDE} K={r['k']:3d}: gap for |x| = {r['gap']:.2e} +- {r['stderr']:.1e}, E|X_delta - Y_delta| = {r['mean_distance']:.2e}")

# %%
fig, axes = plt.subplots(1, len(TIMES) + 1, figsize=(4.2 * (len(TIMES) + 1), 3.8), squeeze=False)
ks = np.asarray(KS)
for ax, (t, res) in zip(axes[0], ode.items()):
    rows = res["rows"]
    ax.loglog(ks, [res["alpha"] * w2_data[k] for k in KS], "k:", label="alpha_T W2(mu, nu_K)")
    ax.loglog(ks, [r["w2_T"] for r in rows], "ko-", label="W2(mu_T, nu_T)")
    ax.loglog(ks, [res["lipschitz"] * r["w2_T"] for r in rows], "k--", lw=0.8, label="Lip(Phi) W2(mu_T, nu_T)")
    ax.loglog(ks, [r["worst_gap"] for r in rows], "C3s-", label="sup over 1-Lip f of the gap (ODE)")
    for name in TEST_FUNCTIONS:
        ax.loglog(ks, [max(r["gaps"][name], 1e-9) for r in rows], ".-", alpha=0.6, lw=0.8, label=f"gap, f = {name}")
    if t == T_SDE:
        ax.errorbar(ks, [r["gap"] for r in sde], yerr=[2 * r["stderr"] for r in sde], fmt="C2^", ms=5, label="gap, f = |x| (SDE, +-2 s.e.)")
    ax.set(title=f"T = {t}", xlabel="K")
    ax.set_ylim(bottom=1e-6)
axes[0, 0].legend(fontsize=6.5)
ax = axes[0, -1]
for t, res in ode.items():
    ax.semilogx(ks, [r["worst_gap"] / r["w2_T"] for r in res["rows"]], "o-", label=f"T={t} (Lip(Phi)={res['lipschitz']:.1f})")
ax.set(title="gap / W2(mu_T, nu_T)", xlabel="K")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The gap decays with K at the rate of W2(mu_T, nu_T), which is much faster than the
# rate K^(-1/d) of W2(mu, nu_K) itself: noising blurs the atoms of nu_K into a smooth
# mixture that matches mu_T closely, so the pushforward is more forgiving than the
# quantization error alone suggests.

# %%
for t, res in ode.items():
    rows = res["rows"]
    slope_gap = rates.loglog_slope(KS, [r["worst_gap"] for r in rows])
    slope_w2 = rates.loglog_slope(KS, [r["w2_T"] for r in rows])
    print(f"T={t}: fitted slopes against K: worst gap {slope_gap:+.2f}, W2(mu_T, nu_T) {slope_w2:+.2f}, W2(mu, nu_K) {rates.loglog_slope(KS, list(w2_data.values())):+.2f}")
    checks[f"T={t}: W2(mu_T, nu_T) <= alpha_T W2(mu, nu_K) for every K"] = all(r["w2_T"] <= res["alpha"] * w2_data[r["k"]] * 1.001 + 1e-6 for r in rows)
    checks[f"T={t}: worst gap <= Lip(Phi) W2(mu_T, nu_T) for every K"] = all(r["worst_gap"] <= res["lipschitz"] * r["w2_T"] * 1.001 + 1e-6 for r in rows)
    checks[f"T={t}: worst gap and W2(mu_T, nu_T) fall at least 10x from K={KS[0]} to K={KS[-1]}"] = (
        rows[-1]["worst_gap"] * 10 <= rows[0]["worst_gap"] and rows[-1]["w2_T"] * 10 <= rows[0]["w2_T"])
    ratios = [r["worst_gap"] / r["w2_T"] for r in rows]
    checks[f"T={t}: gap / W2(mu_T, nu_T) stays within a factor 10 across K"] = max(ratios) <= 10 * min(ratios)
# |E f(X) - E f(Y)| <= E|X - Y| for 1-Lipschitz f: the coupling bounds the SDE's gap
checks[f"SDE T={T_SDE}: gap for |x| <= E|X_delta - Y_delta| + 2 s.e. for every K"] = all(r["gap"] <= r["mean_distance"] + 2 * r["stderr"] for r in sde)
checks[f"SDE T={T_SDE}: E|X_delta - Y_delta| falls at least 5x from K={KS[0]} to K={KS[-1]}"] = sde[-1]["mean_distance"] * 5 <= sde[0]["mean_distance"]
for claim, ok in checks.items():
    print(f"CHECK {claim}: {'agrees' if ok else 'DISAGREES'}")
print("ALL CLAIMS AGREE" if all(checks.values()) else "SOME CLAIMS DISAGREE")
