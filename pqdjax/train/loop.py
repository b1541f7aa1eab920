"""The training state pytree and the one loop every trainer in pqdjax runs.

A trainer supplies a pure step function

    step_fn(state, data, indices, rng) -> (state, metrics)

jitted with the state donated; `data` is a pytree of device arrays (the
examples, and anything else the step reads, such as a teacher's parameters)
and `indices` the batch of example indices to gather from it. `train`
draws the batches (a fresh permutation each epoch), calls the step, logs
metrics with rate and ETA, and stops with `NonFiniteError` when a metric
becomes NaN or inf.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import struct

PyTree = Any


class NonFiniteError(FloatingPointError):
    """A loss or metric became NaN or inf during training."""


@struct.dataclass
class TrainState:
    """step: int32 scalar; params and opt_state: pytrees."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree


def create_train_state(params: PyTree, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def apply_gradients(state: TrainState, grads: PyTree, tx: optax.GradientTransformation) -> TrainState:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def cosine_adam(learning_rate: float, num_steps: int, warmup_steps: int = 0, weight_decay: float = 0.0, decay_mask=None) -> optax.GradientTransformation:
    """AdamW with linear warmup then cosine decay to 0 over num_steps.

    decay_mask: optional function params -> pytree of bools, True where weight decay applies.
    """
    warmup_steps = min(warmup_steps, max(num_steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, max(num_steps, 1), 0.0) if warmup_steps else optax.cosine_decay_schedule(learning_rate, max(num_steps, 1))
    return optax.adamw(schedule, weight_decay=weight_decay, mask=decay_mask)


def epoch_batches(rng: jax.Array, num_examples: int, batch_size: int, num_steps: int) -> Iterator[jax.Array]:
    """Yields num_steps index batches: each epoch a new permutation, cut into batches (remainder dropped).

    A batch_size at least num_examples gives the whole set, permuted, every step.
    """
    batch_size = min(batch_size, num_examples)
    per_epoch = num_examples // batch_size
    step = 0
    for epoch in range(math.ceil(num_steps / per_epoch)):
        order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
        for b in range(min(per_epoch, num_steps - step)):
            yield order[b * batch_size : (b + 1) * batch_size]
            step += 1


def _check_finite(name: str, step: int, metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise NonFiniteError(
            f"{name}: {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; "
            "lower the learning rate or check the input data for NaN/inf."
        )


def train(
    step_fn: Callable[[TrainState, PyTree, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]],
    state: TrainState,
    data: PyTree,
    *,
    num_examples: int,
    num_steps: int,
    batch_size: int,
    rng: jax.Array,
    name: str,
    log_every: int = 100,
) -> tuple[TrainState, dict[str, float]]:
    """Runs num_steps steps of step_fn; returns the final state and the last metrics (host floats)."""
    batch_rng, step_rng = jax.random.split(rng)
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    for step, indices in enumerate(epoch_batches(batch_rng, num_examples, batch_size, num_steps)):
        state, device_metrics = step_fn(state, data, indices, jax.random.fold_in(step_rng, step))
        done = step + 1
        if done % log_every == 0 or done == num_steps:
            metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            _check_finite(name, done, metrics)
            elapsed = time.perf_counter() - start
            rate = done / elapsed
            logging.info(
                "%s: step %d/%d  %s  (%.1f steps/s, ETA %.0fs)",
                name, done, num_steps, "  ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                rate, (num_steps - done) / rate,
            )
    return state, metrics
