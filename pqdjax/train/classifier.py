"""Training a classifier on labelled images (the teacher), and evaluating any classifier.

Stored images are uint8 [N, H, W, C]; the step converts them to [-1, 1] and
augments them on the fly.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pqdjax.batching import map_batches
from pqdjax.data.preprocess import to_model_range
from pqdjax.models.fast_conv import fast_conv_gradients
from pqdjax.train import augment, loop, losses


def make_classifier_step(model: nn.Module, tx, crop_padding: int, flip: bool, fast_conv: bool):
    """A jitted supervised step: data = {'images': uint8 [N,H,W,C], 'labels': int [N]}."""

    def loss_fn(params, images, labels):
        with fast_conv_gradients(fast_conv):
            logits = model.apply({"params": params}, images)
        loss = jnp.mean(losses.cross_entropy(logits, labels))
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, data, indices, rng):
        images = augment.crop_and_flip(rng, to_model_range(data["images"][indices]), crop_padding, flip)
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, images, data["labels"][indices])
        return loop.apply_gradients(state, grads, tx), {"loss": loss, "accuracy": accuracy}

    return step


def train_classifier(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    fast_conv: bool,
    name: str = "teacher",
    checkpoints=None,
    metrics_dir: str | None = None,
):
    """Trains `model` with cross-entropy on (images uint8 [N,H,W,C], labels [N]); returns its params.

    config fields: steps, batch_size, learning_rate, warmup_steps, weight_decay,
    crop_padding, flip, log_every. checkpoints: a pqdjax.train.checkpoint.Checkpoints
    to resume from and save to, or None; metrics_dir: where the training curve goes
    (pqdjax.train.metrics), or None.
    """
    init_rng, train_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros((1,) + images.shape[1:], jnp.float32))["params"]
    schedule = loop.cosine_schedule(config.learning_rate, config.steps, config.warmup_steps)
    tx = optax.adamw(schedule, weight_decay=config.weight_decay)
    step = make_classifier_step(model, tx, config.crop_padding, config.flip, fast_conv)
    data = {"images": jnp.asarray(images), "labels": jnp.asarray(labels, jnp.int32)}
    state, _ = loop.train(
        step, loop.create_train_state(params, tx), data, num_examples=len(labels),
        num_steps=config.steps, batch_size=config.batch_size, rng=train_rng, name=name,
        log_every=config.log_every, checkpoints=checkpoints,
        metrics_dir=metrics_dir, learning_rate=schedule,
    )
    return state.params


@functools.partial(jax.jit, static_argnums=0)
def _logits(model: nn.Module, variables, images: jax.Array) -> jax.Array:
    if images.dtype == jnp.uint8:
        images = to_model_range(images)
    return model.apply(variables, images, train=False)


def predict_logits(model: nn.Module, variables: dict, images, batch_size: int = 1000) -> np.ndarray:
    """Logits of images (uint8 or float in [-1, 1], [N, H, W, C]) in fixed-size batches -> [N, classes].

    variables: the model's {'params'[, 'batch_stats']} (BatchNorm in inference mode).
    """
    return map_batches(lambda batch: _logits(model, variables, batch), images, batch_size)


def accuracy(model: nn.Module, variables: dict, images, labels, batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1]; variables: as predict_logits."""
    logits = predict_logits(model, variables, images, batch_size)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
