"""Streamed stage evaluate: a fresh student per (method, IPC, seed) by the RDED/D4M protocol, validated sharded.

The student (config.evaluate.model, one output per class of the run; an ImageNet
teacher's logits are read at those classes, pqdjax.stages.streamed_teacher) trains on
the PNGs of a manifest with the teacher's soft labels at temperature 20 and
each image's weight rescaled to mean 1 per class (pqdjax.train.student:
data-parallel over the Mesh, the run's checkpoints under checkpoints/ so that a
killed run resumes), then is validated on config.data.test_split at resize
data.eval_resize / center crop data.eval_crop (pqdjax.train.imagenet_eval). One record per student:
evaluate/{method}_ipc{K}_seed{s}.json.
"""

from __future__ import annotations

import time

import numpy as np
from absl import logging

from pqdjax import artifacts
from pqdjax.data import streamed
from pqdjax.models.classifiers import make_classifier
from pqdjax.stages.evaluate import student_rng, train_students
from pqdjax.data.image_folder import load_images, read_manifest
from pqdjax.train.weighting import loss_normalization, student_weights
from pqdjax.train.imagenet_eval import sharded_accuracy
from pqdjax.train.student import TORCHVISION, train_student


def per_image_weights(labels: np.ndarray, weights: np.ndarray, num_classes: int, weighting=None) -> np.ndarray:
    """Manifest weights [n] (summing to 1 per class) -> the student's weights [n], mean 1 per class.

    weighting: config.evaluate.weighting (pqdjax.train.weighting.student_weights), or None.
    """
    order = np.argsort(labels, kind="stable")
    per_class = np.bincount(labels, minlength=num_classes)
    present = per_class[per_class > 0]
    if len(set(present.tolist())) != 1:
        raise artifacts.ArtifactError(f"the manifest has unequal numbers of images per class ({sorted(set(present.tolist()))}).")
    grid = student_weights(weights[order].reshape(len(present), present[0]), weighting)
    out = np.empty_like(weights)
    out[order] = grid.reshape(-1)
    return out


def evaluate_set(run, teacher, synthetic, seed: int, checkpoints, arch: str | None = None,
                 model=None) -> dict:
    """Trains one student on `synthetic`'s PNGs and validates it; returns its record.

    checkpoints: the student's mid-training checkpoints (pqdjax.pipeline.Run.checkpoints), or None.
    arch, model: the student (pqdjax.stages.evaluate.student_models; default: config.evaluate.model).
    """
    config = run.config
    start = time.perf_counter()
    files, labels, weights = read_manifest(synthetic.manifest)
    images = load_images(files)
    student = make_classifier(model or config.evaluate.model, config.data.num_classes)
    name = f"student {arch + ' ' if arch else ''}{synthetic.method} IPC {synthetic.ipc} seed {seed}"
    train = config.evaluate.train
    variables, info = train_student(
        student, teacher.model, teacher.variables, images, per_image_weights(labels, weights, config.data.num_classes, config.evaluate.get("weighting")),
        train, student_rng(run, synthetic.ipc, seed, arch), run.mesh,
        space=TORCHVISION, labels=labels, loss_normalization=loss_normalization(config.evaluate.get("weighting")),
        fast_conv=run.fast_conv, name=name, checkpoints=checkpoints, metrics_dir=run.metrics_dir,
    )
    data = config.data
    source = streamed.open_configured_split(data, data.test_split)
    num_examples = min(len(source), data.get("test_limit") or len(source))
    test_accuracy = sharded_accuracy(student, variables, source, num_examples, data, run.mesh, name=f"{name} accuracy")
    logging.info("%s: validation accuracy %.4f after %d steps", name, test_accuracy, info["steps"])
    return {
        **({"arch": arch} if arch else {}), "method": synthetic.method, "ipc": synthetic.ipc, "seed": seed, "test_accuracy": test_accuracy,
        "steps": info["steps"], "images": len(files), "seconds": round(time.perf_counter() - start, 2),
        "train_flops": info["flops"],
    }


def run(run, teacher, synthetic: dict) -> list[dict]:
    """The streamed pipeline's students (pqdjax.stages.evaluate.train_students with evaluate_set): validated on
    config.data.test_split, whose data fields are in each record's fingerprint."""
    eval_data = streamed.data_fields(run.config.data, streamed.TEST_DATA_FIELDS)
    return train_students(run, teacher, synthetic, evaluate_set, "imagenet_evaluate", (eval_data,))
