"""img2img in latent space: noise the latents to the time set by `strength`, then denoise with DDIM.

As in SDEdit / diffusers' img2img pipelines: with S scheduler steps, the
sampler skips the first S - round(S * strength) of them, noises the input
latents to the timestep where it starts (the forward process q(z_t | z_0)),
and runs the remaining DDIM steps (eta = 0, deterministic given the noise).
strength 0 returns the input latents unchanged; strength 1 starts from pure
noise (init_noise_sigma * N(0, I)), i.e. plain sampling. `sample_from` runs
the whole reverse process from given latents in place of that noise (the
point taken as the initial latent).

The model is any epsilon-prediction function

    eps_fn(params, latents [B, h, w, c], timesteps int32 [B], context [B, ...]) -> [B, h, w, c]

(latents channels last; context: text encodings [B, L, D], class
embeddings, or class labels int [B]). Classifier-free guidance evaluates it on the
unconditional and the conditional context in one batch of 2B and combines
eps_u + guidance * (eps_c - eps_u).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

EpsFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def start_index(steps: int, strength: float) -> int:
    """Index into the scheduler's `steps` timesteps where img2img starts (steps: none are run)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    return steps - min(int(round(steps * strength)), steps)


def guided_epsilon(eps_fn: EpsFn, params, latents: jax.Array, t: jax.Array, cond: jax.Array, uncond: jax.Array, guidance) -> jax.Array:
    """eps_u + guidance * (eps_c - eps_u), both from one model call on [uncond; cond]."""
    n = latents.shape[0]
    timesteps = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (2 * n,))
    eps = eps_fn(params, jnp.concatenate([latents, latents]), timesteps, jnp.concatenate([uncond, cond]))
    eps_uncond, eps_cond = eps[:n], eps[n:]
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def initial_noise(rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """N(0, I) of `shape` from one key, or from one key per example (rng [n] for shape [n, ...]): then an
    example's noise depends only on its key, not on which batch it is decoded in."""
    if rng.ndim == 0:
        return jax.random.normal(rng, shape, dtype)
    return jax.vmap(lambda key: jax.random.normal(key, shape[1:], dtype))(rng)


def _denoise(eps_fn: EpsFn, scheduler, state, params, x: jax.Array, first, cond, uncond, guidance, steps: int) -> jax.Array:
    """Runs the scheduler's DDIM steps first .. steps - 1 from x (at timestep index `first`)."""
    timesteps = state.timesteps

    def body(i, x):
        t = timesteps[i]
        eps = guided_epsilon(eps_fn, params, scheduler.scale_model_input(state, x, t), t, cond, uncond, guidance)
        return scheduler.step(state, eps, t, x).prev_sample

    return jax.lax.fori_loop(first, steps, body, x)


@functools.partial(jax.jit, static_argnames=("eps_fn", "scheduler", "steps"))
def img2img(
    eps_fn: EpsFn,
    scheduler,
    params,
    latents: jax.Array,
    cond: jax.Array,
    uncond: jax.Array,
    rng: jax.Array,
    *,
    strength: float | jax.Array,
    guidance: float | jax.Array,
    steps: int,
) -> jax.Array:
    """Latents [n, h, w, c] -> latents [n, h, w, c] after noising to `strength` and `steps`-step DDIM denoising.

    scheduler: a diffusers FlaxDDIMScheduler (its state is created here);
    cond, uncond: contexts [n, ...] (class labels, class embeddings or text
    encodings, and their null / negative counterpart); rng: the key of the
    initial noise, or one key per latent [n] (initial_noise); strength in [0, 1] and guidance are traced (one compilation
    serves all values). eps_fn and scheduler are static: pass the same objects
    to reuse the compiled sampler.
    """
    state = scheduler.set_timesteps(scheduler.create_state(), steps, latents.shape)
    timesteps = state.timesteps
    # As start_index, traced: the loop runs the last round(steps * strength) steps.
    first = steps - jnp.clip(jnp.round(steps * jnp.asarray(strength, jnp.float32)).astype(jnp.int32), 0, steps)
    noise = initial_noise(rng, latents.shape, latents.dtype)
    noised = scheduler.add_noise(state, latents, noise, timesteps[jnp.minimum(first, steps - 1)])
    x = jnp.where(first == steps, latents, jnp.where(first == 0, noise * state.init_noise_sigma, noised))
    return _denoise(eps_fn, scheduler, state, params, x, first, cond, uncond, guidance, steps)


@functools.partial(jax.jit, static_argnames=("eps_fn", "scheduler", "steps"))
def sample_from(
    eps_fn: EpsFn,
    scheduler,
    params,
    initial: jax.Array,
    cond: jax.Array,
    uncond: jax.Array,
    *,
    guidance: float | jax.Array,
    steps: int,
) -> jax.Array:
    """The whole reverse process (`steps` DDIM steps from the last timestep) started at `initial` [n, h, w, c]
    in place of Gaussian noise (times the scheduler's init_noise_sigma); deterministic. Arguments as img2img."""
    state = scheduler.set_timesteps(scheduler.create_state(), steps, initial.shape)
    return _denoise(eps_fn, scheduler, state, params, initial * state.init_noise_sigma, 0, cond, uncond, guidance, steps)
