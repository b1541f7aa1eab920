"""Stage evaluate: a fresh student per (method, IPC, seed), trained on the synthetic set, tested on the test set.

With config.evaluate.full_data_epochs > 0 also the full-data student of each seed (`full_data`): the student's
architecture trained on every training image, uniform weights, by the very protocol (loss, teacher labels,
augmentation) for that many epochs: what the distillation loss reaches with all the data, the ceiling the
synthetic sets approach (the teacher's own accuracy is another architecture's).
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.data.preprocess import to_model_range
from pqdjax.models.classifiers import make_classifier
from pqdjax.train.classifier import accuracy
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
    """Trains one student on `synthetic` with the teacher's soft labels; returns its record.

    checkpoints: a pqdjax.train.checkpoint.Checkpoints for the student's training, or None;
    arch, model: the student (student_models; default: config.evaluate.model).
    """
    config = run.config.evaluate
    dataset = run.dataset
    start = time.perf_counter()
    images = np.asarray(to_model_range(synthetic.images.reshape((-1,) + synthetic.images.shape[2:])))
    weighting = config.get("weighting")  # transforms of the set's weights (pqdjax.train.weighting)
    weights = student_weights(synthetic.weights, weighting).reshape(-1)
    student = make_classifier(model or config.model, dataset.num_classes)
    name = f"student {arch + ' ' if arch else ''}{synthetic.method} IPC {synthetic.ipc} seed {seed}"
    variables, info = train_student(
        student, teacher.model, {"params": teacher.params}, images, weights, config.train,
        student_rng(run, synthetic.ipc, seed, arch), run.mesh,
        labels=np.repeat(np.arange(synthetic.images.shape[0]), synthetic.images.shape[1]),  # [C, K] sets, class-major
        loss_normalization=loss_normalization(weighting), fast_conv=run.fast_conv, name=name,
        checkpoints=checkpoints, metrics_dir=run.metrics_dir,
    )
    test_accuracy = accuracy(student, variables, dataset.test_images, dataset.test_labels)
    logging.info("%s: test accuracy %.4f", name, test_accuracy)
    return {
        **({"arch": arch} if arch else {}), "method": synthetic.method, "ipc": synthetic.ipc, "seed": seed,
        "test_accuracy": test_accuracy, "seconds": round(time.perf_counter() - start, 2), "train_flops": info["flops"],
    }


def train_students(run, teacher, synthetic: dict, evaluate_one, kind: str = "evaluate", inputs: tuple = (),
                   set_for_seed=None) -> list[dict]:
    """A student per (architecture, method, IPC, seed) of `synthetic` ({(method, ipc): set}); their records. Every
    pipeline's evaluate stage is this loop with its own `evaluate_one`.

    evaluate_one(run, teacher, set, seed, checkpoints, arch, model) -> record: trains and tests one student.
    kind, inputs: the fingerprint's name and what besides the teacher, the set, the student's settings and its seed
    decides a record (the streamed pipeline: its test split's data fields).
    set_for_seed(method, ipc, seed): the set the student of `seed` trains on (pqdjax.stages.decode.set_for_seed: a
    random subset drawn anew per seed); None: synthetic[method, ipc] for every seed.

    A record is reused while its fingerprint holds; otherwise the student trains from its mid-training checkpoints
    under checkpoints/evaluate/ (a killed run resumes it), and process 0 writes the record. In a run of several
    processes every process trains every student together (data-parallel over the Mesh).
    """
    config = run.config.evaluate
    records = []
    for arch, model in student_models(config):
        settings = student_settings(config, model)
        for method, ipc in synthetic:
            for seed in config.seeds:
                synthetic_set = set_for_seed(method, ipc, seed) if set_for_seed else synthetic[method, ipc]
                path = student_path(method, ipc, seed, arch)
                fp = artifacts.fingerprint(kind, teacher.fingerprint, synthetic_set.fingerprint, settings, *inputs, seed,
                                           *([arch] if arch else []))
                name = path + ".json"
                if parallel.complete_everywhere(run.store, name, fp):
                    records.append(run.store.load_record(name))
                    continue
                checkpoints = run.checkpoints(path, fp, config.train)  # a changed config never resumes another's
                record = evaluate_one(run, teacher, synthetic_set, seed, checkpoints, arch, model)
                parallel.write_once(run.store, name, fp, lambda: run.store.save_record(name, record, fp))
                checkpoints.discard()
                records.append(record)
    return records


def run(run, teacher, synthetic: dict, set_for_seed=None) -> list[dict]:
    """The in-memory pipeline's students (train_students with evaluate_set): tested on the dataset's test split."""
    return train_students(run, teacher, synthetic, evaluate_set, set_for_seed=set_for_seed)


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
    images = np.asarray(to_model_range(dataset.train_images))
    records = []
    for seed in config.seeds:
        name = f"evaluate/full_data_seed{seed}.json"
        fp = artifacts.fingerprint("evaluate_full_data", teacher.fingerprint, run.data_fingerprint, settings, epochs,
                                   run.config.seed, seed)
        if not parallel.complete_everywhere(run.store, name, fp):
            start = time.perf_counter()
            student = make_classifier(config.model, dataset.num_classes)
            label = f"full-data student seed {seed}"
            checkpoints = run.checkpoints(f"evaluate/full_data_seed{seed}", fp, train)
            variables, _ = train_student(
                student, teacher.model, {"params": teacher.params}, images, np.ones(len(images), np.float32), train,
                run.rng("evaluate_full_data", seed), run.mesh, labels=dataset.train_labels,
                loss_normalization="batch",  # uniform weights: the plain mean either way
                fast_conv=run.fast_conv, name=label, checkpoints=checkpoints, metrics_dir=run.metrics_dir,
            )
            test_accuracy = accuracy(student, variables, dataset.test_images, dataset.test_labels)
            logging.info("%s: test accuracy %.4f", label, test_accuracy)
            record = {"seed": seed, "test_accuracy": test_accuracy, "epochs": epochs, "images": len(images),
                      "seconds": round(time.perf_counter() - start, 2)}
            parallel.write_once(run.store, name, fp, lambda: run.store.save_record(name, record, fp))
            checkpoints.discard()
        records.append(run.store.load_record(name))
    return records
