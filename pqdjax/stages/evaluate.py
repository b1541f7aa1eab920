"""Stage evaluate: a fresh student per (method, IPC, seed), trained on the synthetic set, tested on the test split.

One implementation for every kind of run. The student (config.evaluate.model, one output per class of the run)
trains on the set's images with the teacher's soft labels, each image's loss weighted by its weight rescaled to
mean 1 per class (pqdjax.train.student: data-parallel over the run's Mesh, mid-training checkpoints so that a
killed run resumes), then is tested on the run's test split (pqdjax.pipeline.Run.test_split: the test images in
host memory, or config.data.test_split streamed at eval_resize / eval_crop and sharded). It reaches the other
stages' outputs through the interfaces both kinds implement:

    synthetic.load()           images uint8 [C, K, H, W, ch], weights [C, K] (stages.decode)
    teacher.model, .variables  the teacher network and its {'params'[, 'batch_stats']}
    run.test_split             num_classes, student_inputs(images), fingerprint, accuracy()

One record per student: evaluate/{method}_ipc{K}_seed{s}.json ({arch}/ before it for another architecture).

With config.evaluate.full_data_epochs > 0 also the full-data student of each seed (`full_data`): the student's
architecture trained on every training image, uniform weights, by the very protocol (loss, teacher labels,
augmentation) for that many epochs: what the distillation loss reaches with all the data, the ceiling the
synthetic sets approach (the teacher's own accuracy is another architecture's).
"""

from __future__ import annotations

import functools
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.models.classifiers import make_classifier
from pqdjax.train.student import train_student
from pqdjax.train.weighting import loss_normalization, student_weights


# config.evaluate fields that do not change what a student learns: adding seeds, pairs to compare, a full-data
# student or other architectures redoes none
NOT_IN_FINGERPRINT = ("seeds", "compare", "full_data_epochs", "cross_architectures")


def student_models(config: ml_collections.ConfigDict) -> list[tuple[str | None, ml_collections.ConfigDict]]:
    """The students every synthetic set trains, [(arch, model config)]: (None, config.model), the run's own, then
    each (name, model) of config.cross_architectures (cross-architecture evaluation, reported a table each)."""
    cross = config.get("cross_architectures") or {}
    return [(None, config.model)] + [(name, cross[name]) for name in cross]


def student_settings(config: ml_collections.ConfigDict, model: ml_collections.ConfigDict) -> dict:
    """What determines a student of `model` besides its set and seed: config.evaluate without NOT_IN_FINGERPRINT."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_FINGERPRINT}
    return {**settings, "model": model.to_dict()}


def student_name(method: str, ipc: int, seed: int, arch: str | None) -> str:
    """{method}_ipc{K}_seed{s}, under {arch}/ for another architecture (config.evaluate.cross_architectures)."""
    return f"{arch + '/' if arch else ''}{method}_ipc{ipc}_seed{seed}"


def student_path(method: str, ipc: int, seed: int, arch: str | None) -> str:
    """The student's record and checkpoints in the workdir: evaluate/{student_name} (no suffix)."""
    return "evaluate/" + student_name(method, ipc, seed, arch)


def student_rng(run, ipc: int, seed: int, arch: str | None) -> jax.Array:
    """A student's key: (IPC, seed[, arch]), not the method, so methods over the same images train the same student."""
    return run.rng("evaluate", ipc, seed) if arch is None else run.rng("evaluate", ipc, seed, arch)


def evaluate_set(run, teacher, synthetic, seed: int, checkpoints=None, arch: str | None = None,
                 model: ml_collections.ConfigDict | None = None) -> dict:
    """Trains one student on `synthetic` with the teacher's soft labels and tests it on the run's test split
    (Run.test_split); returns its record.

    synthetic: a set with load() -> (images uint8 [C, K, H, W, ch], weights [C, K]) (stages.decode);
    teacher: .model and .variables; checkpoints: a pqdjax.train.checkpoint.Checkpoints for
    the student's training, or None; arch, model: the student (student_models; default: config.evaluate.model).
    """
    config = run.config.evaluate
    test = run.test_split
    start = time.perf_counter()
    images, weights = synthetic.load()
    num_classes, ipc = weights.shape
    weighting = config.get("weighting")  # transforms of the set's weights (pqdjax.train.weighting)
    student = make_classifier(model or config.model, test.num_classes)
    name = f"student {arch + ' ' if arch else ''}{synthetic.method} IPC {synthetic.ipc} seed {seed}"
    inputs, space = test.student_inputs(images.reshape((-1,) + images.shape[2:]))
    variables, info = train_student(
        student, teacher.model, teacher.variables, inputs, student_weights(weights, weighting).reshape(-1),
        config.train, student_rng(run, synthetic.ipc, seed, arch), run.mesh, space=space,
        labels=np.repeat(np.arange(num_classes), ipc),  # class-major, as load() gives them
        loss_normalization=loss_normalization(weighting), fast_conv=run.fast_conv, name=name,
        checkpoints=checkpoints, metrics_dir=run.metrics_dir,
    )
    test_accuracy = test.accuracy(student, variables, name=f"{name} accuracy")
    logging.info("%s: %s accuracy %.4f after %d steps", name, test.label.lower(), test_accuracy, info["steps"])
    return {
        **({"arch": arch} if arch else {}), "method": synthetic.method, "ipc": synthetic.ipc, "seed": seed,
        "test_accuracy": test_accuracy, "steps": info["steps"], "images": num_classes * ipc,
        "seconds": round(time.perf_counter() - start, 2), "train_flops": info["flops"],
    }


def run(run, teacher, synthetic: dict, set_for_seed=None) -> list[dict]:
    """A student per (architecture, method, IPC, seed) of `synthetic` ({(method, ipc): set}); their records.

    set_for_seed(method, ipc, seed): the set the student of `seed` trains on (pqdjax.stages.decode.set_for_seed: a
    random subset drawn anew per seed); None: synthetic[method, ipc] for every seed.

    A record is reused while its fingerprint holds (the teacher, the set, the student's settings, its seed and the
    test split); otherwise the student trains from its mid-training checkpoints under checkpoints/evaluate/ (a killed
    run resumes it), and process 0 writes the record. In a run of several processes every process trains every
    student together (data-parallel over the Mesh).
    """
    config = run.config.evaluate
    records = []
    for arch, model in student_models(config):
        settings = student_settings(config, model)
        for method, ipc in synthetic:
            for seed in config.seeds:
                synthetic_set = set_for_seed(method, ipc, seed) if set_for_seed else synthetic[method, ipc]
                fp = artifacts.fingerprint(run.test_split.fingerprint_prefix + "evaluate", teacher.fingerprint,
                                           synthetic_set.fingerprint, settings, *run.test_split.fingerprint, seed,
                                           *([arch] if arch else []))
                train = lambda checkpoints: evaluate_set(run, teacher, synthetic_set, seed, checkpoints, arch, model)
                records.append(reused_or_trained(run, student_path(method, ipc, seed, arch), fp, config.train, train))
    return records


def reused_or_trained(run, path: str, fp: str, train_config, train) -> dict:
    """The record {path}.json of one student: reused while its fingerprint fp holds, else train(checkpoints) -> record,
    the student resuming from its mid-training checkpoints under checkpoints/{path} (a changed config never resumes
    another's), the record written by process 0 and the checkpoints discarded."""
    name = path + ".json"
    if parallel.complete_everywhere(run.store, name, fp):
        return run.store.load_record(name)
    checkpoints = run.checkpoints(path, fp, train_config)
    record = train(checkpoints)
    parallel.write_once(run.store, name, fp, lambda: run.store.save_record(name, record, fp))
    checkpoints.discard()
    return record


def full_data(run, teacher) -> list[dict]:
    """The full-data student of every seed (see the module docstring); [] when config.evaluate.full_data_epochs is 0."""
    config = run.config.evaluate
    epochs = config.get("full_data_epochs", 0)
    if not epochs:
        return []
    dataset = run.dataset
    # what trains it: the model and the protocol, its length in epochs (not steps); not the sets' weighting
    settings = {"model": config.model.to_dict(), "train": {k: v for k, v in config.train.to_dict().items() if k != "steps"}}
    train = ml_collections.ConfigDict({**config.train.to_dict(), "epochs": epochs})
    test = run.test_split

    def train_one(seed: int, checkpoints) -> dict:
        start = time.perf_counter()
        student = make_classifier(config.model, dataset.num_classes)
        label = f"full-data student seed {seed}"
        inputs, space = test.student_inputs(dataset.train_images)
        variables, _ = train_student(
            student, teacher.model, teacher.variables, inputs, np.ones(len(inputs), np.float32), train,
            run.rng("evaluate_full_data", seed), run.mesh, space=space, labels=dataset.train_labels,
            loss_normalization="batch",  # uniform weights: the plain mean either way
            fast_conv=run.fast_conv, name=label, checkpoints=checkpoints, metrics_dir=run.metrics_dir,
        )
        test_accuracy = test.accuracy(student, variables, name=f"{label} accuracy")
        logging.info("%s: %s accuracy %.4f", label, test.label.lower(), test_accuracy)
        return {"seed": seed, "test_accuracy": test_accuracy, "epochs": epochs, "images": len(inputs),
                "seconds": round(time.perf_counter() - start, 2)}

    records = []
    for seed in config.seeds:
        fp = artifacts.fingerprint("evaluate_full_data", teacher.fingerprint, run.data_fingerprint, settings, epochs,
                                   run.config.seed, seed)
        records.append(reused_or_trained(run, f"evaluate/full_data_seed{seed}", fp, train,
                                         functools.partial(train_one, seed)))
    return records
