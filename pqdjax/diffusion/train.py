"""Training the class-conditioned latent denoiser (epsilon prediction, class dropout, an EMA of the weights).

The noise schedule is the denoiser's (config.denoiser.model: Stable Diffusion's
scaled-linear one by default). Sampling uses the EMA of the weights, as latent
diffusion models do: the raw weights of a short training are noisier.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pqdjax.models.denoiser import LatentDenoiser
from pqdjax.models.fast_conv import fast_conv_gradients
from pqdjax.train import loop


def make_denoiser_step(denoiser: LatentDenoiser, tx, class_dropout: float, fast_conv: bool, ema_decay: float):
    """data = {'latents': float [N, h, w, c], 'labels': int [N]}; the state keeps an EMA with ema_decay."""

    def loss_fn(params, latents, labels, rng):
        with fast_conv_gradients(fast_conv):
            return denoiser.loss(params, latents, labels, rng, class_dropout)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, data, indices, rng):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, data["latents"][indices], data["labels"][indices], rng
        )
        return loop.apply_gradients(state, grads, tx, ema_decay), {"loss": loss, **metrics}

    return step


def train_denoiser(
    denoiser: LatentDenoiser, latents: np.ndarray, labels: np.ndarray, config: ml_collections.ConfigDict, rng: jax.Array,
    fast_conv: bool, checkpoints=None, metrics_dir: str | None = None,
):
    """Trains `denoiser` on latents [N, h, w, c] with labels int [N]; returns (EMA params, last metrics).

    config fields: steps, batch_size, learning_rate, warmup_steps, class_dropout, ema_decay, log_every.
    checkpoints: a pqdjax.train.checkpoint.Checkpoints to resume from and save to, or None;
    metrics_dir: where the training curve goes (pqdjax.train.metrics), or None.
    """
    init_rng, train_rng = jax.random.split(rng)
    params = denoiser.init_params(init_rng)
    schedule = loop.cosine_schedule(config.learning_rate, config.steps, config.warmup_steps)
    tx = optax.adamw(schedule)
    step = make_denoiser_step(denoiser, tx, config.class_dropout, fast_conv, config.ema_decay)
    data = {"latents": jnp.asarray(latents, jnp.float32), "labels": jnp.asarray(labels, jnp.int32)}
    state, metrics = loop.train(
        step, loop.create_train_state(params, tx, ema=True), data,
        num_examples=len(latents), num_steps=config.steps, batch_size=config.batch_size,
        rng=train_rng, name="denoiser", log_every=config.log_every, checkpoints=checkpoints,
        metrics_dir=metrics_dir, learning_rate=schedule,
    )
    return state.ema_params, metrics
