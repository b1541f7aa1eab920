"""Runs the stages of a distillation experiment in order, skipping finished ones.

    data -> prior -> teacher -> encode -> denoiser -> quantize -> decode -> fidelity -> evaluate -> report

(With config.export_pretrained set, the `pretrain` option of configs/default.py,
the run stops after the denoiser and ships the VAE, teacher and denoiser:
pqdjax.stages.export.)

(ImageNet-1K, config.data.name 'imagenet2012', runs the stages of
pqdjax.imagenet_pipeline instead.)

Each stage lives in pqdjax/stages/ and takes the `Run` (config, artifact
store, lazily loaded dataset, PRNG keys) and the outputs of the stages before
it. Every output carries a fingerprint: a hash of the config fields that
produced it and of its inputs' fingerprints, so that a rerun with the same
config reloads it and a changed config redoes only what depends on the
change.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import zlib
from typing import Any

import jax
import ml_collections
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.config_checks import validate_config, validate_streamed_config
from pqdjax.data.sources import ImageDataset, load_dataset
from pqdjax.models.fast_conv import wanted_on_this_backend
from pqdjax.train.checkpoint import Checkpoints


@dataclasses.dataclass
class Run:
    """What every stage needs: the config, the artifacts, the data, PRNG keys, timings."""

    config: ml_collections.ConfigDict
    store: artifacts.ArtifactStore
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def dataset(self) -> ImageDataset:
        start = time.perf_counter()
        dataset = load_dataset(self.config.data)
        logging.info(
            "data: %d train and %d test images of shape %s, %d classes, from %s (%.1fs)",
            len(dataset.train_labels), len(dataset.test_labels), dataset.image_shape,
            dataset.num_classes, dataset.source, time.perf_counter() - start,
        )
        return dataset

    @functools.cached_property
    def mesh(self) -> jax.sharding.Mesh:
        """The one Mesh of the run's sharded stages (config.mesh; default: a 'data' axis over all devices)."""
        return parallel.make_mesh(self.config.get("mesh"))

    @functools.cached_property
    def classes(self):
        """The streamed pipeline's classes: names, prompts, ImageNet-1K indices (pqdjax.data.streamed.Classes)."""
        from pqdjax.data import streamed

        return streamed.dataset_classes(self.config.data)

    @property
    def data_fingerprint(self) -> str:
        """The data config and the data's content (ImageDataset.content_digest): loads the dataset."""
        return artifacts.fingerprint("data", self.config.data, self.dataset.content_digest)

    @functools.cached_property
    def fast_conv(self) -> bool:
        return wanted_on_this_backend(self.config.fast_conv_gradients)

    @property
    def metrics_dir(self) -> str:
        """Where trainers write their training curves (pqdjax.train.metrics)."""
        return self.store.path("metrics")

    def checkpoints(self, folder: str, fp: str, train_config: ml_collections.ConfigDict) -> Checkpoints:
        """Mid-training checkpoints under checkpoints/{folder}, every train_config.checkpoint_every steps."""
        return Checkpoints(self.store, f"checkpoints/{folder}", fp, train_config.get("checkpoint_every", 0))

    def rng(self, *path: str | int) -> jax.Array:
        """A PRNG key for a named purpose, derived from config.seed: rng('evaluate', 'ddoq', 10, 0)."""
        key = jax.random.key(self.config.seed)
        for part in path:
            key = jax.random.fold_in(key, part if isinstance(part, int) else zlib.crc32(part.encode()))
        return key


def _timed(run: Run, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    run.stage_seconds[name] = round(time.perf_counter() - start, 2)
    logging.info("stage %s: %.1fs", name, run.stage_seconds[name])
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment of `config` in `workdir`; returns the report (see stages.report)."""
    from pqdjax.stages import decode, denoiser, encode, evaluate, export, fidelity, prior, quantize, report, teacher

    streamed = bool(config.data.get("streamed"))
    if streamed:
        validate_streamed_config(config)
    else:
        validate_config(config)
    store = artifacts.ArtifactStore(workdir)
    if jax.process_index() == 0:  # one process: another's temporary files are not leftovers
        for leftover in store.remove_temporaries():
            logging.info("removed %s, left by an interrupted run", leftover)
        artifacts.write_json(os.path.join(store.workdir, "config.json"), json.loads(config.to_json_best_effort()))
    parallel.sync_processes("workdir ready")
    logging.info("workdir %s, JAX backend %s with %d device(s)", store.workdir, jax.default_backend(), jax.device_count())
    run_ = Run(config=config, store=store)
    if streamed:
        from pqdjax import imagenet_pipeline

        return imagenet_pipeline.run_stages(run_)
    total_start = time.perf_counter()
    prior_out = _timed(run_, "prior", prior.run, run_)
    teacher_out = _timed(run_, "teacher", teacher.run, run_)
    latents = _timed(run_, "encode", encode.run, run_, prior_out)
    denoiser_out = _timed(run_, "denoiser", denoiser.run, run_, latents)
    if config.get("export_pretrained"):
        components = _timed(run_, "export", export.run, run_, prior_out, teacher_out, denoiser_out, config.export_pretrained)
        return {"table": json.dumps({name: entry["quality"] for name, entry in components.items()}, indent=2)}
    quantized = _timed(run_, "quantize", quantize.run, run_, latents)
    synthetic = _timed(run_, "decode", decode.run, run_, prior_out, latents, quantized, denoiser_out)
    fidelities = _timed(run_, "fidelity", fidelity.run, run_, prior_out, teacher_out, latents, quantized, synthetic)
    set_for_seed = decode.set_for_seed(run_, prior_out, latents, quantized, synthetic, denoiser_out)
    evaluations = _timed(run_, "evaluate", evaluate.run, run_, teacher_out, synthetic, set_for_seed)
    full_data = _timed(run_, "full_data", evaluate.full_data, run_, teacher_out)
    run_.stage_seconds["total"] = round(time.perf_counter() - total_start, 2)
    return report.run(run_, teacher_out, quantized, synthetic, evaluations, fidelities, full_data)
