"""The one student trainer: a fresh classifier trained on a weighted synthetic set, data-parallel and resumable.

Every evaluation in pqdjax (Fashion-MNIST in memory, streamed ImageNet-1K,
ImageNette, CIFAR-10, a folder of images) trains its students here. Each step
augments a batch of synthetic images, takes a target for every augmented image
and minimises the student's loss, each image's loss multiplied by its weight
(DDOQ: its Voronoi cell mass, rescaled to mean 1 per class;
pqdjax.train.weighting).

The protocol (config fields):
    augment 'crop_flip'   pad-crop by crop_padding and flip (the DC/DM benchmarks' ConvNet protocol)
            'rrc_cutmix'  RandomResizedCrop to image_size (default: the images' own) + flip + CutMix
                          of cutmix_beta (0: none), the teacher relabelling every augmented batch
                          (SRe2L / RDED / D4M; pqdjax.train.imagenet_augment)
    labels  'teacher'     the teacher's softmax at `temperature` (knowledge distillation, KL loss)
            'hard'        cross-entropy with each image's class (the DC/DSA protocol); no teacher,
                          and no CutMix (its labels would need mixing)
    length  epochs (> 0) passes over the set, else `steps` (pqdjax.train.loop.training_steps)
    optimizer AdamW (learning_rate, weight_decay, not on norm scales and biases), cosine
            schedule after warmup_steps of linear warmup

Models with BatchNorm (ResNet, MobileNet-V2) keep its statistics in the state
and normalise by those of the global batch; others (ConvNet) have none. Every
classifier is called as model.apply(variables, x, train=...).

Where the images live: on the host. Each process reads its rows of every
global batch from host memory and the step runs jitted over the run's Mesh,
the batch sharded on 'data' and parameters, optimizer state and BatchNorm
statistics replicated (pqdjax.parallel): the step equals the single-device
step up to float summation order. The global batch is the largest multiple
of the data-parallel devices within batch_size and the set; a set smaller than
the mesh (a single process) trains on one device.

Crop-and-flip has finitely many views of an image (pqdjax.train.augment), so
when the set is small, the teacher's logits of every view of every image are
computed once before training and each step looks its batch's up: the same
targets as a teacher pass in every step for a fraction of the cost (300 steps
of 100 images see 30,000 views; 100 images have 5,000).

Training runs in pqdjax.train.loop (batches, progress, training curves, NaN
checks, checkpoints): batches and augmentation keys are pure functions of
(rng, step), so a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import struct

from pqdjax import parallel
from pqdjax.cost import compiled_flops
from pqdjax.data.imagenet import normalize as torchvision_normalize
from pqdjax.data.preprocess import to_model_range
from pqdjax.errors import ConfigError, InputError, NonFiniteError
from pqdjax.models.fast_conv import fast_conv_gradients
from pqdjax.train import augment, imagenet_augment, loop, losses, weighting

PyTree = Any

AUGMENTATIONS = ("crop_flip", "rrc_cutmix")
LABELS = ("teacher", "hard")


def _identity(images: jax.Array) -> jax.Array:
    return images


def _unit_range(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class InputSpace:
    """How stored images become the networks' input.

    to_float: the stored batch -> float images, the range the augmentations work in;
    normalize: augmented images -> what the student and teacher take;
    black: a black pixel after to_float (pad-crop's fill).
    """

    to_float: Callable[[jax.Array], jax.Array]
    normalize: Callable[[jax.Array], jax.Array]
    black: float


# Float images in [-1, 1], the networks' own range.
MODEL_RANGE = InputSpace(to_float=_identity, normalize=_identity, black=-1.0)
# uint8 images, fed to the networks in [-1, 1] (the in-memory pipeline's models; pqdjax.data.preprocess.to_model_range).
MODEL_RANGE_UINT8 = InputSpace(to_float=to_model_range, normalize=_identity, black=-1.0)
# uint8 images, fed to the networks torchvision-normalised (the streamed pipeline's models).
TORCHVISION = InputSpace(to_float=_unit_range, normalize=torchvision_normalize, black=0.0)


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The static settings of a student step (see the module docstring); hashable, so equal protocols compile once."""

    temperature: float = 4.0
    augment: str = "crop_flip"
    crop_padding: int = 0
    flip: bool = True
    image_size: int = 0  # rrc_cutmix's output size (0: the images' own)
    cutmix_beta: float = 0.0
    hard_labels: bool = False
    per_view_table: bool = False  # the teacher's targets looked up in teacher_logits_per_view
    loss_normalization: str = "class"  # pqdjax.train.weighting.weighted_loss
    fast_conv: bool = False  # pqdjax.models.fast_conv

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment must be one of {AUGMENTATIONS}, got {self.augment!r}.")
        if self.per_view_table and (self.augment != "crop_flip" or self.hard_labels):
            raise ConfigError("a per-view teacher table needs the crop_flip augmentation and the teacher's labels.")
        if self.hard_labels and self.augment == "rrc_cutmix" and self.cutmix_beta > 0:
            raise ConfigError("hard labels cannot follow CutMix's pasted boxes: set cutmix_beta=0 or use the teacher's labels.")


@struct.dataclass
class StudentState:
    """A loop.TrainState (step, params, opt_state) and the model's BatchNorm statistics (None without BatchNorm)."""

    train: loop.TrainState
    batch_stats: PyTree = None

    @property
    def step(self) -> jax.Array:
        return self.train.step

    @property
    def variables(self) -> dict:
        """The model's variables, as model.apply takes them."""
        if self.batch_stats is None:
            return {"params": self.train.params}
        return {"params": self.train.params, "batch_stats": self.batch_stats}


def decay_mask(params: PyTree) -> PyTree:
    """True for the leaves weight decay applies to: conv and dense kernels, not norm scales or biases (1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW on a cosine schedule after config.warmup_steps, weight decay masked off norm scales and biases."""
    schedule = loop.cosine_schedule(config.learning_rate, num_steps, config.get("warmup_steps", 0))
    return optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask), schedule


def create_state(model: nn.Module, rng: jax.Array, input_shape: tuple[int, ...], tx) -> StudentState:
    """A fresh student's state; input_shape: one augmented image's [H, W, C]."""
    variables = model.init(rng, jnp.zeros((1,) + tuple(input_shape), jnp.float32), train=False)
    return StudentState(loop.create_train_state(variables["params"], tx), variables.get("batch_stats"))


def teacher_logits_per_view(teacher: nn.Module, teacher_variables, images: np.ndarray, crop_padding: int, flip: bool,
                            space: InputSpace = MODEL_RANGE, batch_size: int = 500, with_flops: bool = False):
    """The teacher's logits of every crop-and-flip view of every image: [n, num_views, classes] (host).

    images: [n, H, W, C] as stored (`space`); view v of image i is
    augment.apply_views(images[i], augment.all_views(crop_padding, flip)[v]).
    with_flops: also return the floating-point operations it took (pqdjax.cost; None where not counted).
    """

    @jax.jit
    def logits_of_view(chunk, view):
        view = jnp.broadcast_to(view, (chunk.shape[0], 3))
        viewed = augment.apply_views(space.to_float(chunk), view, crop_padding, space.black)
        return teacher.apply(teacher_variables, space.normalize(viewed), train=False)

    per_view = []
    for view in augment.all_views(crop_padding, flip):
        # a fixed chunk shape (the last chunk padded) so that the function compiles once
        outputs = []
        for start in range(0, len(images), batch_size):
            chunk = np.asarray(images[start:start + batch_size])
            size = min(batch_size, len(images))
            padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            outputs.append(np.asarray(logits_of_view(padded, view))[: len(chunk)])
        per_view.append(np.concatenate(outputs))
    table = np.stack(per_view, axis=1)
    if not with_flops:
        return table
    per_call = compiled_flops(logits_of_view, padded, view)
    calls = len(augment.all_views(crop_padding, flip)) * -(-len(images) // batch_size)
    return table, None if per_call is None else per_call * calls


def make_step(student: nn.Module, teacher: nn.Module | None, tx, protocol: Protocol, space: InputSpace = MODEL_RANGE):
    """The pure step (state, teacher_variables, batch, rng) -> (state, metrics).

    batch = {'images': [B, H, W, C] as stored (`space`), 'weights': float [B], and 'labels': int [B] with
    hard labels, or 'teacher_logits': [B, num_views, classes] with the per-view table}.
    metrics: 'loss', and with the teacher's labels 'teacher_agreement' (the student's top-1 equals the teacher's).
    """
    p = protocol

    def forward(params, batch_stats, images):
        with fast_conv_gradients(p.fast_conv):
            if batch_stats is None:
                return student.apply({"params": params}, images, train=True), None
            logits, updates = student.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                            mutable=["batch_stats"])
            return logits, updates["batch_stats"]

    def step(state: StudentState, teacher_variables: PyTree, batch: dict, rng: jax.Array):
        images, weights = space.to_float(batch["images"]), batch["weights"]
        if p.augment == "crop_flip":
            views = augment.sample_views(rng, images.shape[0], p.crop_padding, p.flip)
            images = augment.apply_views(images, views, p.crop_padding, space.black)
        else:
            images, weights = imagenet_augment.student_augment(rng, images, weights, p.image_size or images.shape[1], p.cutmix_beta)
        images = space.normalize(images)
        if p.hard_labels:
            targets = batch["labels"]
        elif p.per_view_table:
            targets = batch["teacher_logits"][jnp.arange(images.shape[0]), augment.view_index(views, p.crop_padding, p.flip)]
        else:
            targets = jax.lax.stop_gradient(teacher.apply(teacher_variables, images, train=False))

        def loss_fn(params):
            logits, batch_stats = forward(params, state.batch_stats, images)
            per_example = losses.cross_entropy(logits, targets) if p.hard_labels else losses.soft_label_kl(logits, targets, p.temperature)
            return weighting.weighted_loss(per_example, weights, p.loss_normalization), (batch_stats, logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.train.params)
        metrics = {"loss": loss}
        if not p.hard_labels:
            metrics["teacher_agreement"] = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1))
        return StudentState(loop.apply_gradients(state.train, grads, tx), batch_stats), metrics

    return step


def jit_data_parallel(step, mesh):
    """`step` jitted over `mesh`: state, teacher and key replicated, the batch sharded on 'data', state donated."""
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep), donate_argnums=0)


@functools.lru_cache(maxsize=8)
def _compiled(student: nn.Module, teacher: nn.Module | None, optimizer: tuple, num_steps: int, protocol: Protocol,
              space: InputSpace, input_shape: tuple, mesh):
    """(optimizer, schedule, jitted state init, jitted data-parallel step), cached: equal students compile once."""
    tx, schedule = make_optimizer(ml_collections.ConfigDict(dict(optimizer)), num_steps)
    init_fn = jax.jit(lambda rng: create_state(student, rng, input_shape, tx))
    return tx, schedule, init_fn, jit_data_parallel(make_step(student, teacher, tx, protocol, space), mesh)


def protocol_from_config(config: ml_collections.ConfigDict, **settings) -> Protocol:
    """The Protocol of a config.evaluate.train (module docstring); `settings` fill or override fields."""
    fields = dict(
        temperature=config.get("temperature", 4.0), augment=config.get("augment", "crop_flip"),
        crop_padding=config.get("crop_padding", 0), flip=config.get("flip", True), image_size=config.get("image_size", 0),
        cutmix_beta=config.get("cutmix_beta", 0.0), hard_labels=config.get("labels", "teacher") == "hard",
    )
    return Protocol(**{**fields, **settings})


def train_student(
    student: nn.Module,
    teacher: nn.Module | None,
    teacher_variables: PyTree,
    images: np.ndarray,
    weights: np.ndarray,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    mesh,
    *,
    space: InputSpace = MODEL_RANGE,
    labels: np.ndarray | None = None,
    loss_normalization: str = "class",
    per_view_table: bool | None = None,
    fast_conv: bool = False,
    name: str = "student",
    checkpoints=None,
    metrics_dir: str | None = None,
) -> tuple[dict, dict]:
    """Trains a fresh student on (images [n, H, W, C] as stored in `space`, weights [n]) by the protocol above.

    config: the protocol's fields (module docstring) and batch_size (global), log_every.
    teacher_variables: the teacher's {'params', ...}; unused (None) with hard labels.
    labels: int [n], each image's class; needed by config.labels 'hard'.
    loss_normalization: how the weights normalise a batch's loss (pqdjax.train.weighting).
    per_view_table: look the teacher's logits up in teacher_logits_per_view (True) or run
    the teacher in every step (False); None: the table when it has fewer views than
    training sees. Every process passes the same host arrays and reads only its part of
    each batch. checkpoints: a pqdjax.train.checkpoint.CheckpointSaver, or None;
    metrics_dir: where the training curve goes (pqdjax.train.metrics), or None.
    Returns (variables {'params'[, 'batch_stats']}, {'resumed_from': step, 'steps': total, 'metrics': last,
    'flops': the training's floating-point operations as XLA counts them (pqdjax.cost), or None}).
    """
    n = len(images)
    weights = np.asarray(weights, np.float32)
    if weights.shape != (n,):
        raise InputError(f"{name}: weights must be {n} numbers, one per image, got shape {weights.shape}.")
    bad = np.flatnonzero(~np.isfinite(weights) | (weights < 0))
    if len(bad):
        raise InputError(f"{name}: weights must be finite and non-negative, got weights[{bad[0]}] = {weights[bad[0]]} "
                         f"({len(bad)} such).")
    if np.issubdtype(np.asarray(images[:1]).dtype, np.floating) and not np.all(np.isfinite(images)):
        raise NonFiniteError(f"{name}: the synthetic images contain NaN or inf.")
    protocol = protocol_from_config(config, loss_normalization=loss_normalization, fast_conv=fast_conv)
    if protocol.hard_labels and labels is None:
        raise ConfigError(f"{name}: config.labels 'hard' trains on each image's class: pass labels.")
    run_mesh, devices = mesh, parallel.data_parallel_size(mesh)
    if n < devices and jax.process_count() == 1:  # a set smaller than the mesh: one device trains it
        logging.info("%s: %d images, fewer than the %d data-parallel devices: training on one device", name, n, devices)
        mesh, devices = parallel.make_mesh(devices=jax.local_devices()[:1]), 1
    if n < devices:
        raise ConfigError(f"{name}: {n} images cannot fill one batch over the mesh's {devices} data-parallel devices.")
    batch_size = min(config.batch_size, n)
    batch_size -= batch_size % devices  # equal shares of the global batch for the devices
    if batch_size != config.batch_size:
        logging.info("%s: global batch %d (batch_size %d, %d images, %d data-parallel devices)", name, batch_size,
                     config.batch_size, n, devices)
    num_steps = loop.training_steps(config, n, batch_size)
    if per_view_table is None:
        per_view_table = (protocol.augment == "crop_flip" and not protocol.hard_labels and
                          n * augment.num_views(protocol.crop_padding, protocol.flip) <= num_steps * batch_size)
    protocol = dataclasses.replace(protocol, per_view_table=per_view_table)
    if protocol.augment == "rrc_cutmix":  # square crops of image_size (default: the images' height)
        size = protocol.image_size or images.shape[1]
        input_shape = (size, size, images.shape[3])
    else:
        input_shape = tuple(images.shape[1:])
    optimizer = tuple((k, config.get(k, 0)) for k in ("learning_rate", "warmup_steps", "weight_decay"))
    tx, schedule, init_fn, step_fn = _compiled(student, None if protocol.hard_labels or per_view_table else teacher,
                                               optimizer, num_steps, protocol, space, input_shape, mesh)
    init_rng, train_rng = jax.random.split(rng)
    state = parallel.replicate(mesh, init_fn(init_rng))

    host = {"images": images, "weights": weights}
    if protocol.hard_labels:
        host["labels"] = np.asarray(labels, np.int32)
    table_flops = 0.0
    if not protocol.hard_labels and per_view_table:
        host["teacher_logits"], table_flops = teacher_logits_per_view(teacher, teacher_variables, images, protocol.crop_padding,
                                                                      protocol.flip, space, with_flops=True)
    rows = parallel.host_batch_slice(batch_size)

    def make_batch(indices) -> dict:
        """This process's rows of the global batch, read from host memory and sharded over the mesh."""
        local = np.asarray(indices)[rows]
        return parallel.shard_host_batch(mesh, {k: v[local] for k, v in host.items()})

    needs_teacher = not (protocol.hard_labels or per_view_table)
    teacher_on_mesh = parallel.replicate(mesh, teacher_variables if needs_teacher else {})
    resumed_from = (checkpoints.latest_step() or 0) if checkpoints else 0
    state, metrics = loop.train(
        step_fn, state, teacher_on_mesh, num_examples=n,
        num_steps=num_steps, batch_size=batch_size, rng=train_rng, name=name, log_every=config.log_every,
        checkpoints=checkpoints, metrics_dir=metrics_dir, learning_rate=schedule, make_batch=make_batch,
    )
    # The compute cost: XLA's count of the step (no loops in it: exact) over every step, and the view table.
    step_flops = compiled_flops(step_fn, state, teacher_on_mesh, make_batch(np.arange(batch_size)), train_rng, devices=devices)
    flops = None if step_flops is None or table_flops is None else step_flops * num_steps + table_flops
    variables = parallel.replicate(run_mesh, state.variables) if mesh is not run_mesh else state.variables
    return variables, {"resumed_from": resumed_from, "steps": num_steps, "metrics": metrics, "flops": flops}
