"""The training state pytree and the one loop every trainer in pqdjax runs.

A trainer supplies a pure step function

    step_fn(state, data, batch, rng) -> (state, metrics)

jitted with the state donated; `data` is a pytree of device arrays the step
reads in every step (the examples when they fit in device memory, a
teacher's parameters) and `batch` what `make_batch` makes of the step's
example indices: by default the indices themselves, for the step to gather
from `data`; or the examples, read from host memory and sharded over a mesh
(the ImageNet student). `train` draws the batches (a fresh permutation each
epoch), calls the step, shows progress and metrics with rate and ETA,
checkpoints the state every few steps (pqdjax.train.checkpoint) and resumes
from the newest checkpoint, and stops with `NonFiniteError` when a metric
becomes NaN or inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from pqdjax.progress import Progress
from pqdjax.train.checkpoint import CheckpointSaver
from pqdjax.train.metrics import MetricsWriter
from pqdjax import errors

PyTree = Any


NonFiniteError = errors.NonFiniteError  # a loss or metric became NaN or inf during training


@struct.dataclass
class TrainState:
    """step: int32 scalar; params and opt_state: pytrees; ema_params: an exponential
    moving average of params (same tree), or None where the trainer keeps none."""

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    ema_params: PyTree = None


def create_train_state(params: PyTree, tx: optax.GradientTransformation, ema: bool = False) -> TrainState:
    """A state at step 0; with ema=True its ema_params start as a copy of params."""
    ema_params = jax.tree.map(jnp.copy, params) if ema else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), ema_params=ema_params)


def ema_update(ema_params: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
    """decay * ema + (1 - decay) * params, leaf by leaf."""
    return optax.incremental_update(params, ema_params, 1.0 - decay)


def apply_gradients(state: TrainState, grads: PyTree, tx: optax.GradientTransformation, ema_decay: float | None = None) -> TrainState:
    """One optimizer update; the EMA (where the state has one) follows the new params with `ema_decay`."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        if ema_decay is None:
            raise ValueError("this train state keeps an EMA of its params: pass ema_decay to apply_gradients.")
        ema_params = ema_update(ema_params, params, ema_decay)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params)


def cosine_schedule(learning_rate: float, num_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Linear warmup from 0 over warmup_steps, then cosine decay to 0 at num_steps."""
    warmup_steps = min(warmup_steps, max(num_steps - 1, 0))
    if warmup_steps:
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps, max(num_steps, 1), 0.0)
    return optax.cosine_decay_schedule(learning_rate, max(num_steps, 1))


def training_steps(config, num_examples: int, batch_size: int | None = None) -> int:
    """A trainer's length in steps: config.epochs passes over num_examples (epoch_batches' epochs of
    num_examples // min(batch_size, num_examples) steps) where config has epochs > 0, else config.steps.
    batch_size: the batch the trainer draws (default config.batch_size)."""
    epochs = config.get("epochs", 0)
    if not epochs:
        return config.steps
    return epochs * (num_examples // min(batch_size or config.batch_size, num_examples))


def epoch_batches(rng: jax.Array, num_examples: int, batch_size: int, num_steps: int, first_step: int = 0) -> Iterator[jax.Array]:
    """Yields the index batches of steps first_step .. num_steps - 1.

    Each epoch is a new permutation (keyed by the epoch number), cut into
    batches (remainder dropped), so the batch of a step depends only on
    (rng, step) and a resumed run sees the batches an uninterrupted one would.
    A batch_size at least num_examples gives the whole set, permuted, every step.
    """
    batch_size = min(batch_size, num_examples)
    per_epoch = num_examples // batch_size
    step = first_step
    for epoch in range(first_step // per_epoch, math.ceil(num_steps / per_epoch)):
        order = jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)
        for b in range(step - epoch * per_epoch, min(per_epoch, num_steps - epoch * per_epoch)):
            yield order[b * batch_size : (b + 1) * batch_size]
            step += 1


def _check_finite(name: str, step: int, metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise NonFiniteError(
            f"{name}: {', '.join(f'{k}={v}' for k, v in bad.items())} at step {step}; "
            "lower the learning rate or check the input data for NaN/inf."
        )


@jax.jit
def _all_finite(tree: PyTree) -> jax.Array:
    """Whether every float leaf of `tree` is finite (one reduction on device)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _check_state_finite(name: str, step: int, state: PyTree) -> None:
    """The state about to be saved or returned: a step's reported loss predates its update, so the update is checked too."""
    if not bool(_all_finite(state)):
        raise NonFiniteError(
            f"{name}: the parameters or optimizer state became NaN or inf by step {step}; "
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
    checkpoints: CheckpointSaver | None = None,
    metrics_dir: str | None = None,
    learning_rate: optax.Schedule | None = None,
    make_batch: Callable[[jax.Array], PyTree] | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """Runs num_steps steps of step_fn; returns the final state and the last metrics (host floats).

    With `checkpoints`, resumes from the newest matching checkpoint (its state
    replaces `state`, which then only gives the structure) and saves the state
    every `checkpoints.every` steps; the result is bit-identical to a run
    without interruption. Metrics are checked for NaN/inf every log_every
    steps and before every checkpoint, and the state itself before every
    checkpoint and at the end, so no non-finite state is saved or returned.
    With `metrics_dir`, the metrics of every logged step, the learning rate
    (the schedule `learning_rate` at that step) and the steps per second go to
    pqdjax.train.metrics (JSON lines and TensorBoard) under that folder.
    make_batch: example indices int [batch_size] -> the step's batch (default: the indices).
    `state` may be any pytree with a `step` (a TrainState, or one wrapping it).
    """
    batch_rng, step_rng = jax.random.split(rng)
    try:
        return _train_steps(step_fn, state, data, num_examples, num_steps, batch_size, batch_rng, step_rng, name,
                            log_every, checkpoints, metrics_dir, learning_rate, make_batch)
    finally:
        if checkpoints:
            checkpoints.close()


def _train_steps(step_fn, state, data, num_examples, num_steps, batch_size, batch_rng, step_rng, name, log_every,
                 checkpoints, metrics_dir, learning_rate, make_batch):
    restored = checkpoints.restore(state) if checkpoints else None
    state = restored if restored is not None else state
    first_step = int(state.step)
    every = checkpoints.every if checkpoints else 0
    progress = Progress(name, num_steps, log_every=log_every, first=first_step)
    writer = MetricsWriter(metrics_dir, name, first_step) if metrics_dir else None
    metrics: dict[str, float] = {}
    for step, indices in enumerate(epoch_batches(batch_rng, num_examples, batch_size, num_steps, first_step), first_step):
        batch = make_batch(indices) if make_batch else indices
        state, device_metrics = step_fn(state, data, batch, jax.random.fold_in(step_rng, step))
        done = step + 1
        checkpoint_now = every and done % every == 0
        log_now = done % log_every == 0 or done == num_steps
        if log_now or checkpoint_now:
            metrics = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
            _check_finite(name, done, metrics)
        if writer and log_now:
            extra = {"learning_rate": float(learning_rate(step))} if learning_rate else {}
            writer.write(done, {**metrics, **extra, "steps_per_second": progress.rate(done)})
        if checkpoint_now:
            _check_state_finite(name, done, state)
            checkpoints.save(state, done)
        progress.update(done, metrics)
    if writer:
        writer.close()
    _check_state_finite(name, num_steps, state)
    return state, metrics
