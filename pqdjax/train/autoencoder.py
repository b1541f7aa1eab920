"""Training the VAE prior on images with the negative ELBO."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pqdjax.data.preprocess import to_model_range
from pqdjax.models import vae as vae_lib
from pqdjax.models.fast_conv import fast_conv_gradients
from pqdjax.train import loop


def make_vae_step(vae, tx, kl_weight: float, fast_conv: bool):
    """data = {'images': uint8 [N, H, W, C]}."""

    def loss_fn(params, images, rng):
        with fast_conv_gradients(fast_conv):
            return vae_lib.loss(vae, params, images, rng, kl_weight)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, data, indices, rng):
        images = to_model_range(data["images"][indices])
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, images, rng)
        return loop.apply_gradients(state, grads, tx), {"loss": loss, **metrics}

    return step


def train_vae(vae, images: np.ndarray, config: ml_collections.ConfigDict, rng: jax.Array, fast_conv: bool, checkpoints=None, metrics_dir=None):
    """Trains `vae` on uint8 images [N, H, W, C]; returns its params.

    config fields: steps, batch_size, learning_rate, warmup_steps, kl_weight, log_every.
    checkpoints: a pqdjax.train.checkpoint.Checkpoints to resume from and save to, or None;
    metrics_dir: where the training curve goes (pqdjax.train.metrics), or None.
    """
    init_rng, train_rng = jax.random.split(rng)
    params = vae_lib.init_params(vae, init_rng, images.shape[1])
    schedule = loop.cosine_schedule(config.learning_rate, config.steps, config.warmup_steps)
    tx = optax.adamw(schedule)
    step = make_vae_step(vae, tx, config.kl_weight, fast_conv)
    state, _ = loop.train(
        step, loop.create_train_state(params, tx), {"images": jnp.asarray(images)},
        num_examples=len(images), num_steps=config.steps, batch_size=config.batch_size,
        rng=train_rng, name="vae", log_every=config.log_every, checkpoints=checkpoints,
        metrics_dir=metrics_dir, learning_rate=schedule,
    )
    return state.params
