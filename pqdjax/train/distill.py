"""Training a student on a weighted synthetic set with a teacher's soft labels.

Each step augments a batch of synthetic images, takes the teacher's softmax at
temperature T on the augmented images as the target, and minimises the KL
divergence of the student, each image's loss multiplied by its weight (D4M /
SRe2L / RDED protocol; DDOQ's weights are the Voronoi cell masses).

The protocol's options (config.evaluate.train):
    augment 'crop_flip'   pad-crop and flip (the DC/DM benchmarks' ConvNet protocol)
            'rrc_cutmix'  RandomResizedCrop + flip + CutMix (cutmix_beta; 0: none), the
                          teacher relabelling every augmented batch (SRe2L / RDED / D4M;
                          pqdjax.train.imagenet_augment, the ImageNet students' own)
    labels  'teacher'     the teacher's soft labels (knowledge distillation)
            'hard'        cross-entropy with each image's class (the DC/DSA protocol);
                          no teacher, and no CutMix (its labels would need mixing)

Crop-and-flip has finitely many views of an image (pqdjax.train.augment), so
when the set is small, the teacher's logits of every view of every image are
computed once before training and each step looks its batch's up: the same
targets as a teacher forward pass in every step, for a fraction of the cost
(300 steps of 100 images see 30,000 views; 100 images have 5,000).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from pqdjax.models.fast_conv import fast_conv_gradients
from pqdjax.train import augment, imagenet_augment, loop, losses, weighting
from pqdjax.errors import NonFiniteError


def teacher_logits_per_view(teacher: nn.Module, teacher_params, images: np.ndarray, crop_padding: int, flip: bool,
                            batch_size: int = 500) -> jax.Array:
    """The teacher's logits of every crop-and-flip view of every image: [n, num_views, classes].

    images: float [n, H, W, C] in [-1, 1]; view v of image i is
    augment.apply_views(images[i], augment.all_views(crop_padding, flip)[v]).
    """
    views = augment.all_views(crop_padding, flip)

    @jax.jit
    def logits_of_view(chunk, view):
        view = jnp.broadcast_to(view, (chunk.shape[0], 3))
        return teacher.apply({"params": teacher_params}, augment.apply_views(chunk, view, crop_padding))

    per_view = []
    for view in views:
        # a fixed chunk shape (the last chunk padded) so that the function compiles once
        chunks = [np.asarray(images[start:start + batch_size]) for start in range(0, len(images), batch_size)]
        size = len(chunks[0])
        outputs = []
        for chunk in chunks:
            padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:], chunk.dtype)])
            outputs.append(logits_of_view(padded, view)[: len(chunk)])
        per_view.append(jnp.concatenate(outputs))
    return jnp.stack(per_view, axis=1)


AUGMENTATIONS = ("crop_flip", "rrc_cutmix")
LABELS = ("teacher", "hard")


def make_student_step(student: nn.Module, teacher: nn.Module, tx, temperature: float, crop_padding: int, flip: bool,
                      fast_conv: bool, per_view_table: bool = False, loss_normalization: str = "class",
                      augmentation: str = "crop_flip", cutmix_beta: float = 0.0, hard_labels: bool = False):
    """data = {'images': float [n,H,W,C] in [-1,1], 'weights': [n], and either 'teacher_params': pytree or,
    with per_view_table, 'teacher_logits': [n, num_views, classes] from teacher_logits_per_view, or,
    with hard_labels, 'labels': int [n]}.

    loss_normalization: how the weights normalise a batch's loss (pqdjax.train.weighting.weighted_loss);
    augmentation, cutmix_beta, hard_labels: the protocol of the module docstring.
    """
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}.")
    if per_view_table and (augmentation != "crop_flip" or hard_labels):
        raise ValueError("a per-view teacher table needs the crop_flip augmentation and the teacher's labels.")
    if hard_labels and augmentation == "rrc_cutmix" and cutmix_beta > 0:
        raise ValueError("hard labels cannot follow CutMix's pasted boxes: set cutmix_beta=0 or use the teacher's labels.")

    def loss_fn(params, images, targets, weights):
        with fast_conv_gradients(fast_conv):
            logits = student.apply({"params": params}, images)
        per_example = losses.cross_entropy(logits, targets) if hard_labels else losses.soft_label_kl(logits, targets, temperature)
        return weighting.weighted_loss(per_example, weights, loss_normalization)

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, data, indices, rng):
        weights = data["weights"][indices]
        if augmentation == "crop_flip":
            views = augment.sample_views(rng, indices.shape[0], crop_padding, flip)
            images = augment.apply_views(data["images"][indices], views, crop_padding)
        else:
            batch = data["images"][indices]
            images, weights = imagenet_augment.student_augment(rng, batch, weights, batch.shape[1], cutmix_beta)
        if hard_labels:
            targets = data["labels"][indices]
        elif per_view_table:
            targets = data["teacher_logits"][indices, augment.view_index(views, crop_padding, flip)]
        else:
            targets = jax.lax.stop_gradient(teacher.apply({"params": data["teacher_params"]}, images))
        loss, grads = jax.value_and_grad(loss_fn)(state.params, images, targets, weights)
        return loop.apply_gradients(state, grads, tx), {"loss": loss}

    return step


def train_student(
    student: nn.Module,
    teacher: nn.Module,
    teacher_params,
    images: np.ndarray,
    weights: np.ndarray,
    config: ml_collections.ConfigDict,
    rng: jax.Array,
    fast_conv: bool,
    name: str = "student",
    checkpoints=None,
    metrics_dir: str | None = None,
    per_view_table: bool | None = None,
    loss_normalization: str = "class",
    labels: np.ndarray | None = None,
):
    """Trains a fresh `student` on (images float [n,H,W,C] in [-1, 1], weights [n]); returns its params.

    config fields: steps, batch_size, learning_rate, warmup_steps, weight_decay,
    temperature, crop_padding, flip, log_every, and optionally augment,
    cutmix_beta, labels (the module docstring) and epochs (> 0: the length in
    passes over the set, replacing steps; pqdjax.train.loop.training_steps). checkpoints: a
    pqdjax.train.checkpoint.Checkpoints to resume from and save to, or None;
    metrics_dir: where the training curve goes (pqdjax.train.metrics), or None.
    per_view_table: look the teacher's logits up in teacher_logits_per_view
    (True) or run the teacher in every step (False); None: the table when it
    has fewer views than training sees (n * num_views <= steps * batch_size).
    loss_normalization: how the weights normalise a batch's loss (pqdjax.train.weighting).
    labels: int [n], each image's class; needed by config.labels 'hard'.
    """
    augmentation, hard_labels = config.get("augment", "crop_flip"), config.get("labels", "teacher") == "hard"
    if hard_labels and labels is None:
        raise ValueError(f"{name}: config.labels 'hard' trains on each image's class: pass labels.")
    if not np.all(np.isfinite(images)):
        raise NonFiniteError(f"{name}: the synthetic images contain NaN or inf.")
    init_rng, train_rng = jax.random.split(rng)
    params = student.init(init_rng, jnp.zeros((1,) + images.shape[1:], jnp.float32))["params"]
    num_steps = loop.training_steps(config, len(images))
    schedule = loop.cosine_schedule(config.learning_rate, num_steps, config.warmup_steps)
    tx = optax.adamw(schedule, weight_decay=config.weight_decay)
    if per_view_table is None:
        per_view_table = (augmentation == "crop_flip" and not hard_labels and
                          len(images) * augment.num_views(config.crop_padding, config.flip) <= num_steps * config.batch_size)
    step = make_student_step(student, teacher, tx, config.temperature, config.crop_padding, config.flip, fast_conv,
                             per_view_table, loss_normalization, augmentation, config.get("cutmix_beta", 0.0), hard_labels)
    data = {"images": jnp.asarray(images, jnp.float32), "weights": jnp.asarray(weights, jnp.float32)}
    if hard_labels:
        data["labels"] = jnp.asarray(labels, jnp.int32)
    elif per_view_table:
        data["teacher_logits"] = teacher_logits_per_view(teacher, teacher_params, images, config.crop_padding, config.flip)
    else:
        data["teacher_params"] = teacher_params
    state, _ = loop.train(
        step, loop.create_train_state(params, tx), data, num_examples=len(images),
        num_steps=num_steps, batch_size=config.batch_size, rng=train_rng, name=name,
        log_every=config.log_every, checkpoints=checkpoints,
        metrics_dir=metrics_dir, learning_rate=schedule,
    )
    return state.params
