"""Stage teacher: a classifier trained on the run's training images; its soft labels train the students.

Loaded from shipped weights when config.teacher.weights names a file
(pqdjax.pretrained), else trained here. Its test accuracy is measured in
every run, also for shipped weights.
"""

from __future__ import annotations

import dataclasses
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel, pretrained
from pqdjax.models.classifiers import make_classifier
from pqdjax.train.classifier import accuracy, predict_logits, train_classifier

ARTIFACT = "teacher/params"


@dataclasses.dataclass(frozen=True)
class Teacher:
    """model and params of the teacher; test_accuracy is the "full data" line of the results."""

    model: nn.Module
    params: dict
    test_accuracy: float
    fingerprint: str

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The teacher's class of each uint8 image [N, H, W, C] (the data's own size): int [N]."""
        return np.argmax(predict_logits(self.model, {"params": self.params}, images), axis=1)


def run(run) -> Teacher:
    config = run.config.teacher
    dataset = run.dataset
    model = make_classifier(config.model, dataset.num_classes)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1,) + dataset.image_shape))["params"])
    if config.get("weights"):
        params, entry = pretrained.load_params(config.weights, target, config.model, run.config.data.name)
        fp = artifacts.fingerprint("teacher", run.data_fingerprint, entry["sha256"])  # the data: its test accuracy
        test_accuracy = accuracy(model, {"params": params}, dataset.test_images, dataset.test_labels)
        logging.info("teacher: shipped %s, test accuracy %.4f (manifest: %.4f)", config.weights, test_accuracy, entry["quality"]["test_accuracy"])
        return Teacher(model, params, test_accuracy, fp)
    fp = artifacts.fingerprint("teacher", run.data_fingerprint, config, run.config.seed)
    tested = lambda params: {"test_accuracy": accuracy(model, {"params": params}, dataset.test_images, dataset.test_labels)}
    params, info = train_here(run, model, target, lambda: (dataset.train_images, dataset.train_labels), fp, tested)
    logging.info("teacher: test accuracy %.4f", info["test_accuracy"])
    return Teacher(model, params, info["test_accuracy"], fp)


def train_here(run, model: nn.Module, target, read_data, fp: str, measure=None) -> tuple[dict, dict]:
    """The teacher's params trained in the run, or reused: (params, the info in their marker). Every pipeline's
    teacher trained here (config.teacher.train) goes through it.

    target: the params' shapes (jax.eval_shape of model.init's 'params'); read_data() -> (uint8 images [N, H, W, C],
    int labels [N]), called only to train; measure(params) -> a dict kept in the marker with the training time
    (e.g. the test accuracy). Training resumes from its mid-training checkpoints (checkpoints/teacher); in a run of
    several processes every process trains the same teacher (same data and key) and process 0 stores it.
    """
    config = run.config.teacher
    if parallel.complete_everywhere(run.store, ARTIFACT, fp):  # checked by all before process 0 may write it
        logging.info("teacher: reusing %s", run.store.path(ARTIFACT))
        return run.store.load_params(ARTIFACT, target), run.store.info(ARTIFACT)
    images, labels = read_data()
    start = time.perf_counter()
    checkpoints = run.checkpoints("teacher", fp, config.train)
    params = train_classifier(model, images, labels, config.train, run.rng("teacher"), run.fast_conv,
                              checkpoints=checkpoints, metrics_dir=run.metrics_dir)
    info = {"seconds": round(time.perf_counter() - start, 2), "images": len(labels), **(measure(params) if measure else {})}
    parallel.write_once(run.store, ARTIFACT, fp, lambda: run.store.save_params(ARTIFACT, params, fp, info))
    checkpoints.discard()
    return params, info
