"""ImageNet stage teacher: torchvision ResNet weights converted to flax variables, and their validation accuracy.

The teacher's variables are {'params', 'batch_stats'} (BatchNorm running
statistics), converted from config.teacher.checkpoint (a torchvision state
dict as .safetensors or .pth, read without executing pickled code) each run:
converting takes seconds. Its top-1 accuracy on the validation split
(resize 256, center crop 224, sharded) is cached in teacher/accuracy.json,
fingerprinted by the checkpoint's content.

With config.prior.tiny_random and no checkpoint, random weights of
config.teacher.model are written as a torchvision state dict into the
workdir (teacher/tiny_resnet.safetensors) and converted like real ones.
"""

from __future__ import annotations

import dataclasses
import hashlib

import flax.linen as nn
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.data import imagenet, streamed
from pqdjax.errors import ConfigError
from pqdjax.models.classifiers import ClassSubset, make_classifier
from pqdjax.models.convert_torchvision import load_torchvision_resnet
from pqdjax.models.tiny_checkpoints import write_tiny_torchvision_resnet
from pqdjax.train.imagenet_eval import sharded_accuracy

TINY_ARTIFACT = "teacher/tiny_resnet.safetensors"
ACCURACY_ARTIFACT = "teacher/accuracy.json"


@dataclasses.dataclass(frozen=True)
class Teacher:
    """model, its variables {'params', 'batch_stats'}, validation accuracy (the "full data" line), fingerprint."""

    model: nn.Module
    variables: dict
    test_accuracy: float
    fingerprint: str


def file_digest(path: str) -> str:
    """sha256 of a file's content (a checkpoint's identity in fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


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


def run(run) -> Teacher:
    config = run.config.teacher
    model = make_classifier(config.model, imagenet.NUM_CLASSES)
    path = checkpoint_path(run, model)
    variables = load_torchvision_resnet(path, model)
    classes = teacher_classes(run.classes, run.config.data.name)
    model = ClassSubset(model, tuple(int(i) for i in classes))  # the run's classes' logits, in label order
    fp = artifacts.fingerprint("imagenet_teacher", config.model, file_digest(path), classes.tolist())
    data = run.config.data
    eval_fp = artifacts.fingerprint(
        "imagenet_teacher_accuracy", fp, streamed.data_fields(data, streamed.TEST_DATA_FIELDS),
    )
    if run.store.is_complete(ACCURACY_ARTIFACT, eval_fp):
        test_accuracy = run.store.load_record(ACCURACY_ARTIFACT)["test_accuracy"]
    else:
        source = streamed.open_configured_split(data, data.test_split)
        num_examples = min(len(source), data.get("test_limit") or len(source))
        test_accuracy = sharded_accuracy(model, variables, source, num_examples, data, run.mesh, name="teacher accuracy")
        record = {"test_accuracy": test_accuracy, "checkpoint": path}
        parallel.write_once(run.store, ACCURACY_ARTIFACT, eval_fp, lambda: run.store.save_record(ACCURACY_ARTIFACT, record, eval_fp))
    logging.info("teacher: %s from %s, validation accuracy %.4f", config.model.arch, path, test_accuracy)
    return Teacher(model, variables, test_accuracy, fp)
