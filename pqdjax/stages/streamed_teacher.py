"""Streamed stage teacher: torchvision ResNet weights converted to flax variables (or a classifier trained here),
and its validation accuracy.

config.teacher.kind 'torchvision' (default): the teacher's variables are {'params', 'batch_stats'} (BatchNorm running
statistics), converted from config.teacher.checkpoint (a torchvision state
dict as .safetensors or .pth, read without executing pickled code) each run:
converting takes seconds. Its top-1 accuracy on the validation split
(resize 256, center crop 224, sharded) is cached in teacher/accuracy.json,
fingerprinted by the checkpoint's content.

With config.prior.tiny_random and no checkpoint, random weights of
config.teacher.model are written as a torchvision state dict into the
workdir (teacher/tiny_resnet.safetensors) and converted like real ones.
Its ImageNet-1K logits are read at the run's classes (ClassSubset), which
must be ImageNet synsets (pqdjax.data.streamed.Classes).

config.teacher.kind 'trained' (a dataset no ImageNet checkpoint fits, CIFAR-10):
config.teacher.model is trained here on the training split at
eval_resize/eval_crop (pqdjax.train.classifier, as the default pipeline's
teacher; the split read into host memory by every process), stored in
teacher/params, and called through FromNormalizedInput like a torchvision one.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.batching import map_batches
from pqdjax.data import imagenet, streamed
from pqdjax.errors import ConfigError
from pqdjax.models.classifiers import ClassSubset, FromNormalizedInput, make_classifier
from pqdjax.models.convert_torchvision import load_torchvision_resnet
from pqdjax.models.tiny_checkpoints import write_tiny_torchvision_resnet
from pqdjax.stages.teacher import ARTIFACT as TRAINED_ARTIFACT, train_here
from pqdjax.train.imagenet_eval import sharded_accuracy

TINY_ARTIFACT = "teacher/tiny_resnet.safetensors"
ACCURACY_ARTIFACT = "teacher/accuracy.json"
KINDS = ("torchvision", "trained")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """model, its variables {'params', 'batch_stats'}, validation accuracy (the "full data" line), fingerprint."""

    model: nn.Module
    variables: dict
    test_accuracy: float
    fingerprint: str

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The teacher's class of each uint8 image [N, S, S, 3] (decode.image_size; validation preprocessing:
        torchvision normalisation), among the run's classes: int [N]."""
        return map_batches(lambda batch: _predictions(self.model, self.variables, batch), images, PREDICT_BATCH)


PREDICT_BATCH = 32  # images per call of Teacher.predict (at 224 px and more)


@functools.partial(jax.jit, static_argnums=0)
def _predictions(model, variables, images: jax.Array) -> jax.Array:
    """uint8 [B, S, S, 3] -> the class with the largest logit [B]."""
    return jnp.argmax(model.apply(variables, imagenet.normalize(images.astype(jnp.float32) / 255.0), train=False), axis=-1)


def checkpoint_path(run, model: nn.Module) -> str:
    """config.teacher.checkpoint, or the tiny random checkpoint written into the workdir."""
    if run.config.teacher.checkpoint:
        return run.config.teacher.checkpoint
    fp = artifacts.fingerprint("imagenet_tiny_teacher", run.config.teacher.model, run.config.seed)
    write = lambda path: write_tiny_torchvision_resnet(path, model, seed=run.config.seed)
    parallel.write_once(run.store, TINY_ARTIFACT, fp, lambda: run.store.write_artifact(TINY_ARTIFACT, write, fp))
    return run.store.path(TINY_ARTIFACT)


def teacher_classes(classes: streamed.Classes, dataset: str):
    """int [C]: the ImageNet-1K logit of each of the run's classes; a ConfigError where they are not ImageNet classes."""
    if classes.imagenet_indices is None:
        raise ConfigError(
            f"the teacher is an ImageNet-1K checkpoint, but the classes of {dataset} ({', '.join(classes.names[:3])}, ...) "
            "are not ImageNet synsets (n01440764, ...); name the class folders by their synsets, or distil this dataset "
            "with a teacher trained on it (configs/imagefolder.py)."
        )
    return classes.imagenet_indices


def trained(run) -> tuple[nn.Module, dict, str, str]:
    """(model, variables, fingerprint, description) of a classifier trained here on the training split (kind 'trained')."""
    config, data = run.config.teacher, run.config.data
    classifier = make_classifier(config.model, data.num_classes)
    model = FromNormalizedInput(classifier, imagenet.MEAN, imagenet.STD)
    fp = artifacts.fingerprint("streamed_teacher", config.model, config.train, run.config.seed,
                               streamed.data_fields(data, streamed.TRAIN_DATA_FIELDS), data.eval_resize, data.eval_crop)
    size = (1, data.eval_crop, data.eval_crop, 3)
    target = jax.eval_shape(lambda: classifier.init(jax.random.key(0), jnp.zeros(size))["params"])
    # the split read into host memory by every process, only when the teacher trains
    read = lambda: streamed.read_split(data, data.train_split, data.eval_resize, data.eval_crop)
    params, info = train_here(run, classifier, target, read, fp)
    return model, {"params": params}, fp, f"{run.store.path(TRAINED_ARTIFACT)} (trained here on {info.get('images', 'the training')} images)"


def converted(run) -> tuple[nn.Module, dict, str, str]:
    """(model, variables, fingerprint, checkpoint path) of torchvision ImageNet-1K weights read at the run's classes."""
    config = run.config.teacher
    model = make_classifier(config.model, imagenet.NUM_CLASSES)
    path = checkpoint_path(run, model)
    variables = load_torchvision_resnet(path, model)
    classes = teacher_classes(run.classes, run.config.data.name)
    model = ClassSubset(model, tuple(int(i) for i in classes))  # the run's classes' logits, in label order
    return model, variables, artifacts.fingerprint("imagenet_teacher", config.model, artifacts.file_digest(path), classes.tolist()), path


def run(run) -> Teacher:
    config = run.config.teacher
    kind = config.get("kind", "torchvision")
    model, variables, fp, path = trained(run) if kind == "trained" else converted(run)
    data = run.config.data
    eval_fp = artifacts.fingerprint(
        "imagenet_teacher_accuracy", fp, streamed.data_fields(data, streamed.TEST_DATA_FIELDS),
    )
    if parallel.complete_everywhere(run.store, ACCURACY_ARTIFACT, eval_fp):
        test_accuracy = run.store.load_record(ACCURACY_ARTIFACT)["test_accuracy"]
    else:
        source = streamed.open_configured_split(data, data.test_split)
        num_examples = min(len(source), data.get("test_limit") or len(source))
        test_accuracy = sharded_accuracy(model, variables, source, num_examples, data, run.mesh, name="teacher accuracy")
        record = {"test_accuracy": test_accuracy, "checkpoint": path}
        parallel.write_once(run.store, ACCURACY_ARTIFACT, eval_fp, lambda: run.store.save_record(ACCURACY_ARTIFACT, record, eval_fp))
    logging.info("teacher: %s from %s, validation accuracy %.4f", config.model.arch, path, test_accuracy)
    return Teacher(model, variables, test_accuracy, fp)
