"""Stage evaluate: a fresh student per (method, IPC, seed), trained on the synthetic set, tested on the test set.

With config.evaluate.full_data_epochs > 0 also the full-data student of each seed (`full_data`): the student's
architecture trained on every training image, uniform weights, by the very protocol (loss, teacher labels,
augmentation) for that many epochs: what the distillation loss reaches with all the data, the ceiling the
synthetic sets approach (the teacher's own accuracy is another architecture's).
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np
from absl import logging

from pqdjax import artifacts
from pqdjax.data.preprocess import to_model_range
from pqdjax.models.classifiers import make_classifier
from pqdjax.train.classifier import accuracy
from pqdjax.train.distill import train_student
from pqdjax.train.weighting import loss_normalization, student_weights


def evaluate_set(run, teacher, synthetic, seed: int, checkpoints=None) -> dict:
    """Trains one student on `synthetic` with the teacher's soft labels; returns its record.

    checkpoints: a pqdjax.train.checkpoint.Checkpoints for the student's training, or None.
    """
    config = run.config.evaluate
    dataset = run.dataset
    start = time.perf_counter()
    images = np.asarray(to_model_range(synthetic.images.reshape((-1,) + synthetic.images.shape[2:])))
    weighting = config.get("weighting")  # transforms of the set's weights (pqdjax.train.weighting)
    weights = student_weights(synthetic.weights, weighting).reshape(-1)
    student = make_classifier(config.model, dataset.num_classes)
    name = f"student {synthetic.method} IPC {synthetic.ipc} seed {seed}"
    params = train_student(
        student, teacher.model, teacher.params, images, weights, config.train,
        run.rng("evaluate", synthetic.ipc, seed), run.fast_conv, name=name,  # not the method: one seed, one student init
        checkpoints=checkpoints, metrics_dir=run.metrics_dir,
        loss_normalization=loss_normalization(weighting),
        labels=np.repeat(np.arange(synthetic.images.shape[0]), synthetic.images.shape[1]),  # [C, K] sets, class-major
    )
    test_accuracy = accuracy(student, params, dataset.test_images, dataset.test_labels)
    logging.info("%s: test accuracy %.4f", name, test_accuracy)
    return {
        "method": synthetic.method, "ipc": synthetic.ipc, "seed": seed,
        "test_accuracy": test_accuracy, "seconds": round(time.perf_counter() - start, 2),
    }


def run(run, teacher, synthetic: dict, set_for_seed=None) -> list[dict]:
    """A student per (method, IPC, seed) of `synthetic` ({(method, ipc): SyntheticSet}); their records.

    set_for_seed(method, ipc, seed): the set the student of `seed` trains on
    (pqdjax.stages.decode.set_for_seed: a random subset drawn anew per seed);
    None: synthetic[method, ipc] for every seed.
    """
    config = run.config.evaluate
    # adding seeds, pairs to compare or a full-data student redoes nothing
    settings = {k: v for k, v in config.to_dict().items() if k not in ("seeds", "compare", "full_data_epochs")}
    records = []
    for method, ipc in synthetic:
        for seed in config.seeds:
            synthetic_set = set_for_seed(method, ipc, seed) if set_for_seed else synthetic[method, ipc]
            name = f"evaluate/{method}_ipc{ipc}_seed{seed}.json"
            fp = artifacts.fingerprint("evaluate", teacher.fingerprint, synthetic_set.fingerprint, settings, seed)
            if run.store.is_complete(name, fp):
                records.append(run.store.load_record(name))
                continue
            checkpoints = run.checkpoints(f"evaluate/{method}_ipc{ipc}_seed{seed}", fp, config.train)
            record = evaluate_set(run, teacher, synthetic_set, seed, checkpoints)
            run.store.save_record(name, record, fp)
            checkpoints.discard()
            records.append(record)
    return records


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
        if not run.store.is_complete(name, fp):
            start = time.perf_counter()
            student = make_classifier(config.model, dataset.num_classes)
            label = f"full-data student seed {seed}"
            checkpoints = run.checkpoints(f"evaluate/full_data_seed{seed}", fp, train)
            params = train_student(
                student, teacher.model, teacher.params, images, np.ones(len(images), np.float32), train,
                run.rng("evaluate_full_data", seed), run.fast_conv, name=label, checkpoints=checkpoints, metrics_dir=run.metrics_dir,
                loss_normalization="batch", labels=dataset.train_labels,  # uniform weights: the plain mean either way
            )
            test_accuracy = accuracy(student, params, dataset.test_images, dataset.test_labels)
            logging.info("%s: test accuracy %.4f", label, test_accuracy)
            run.store.save_record(name, {"seed": seed, "test_accuracy": test_accuracy, "epochs": epochs, "images": len(images),
                                         "seconds": round(time.perf_counter() - start, 2)}, fp)
            checkpoints.discard()
        records.append(run.store.load_record(name))
    return records
