"""Stage teacher: the classifier whose soft labels train the students, and its accuracy on the run's test split.

One stage for every kind of run; where the teacher comes from (`source`):

    'trained'      config.teacher.model trained here on the training split (pqdjax.train.classifier,
                   config.teacher.train), stored in teacher/params; a killed run resumes from
                   checkpoints/teacher. In-memory runs train on the images in host memory; streamed
                   runs (config.teacher.kind 'trained': a dataset no ImageNet checkpoint fits, CIFAR-10)
                   read the split into host memory at eval_resize / eval_crop, every process alike,
                   and call the model through FromNormalizedInput like a torchvision one.
    'shipped'      weights shipped with pqdjax (config.teacher.weights, pqdjax.pretrained;
                   configs/default.py), checked against their manifest.
    'torchvision'  a torchvision ImageNet-1K ResNet (config.teacher.checkpoint, .safetensors or .pth
                   read without executing pickled code), converted each run (seconds), its logits read
                   at the run's classes (ClassSubset), which must be ImageNet synsets. With
                   config.prior.tiny_random and no checkpoint, random weights of config.teacher.model
                   are written as a torchvision state dict into the workdir
                   (teacher/tiny_resnet.safetensors) and converted like real ones.

Its top-1 accuracy on the run's test split (pqdjax.pipeline.Run.test_split; streamed runs: the
validation protocol, resize eval_resize, center crop eval_crop, sharded) is the "full data" line of
the results, kept in teacher/accuracy.json, fingerprinted by the teacher and the split.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel, pretrained
from pqdjax.batching import map_batches
from pqdjax.data import imagenet, streamed
from pqdjax.errors import ConfigError
from pqdjax.models.classifiers import ClassSubset, FromNormalizedInput, make_classifier
from pqdjax.models.convert_torchvision import load_torchvision_resnet
from pqdjax.models.tiny_checkpoints import write_tiny_torchvision_resnet
from pqdjax.train.classifier import train_classifier
from pqdjax.train.student import InputSpace

ARTIFACT = "teacher/params"
ACCURACY_ARTIFACT = "teacher/accuracy.json"
TINY_ARTIFACT = "teacher/tiny_resnet.safetensors"
KINDS = ("torchvision", "trained")  # config.teacher.kind of streamed runs
PREDICT_VALUES = 1 << 22  # input values per call of Teacher.predict: 5,349 images of 28 x 28, 27 of 224 x 224 x 3


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The teacher network, its variables {'params'[, 'batch_stats']}, its test accuracy, its fingerprint, and the
    InputSpace in which it takes uint8 images (the run's: Run.test_split.space)."""

    model: nn.Module
    variables: dict
    test_accuracy: float
    fingerprint: str
    space: InputSpace

    @property
    def params(self) -> dict:
        return self.variables["params"]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The teacher's class of each uint8 image [N, H, W, C], among the run's classes: int [N]."""
        batch = max(1, PREDICT_VALUES // int(np.prod(images.shape[1:])))
        return map_batches(lambda chunk: _predictions(self.model, self.space, self.variables, chunk), images, batch)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _predictions(model: nn.Module, space: InputSpace, variables, images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> the class with the largest logit [B]."""
    return jnp.argmax(model.apply(variables, space.normalize(space.to_float(images)), train=False), axis=-1)


def params_shape(model: nn.Module, input_shape: tuple) -> dict:
    """The shapes and dtypes of model's 'params' for inputs of input_shape (what weights are loaded into)."""
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape))["params"])


def source(run) -> str:
    """Where the run's teacher comes from (module docstring): config.teacher.kind where set (streamed runs:
    'torchvision' unless set), else 'shipped' where config.teacher.weights names a file, else 'trained'."""
    config = run.config.teacher
    if config.get("kind") or run.kind == "streamed":
        return config.get("kind") or "torchvision"
    return "shipped" if config.get("weights") else "trained"


def run(run) -> Teacher:
    kind = source(run)
    model, variables, fp, origin = {"trained": trained, "shipped": shipped, "torchvision": converted}[kind](run)
    test = run.test_split
    accuracy_fp = artifacts.fingerprint(test.fingerprint_prefix + "teacher_accuracy", fp, *test.fingerprint)
    if parallel.complete_everywhere(run.store, ACCURACY_ARTIFACT, accuracy_fp):
        test_accuracy = run.store.load_record(ACCURACY_ARTIFACT)["test_accuracy"]
    else:
        test_accuracy = test.accuracy(model, variables, name="teacher accuracy")
        record = {"test_accuracy": test_accuracy, "source": kind, "from": origin}
        parallel.write_once(run.store, ACCURACY_ARTIFACT, accuracy_fp,
                            lambda: run.store.save_record(ACCURACY_ARTIFACT, record, accuracy_fp))
    logging.info("teacher: %s %s from %s, test accuracy %.4f", kind, run.config.teacher.model.arch, origin, test_accuracy)
    return Teacher(model, variables, test_accuracy, fp, test.space)


def trained(run) -> tuple[nn.Module, dict, str, str]:
    """(model, variables, fingerprint, origin) of config.teacher.model trained here on the training split."""
    config, num_classes = run.config.teacher, run.test_split.num_classes
    classifier = make_classifier(config.model, num_classes)
    if run.kind == "streamed":
        data = run.config.data
        fp = artifacts.fingerprint("streamed_teacher", config.model, config.train, run.config.seed,
                                   streamed.data_fields(data, streamed.TRAIN_DATA_FIELDS), data.eval_resize, data.eval_crop)
        shape = (1, data.eval_crop, data.eval_crop, 3)
        # read into host memory by every process, only when the teacher trains
        read = lambda: streamed.read_split(data, data.train_split, data.eval_resize, data.eval_crop)
        model = FromNormalizedInput(classifier, imagenet.MEAN, imagenet.STD)  # takes what the streamed networks take
    else:
        dataset = run.dataset
        fp = artifacts.fingerprint("teacher", run.data_fingerprint, config, run.config.seed)
        shape = (1,) + dataset.image_shape
        read = lambda: (dataset.train_images, dataset.train_labels)
        model = classifier
    target = params_shape(classifier, shape)
    params, info = train_here(run, classifier, target, read, fp)
    return model, {"params": params}, fp, f"{run.store.path(ARTIFACT)} (trained here on {info.get('images', 'the training')} images)"


def shipped(run) -> tuple[nn.Module, dict, str, str]:
    """(model, variables, fingerprint, origin) of the weights config.teacher.weights names (pqdjax.pretrained)."""
    config, dataset = run.config.teacher, run.dataset
    model = make_classifier(config.model, dataset.num_classes)
    target = params_shape(model, (1,) + dataset.image_shape)
    params, entry = pretrained.load_params(config.weights, target, config.model, run.config.data.name)
    logging.info("teacher: shipped %s, test accuracy in its manifest %.4f", config.weights, entry["quality"]["test_accuracy"])
    # the data is in the fingerprint for the test accuracy's sake
    return model, {"params": params}, artifacts.fingerprint("teacher", run.data_fingerprint, entry["sha256"]), config.weights


def converted(run) -> tuple[nn.Module, dict, str, str]:
    """(model, variables, fingerprint, checkpoint path) of torchvision ImageNet-1K weights read at the run's classes."""
    config = run.config.teacher
    model = make_classifier(config.model, imagenet.NUM_CLASSES)
    path = checkpoint_path(run, model)
    variables = load_torchvision_resnet(path, model)
    classes = teacher_classes(run.classes, run.config.data.name)
    model = ClassSubset(model, tuple(int(i) for i in classes))  # the run's classes' logits, in label order
    return model, variables, artifacts.fingerprint("imagenet_teacher", config.model, artifacts.file_digest(path), classes.tolist()), path


def checkpoint_path(run, model: nn.Module) -> str:
    """config.teacher.checkpoint, or the tiny random checkpoint written into the workdir."""
    if run.config.teacher.checkpoint:
        return run.config.teacher.checkpoint
    fp = artifacts.fingerprint("imagenet_tiny_teacher", run.config.teacher.model, run.config.seed)
    write = lambda path: write_tiny_torchvision_resnet(path, model, seed=run.config.seed)
    parallel.write_once(run.store, TINY_ARTIFACT, fp, lambda: run.store.write_artifact(TINY_ARTIFACT, write, fp))
    return run.store.path(TINY_ARTIFACT)


def teacher_classes(classes: streamed.Classes, dataset: str) -> np.ndarray:
    """int [C]: the ImageNet-1K logit of each of the run's classes (pqdjax.data.streamed.Classes); a ConfigError where
    they are not ImageNet classes."""
    if classes.imagenet_indices is None:
        raise ConfigError(
            f"the teacher is an ImageNet-1K checkpoint, but the classes of {dataset} ({', '.join(classes.names[:3])}, ...) "
            "are not ImageNet synsets (n01440764, ...); name the class folders by their synsets, or distil this dataset "
            "with a teacher trained on it (configs/imagefolder.py)."
        )
    return classes.imagenet_indices


def train_here(run, model: nn.Module, target, read_data, fp: str) -> tuple[dict, dict]:
    """The teacher's params trained in the run, or reused: (params, the info in their marker).

    target: the params' shapes (jax.eval_shape of model.init's 'params'); read_data() -> (uint8 images [N, H, W, C],
    int labels [N]), called only to train. Training resumes from its mid-training checkpoints (checkpoints/teacher);
    in a run of several processes every process trains the same teacher (same data and key) and process 0 stores it.
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
    info = {"seconds": round(time.perf_counter() - start, 2), "images": len(labels)}
    parallel.write_once(run.store, ARTIFACT, fp, lambda: run.store.save_params(ARTIFACT, params, fp, info))
    checkpoints.discard()
    return params, info
