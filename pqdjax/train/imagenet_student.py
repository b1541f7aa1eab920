"""Student training of the ImageNet protocol (SRe2L / RDED / D4M), data-parallel and resumable.

The protocol: a student (ResNet-18 by default) trains for E epochs on the
synthetic images with AdamW (lr 1e-3, weight decay 0.01, not on BatchNorm
scales and biases), a cosine schedule, RandomResizedCrop 224 (scale 0.08-1),
horizontal flip and CutMix; the target is the teacher's softmax at temperature
20 on the same augmented batch, and each image's KL is multiplied by its
weight (DDOQ: its Voronoi cell mass, rescaled to mean 1 per class).

Devices: the step is jitted over the run's Mesh with the batch sharded on the
'data' axis and parameters, optimizer state and BatchNorm statistics
replicated (pqdjax.parallel); BatchNorm normalises by the statistics of the
global batch, so the step equals the single-device step. Each process reads its
part of every global batch from host memory.

Training runs in the one loop of pqdjax.train.loop (batches, progress,
training curves, NaN checks). Resuming: with a checkpoint folder, an orbax
CheckpointManager (pqdjax.train.checkpoint.ManagedCheckpoints: asynchronous,
keeping the last N, every host writing its shards) saves the state every
`checkpoint_every` steps; a rerun restores the latest one and continues.
Batches and augmentation keys are pure functions of (rng, step), so a resumed
run continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from pqdjax import parallel
from pqdjax.data.imagenet import normalize
from pqdjax.train import loop, losses, weighting
from pqdjax.train.imagenet_augment import student_augment
from pqdjax.errors import ConfigError, InputError
from pqdjax.train.checkpoint import ManagedCheckpoints

PyTree = Any


@struct.dataclass
class BatchNormTrainState:
    """A loop.TrainState (step, params, opt_state) and the model's BatchNorm statistics."""

    train: loop.TrainState
    batch_stats: PyTree

    @property
    def step(self) -> jax.Array:
        return self.train.step


def decay_mask(params: PyTree) -> PyTree:
    """True for the leaves weight decay applies to: conv and dense kernels, not norm scales or biases (1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Cosine decay over num_steps after an optional linear warmup (config.warmup_steps)."""
    return loop.cosine_schedule(config.learning_rate, num_steps, config.get("warmup_steps", 0))


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW on learning_rate_schedule, weight decay masked off norm scales and biases."""
    return optax.adamw(learning_rate_schedule(config, num_steps), weight_decay=config.weight_decay, mask=decay_mask)


def create_state(model: nn.Module, rng: jax.Array, image_size: int, tx: optax.GradientTransformation) -> BatchNormTrainState:
    variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, image_size, image_size, 3)), train=False))(rng)
    return BatchNormTrainState(loop.create_train_state(variables["params"], tx), variables["batch_stats"])


def make_kd_step(student: nn.Module, teacher: nn.Module, tx, temperature: float, image_size: int, cutmix_beta: float,
                 loss_normalization: str = "class"):
    """The pure step (state, teacher_variables, batch, rng) -> (state, metrics).

    batch = {'images': uint8 [B, H, W, 3], 'weights': float [B] (mean 1)}; loss_normalization: how the
    weights normalise the batch's loss (pqdjax.train.weighting.weighted_loss).
    """

    def step(state: BatchNormTrainState, teacher_variables: PyTree, batch: dict, rng: jax.Array):
        images = batch["images"].astype(jnp.float32) / 255.0
        images, weights = student_augment(rng, images, batch["weights"], image_size, cutmix_beta)
        images = normalize(images)
        teacher_logits = jax.lax.stop_gradient(teacher.apply(teacher_variables, images, train=False))

        def loss_fn(params):
            logits, updates = student.apply(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"],
            )
            loss = weighting.weighted_loss(losses.soft_label_kl(logits, teacher_logits, temperature), weights, loss_normalization)
            return loss, (updates["batch_stats"], logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.train.params)
        agreement = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))
        new_state = BatchNormTrainState(loop.apply_gradients(state.train, grads, tx), batch_stats)
        return new_state, {"loss": loss, "teacher_agreement": agreement}

    return step


def jit_data_parallel(step, mesh):
    """`step` jitted over `mesh`: state, teacher and key replicated, the batch sharded on 'data', state donated."""
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _compiled(student: nn.Module, teacher: nn.Module, settings: tuple, num_steps: int, mesh):
    """(optimizer, jitted state init, jitted data-parallel step), cached: students with equal settings compile once."""
    config = ml_collections.ConfigDict(dict(settings))
    tx = make_optimizer(config, num_steps)
    init_fn = jax.jit(lambda rng: create_state(student, rng, config.image_size, tx))
    step = make_kd_step(student, teacher, tx, config.temperature, config.image_size, config.cutmix_beta, config.loss_normalization)
    return tx, init_fn, jit_data_parallel(step, mesh)


def train_student(
    student: nn.Module,
    teacher: nn.Module,
    teacher_variables: PyTree,
    images: np.ndarray,
    weights: np.ndarray,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    mesh,
    checkpoint_dir: str | None = None,
    name: str = "student",
    metrics_dir: str | None = None,
    loss_normalization: str = "class",
) -> tuple[dict, dict]:
    """Trains a fresh student on (images uint8 [n, H, W, 3], weights [n]) by the protocol above.

    config fields: epochs, batch_size (global), learning_rate, weight_decay,
    warmup_steps, temperature, image_size, cutmix_beta, log_every, and for
    resuming checkpoint_every, keep_checkpoints. Every process passes the same
    (host) arrays and reads only its part of each batch. metrics_dir: where the
    training curve goes (pqdjax.train.metrics), or None. loss_normalization: how the
    weights normalise a batch's loss (pqdjax.train.weighting).
    Returns (variables {'params', 'batch_stats'}, {'resumed_from': step, 'steps': total, 'metrics': last}).
    """
    n = len(images)
    if len(weights) != n or not np.all(np.isfinite(weights)) or np.any(np.asarray(weights) < 0):
        raise InputError(f"{name}: weights must be {n} finite non-negative numbers, one per image.")
    devices = parallel.data_parallel_size(mesh)
    if n < devices:
        raise ConfigError(f"{name}: {n} images cannot fill one batch over the mesh's {devices} data-parallel devices.")
    batch_size = min(config.batch_size, n - n % devices)
    parallel.check_batch_size(mesh, batch_size)
    num_steps = config.epochs * (n // batch_size)
    settings = tuple((k, config.get(k)) for k in ("learning_rate", "warmup_steps", "weight_decay", "temperature", "image_size", "cutmix_beta"))
    settings += (("loss_normalization", loss_normalization),)
    tx, init_fn, step_fn = _compiled(student, teacher, settings, num_steps, mesh)
    init_rng, train_rng = jax.random.split(rng)
    state = parallel.replicate(mesh, init_fn(init_rng))
    rows = parallel.host_batch_slice(batch_size)
    host_weights = np.asarray(weights, np.float32)

    def make_batch(indices) -> dict:
        """This process's rows of the global batch, read from host memory and sharded over the mesh."""
        local = np.sort(np.asarray(indices))[rows]  # sorted as a whole: the global batch is the same for any process count
        return parallel.shard_host_batch(mesh, {"images": images[local], "weights": host_weights[local]})

    checkpoints = (ManagedCheckpoints(checkpoint_dir, config.checkpoint_every, config.get("keep_checkpoints", 2))
                   if checkpoint_dir else None)
    resumed_from = (checkpoints.latest_step() or 0) if checkpoints else 0
    state, metrics = loop.train(
        step_fn, state, parallel.replicate(mesh, teacher_variables), num_examples=n, num_steps=num_steps,
        batch_size=batch_size, rng=train_rng, name=name, log_every=config.log_every, checkpoints=checkpoints,
        metrics_dir=metrics_dir, learning_rate=learning_rate_schedule(config, num_steps), make_batch=make_batch,
    )
    variables = {"params": state.train.params, "batch_stats": state.batch_stats}
    return variables, {"resumed_from": resumed_from, "steps": num_steps, "metrics": metrics}
