"""Runs the stages of a distillation experiment in order, skipping finished ones.

    prior -> teacher -> encode -> denoiser -> quantize -> decode -> fidelity -> evaluate -> full_data -> report

One sequence (STAGES) for every run; the kind of run chooses each stage's
component (stage_components): 'in_memory' runs (configs/default.py,
imagefolder.py) hold the data in host memory and train the prior here or load
the shipped one (pqdjax/stages/denoiser.py trains its latent denoiser);
'streamed' runs (configs/in1k.py, imagenette.py, imagewoof.py, cifar10.py,
imagefolder.py:prior=stable_diffusion) read the data record by record per
process and load a pretrained prior (Stable Diffusion or DiT), and skip the
denoiser and full_data stages. Every other stage has one component for every
kind, which reaches the others' outputs through small interfaces that both
kinds implement (listed in the stage's docstring). With config.export_pretrained set (the
`pretrain` option of configs/default.py) the run stops after the denoiser and
ships the VAE, teacher and denoiser (pqdjax.stages.export).

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
from collections.abc import Callable
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
            "data: %d train and %d %s images of shape %s, %d classes, from %s (%.1fs)",
            len(dataset.train_labels), len(dataset.test_labels), dataset.evaluation_split.lower(), dataset.image_shape,
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
    def kind(self) -> str:
        """'in_memory' or 'streamed' (kind_of)."""
        return kind_of(self.config)

    @functools.cached_property
    def test_split(self):
        """The split the teacher and every student are tested on (pqdjax.train.test_splits): the dataset's test
        images in host memory, or config.data.test_split streamed and sharded over the Mesh."""
        from pqdjax.train import test_splits

        if self.kind == "streamed":
            return test_splits.StreamedSplit(self.config.data, self.mesh)
        dataset = self.dataset
        return test_splits.HeldOutArrays(dataset.test_images, dataset.test_labels, dataset.num_classes,
                                         label=dataset.evaluation_split)

    @property
    def class_names(self) -> list[str]:
        """The classes' names, in label order: the in-memory dataset's, or the streamed classes' prompts."""
        return list(self.classes.prompts) if self.kind == "streamed" else list(self.dataset.class_names)

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


# The one stage sequence. Each kind of run supplies a component per stage (stage_components); a kind
# without a stage skips it.
STAGES = ("prior", "teacher", "encode", "denoiser", "quantize", "decode", "fidelity", "evaluate", "full_data")


def kind_of(config: ml_collections.ConfigDict) -> str:
    """'streamed' (config.data.streamed: data read record by record per process, a pretrained prior; configs/in1k.py,
    imagenette.py, imagewoof.py, cifar10.py, imagefolder.py:prior=stable_diffusion) or 'in_memory' (data in host
    memory, the prior trained here or shipped; configs/default.py, imagefolder.py)."""
    return "streamed" if config.data.get("streamed") else "in_memory"


def stage_components(config: ml_collections.ConfigDict) -> dict[str, Callable[[Run, dict], Any]]:
    """{stage: component(run, outputs)} for the kind of `config`, plus 'report'. A component reads the outputs of
    earlier stages by stage name (outputs['encode'] is the latents) and returns its own."""
    from pqdjax.stages import decode, encode, evaluate, fidelity, prior, quantize, report, teacher

    # The components every kind shares (each reads the others' outputs through the interfaces in its docstring).
    models = {"prior": lambda run, o: prior.run(run), "teacher": lambda run, o: teacher.run(run),
              "encode": lambda run, o: encode.run(run, o["prior"])}  # the training images by kind (stages.encode)
    denoiser_of = lambda o: o.get("denoiser")  # streamed priors bring their own (DiffusionPrior.model)

    def evaluate_sets(run, o):
        set_for_seed = decode.set_for_seed(run, o["prior"], o["encode"], o["quantize"], o["decode"], denoiser_of(o))
        return evaluate.run(run, o["teacher"], o["decode"], set_for_seed)

    distilled = {
        "quantize": lambda run, o: quantize.run(run, o["encode"]),
        "decode": lambda run, o: decode.run(run, o["prior"], o["encode"], o["quantize"], denoiser_of(o)),
        "fidelity": lambda run, o: fidelity.run(run, o["prior"], o["teacher"], o["encode"], o["quantize"], o["decode"]),
        "evaluate": evaluate_sets,
    }
    if kind_of(config) == "streamed":
        return {
            **models,
            **distilled,
            "report": lambda run, o: report.run(run, o["teacher"], o["encode"], o["quantize"], o["decode"], o["evaluate"],
                                                o["fidelity"]),
        }
    from pqdjax.stages import denoiser, export

    trained = {
        **models,
        "denoiser": lambda run, o: denoiser.run(run, o["encode"]),
    }
    if config.get("export_pretrained"):  # configs/default.py:pretrain: ship the three components, no distillation
        def ship(run, o):
            shipped = export.run(run, o["prior"], o["teacher"], o["denoiser"], config.export_pretrained)
            return {"table": json.dumps({name: entry["quality"] for name, entry in shipped.items()}, indent=2)}

        return {**trained, "report": ship}

    return {
        **trained,
        **distilled,
        "full_data": lambda run, o: evaluate.full_data(run, o["teacher"]),
        "report": lambda run, o: report.run(run, o["teacher"], o["encode"], o["quantize"], o["decode"], o["evaluate"],
                                            o["fidelity"], o["full_data"]),
    }


def check_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for a bad config (naming the fields); uses no device, so pqdjax.main checks the config
    before a multi-process run connects its processes, and each stops at a bad config with its own line.

    A streamed config's config.data.num_classes = 0 ('every class') is replaced in `config` itself by the
    dataset's class count first, so config.json, the fingerprints and the report see the count.
    Every process counts the same folder (the data, like the workdir, must be the same for every host)."""
    if kind_of(config) == "streamed":
        if config.data.get("num_classes") == 0:  # every class of the dataset (configs/imagefolder.py:prior=stable_diffusion)
            from pqdjax.data import streamed

            config.data.num_classes = streamed.class_count(config.data)
            logging.info("data: config.data.num_classes = 0, so all %d classes of %s", config.data.num_classes, config.data.name)
        validate_streamed_config(config)
    else:
        validate_config(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) the experiment of `config` in `workdir`: STAGES in order with the components of its kind,
    then the report; returns the report (see stages.report). The config is checked first (check_config)."""
    check_config(config)
    store = artifacts.ArtifactStore(workdir)
    if jax.process_index() == 0:  # one process: another's temporary files are not leftovers
        for leftover in store.remove_temporaries():
            logging.info("removed %s, left by an interrupted run", leftover)
        artifacts.write_json(os.path.join(store.workdir, "config.json"), json.loads(config.to_json_best_effort()))
    parallel.sync_processes("workdir ready")
    logging.info("workdir %s, JAX backend %s with %d device(s)", store.workdir, jax.default_backend(), jax.device_count())
    run_ = Run(config=config, store=store)
    if kind_of(config) == "streamed":  # both splits found, with the same classes, before any stage runs
        names = run_.classes.names
        logging.info("data: %d classes of %s (%s%s)", len(names), config.data.name, ", ".join(names[:5]), ", ..." if len(names) > 5 else "")
    components = stage_components(config)
    total_start = time.perf_counter()
    outputs: dict[str, Any] = {}
    for name in STAGES:
        if name in components:
            outputs[name] = _timed(run_, name, components[name], run_, outputs)
    run_.stage_seconds["total"] = round(time.perf_counter() - total_start, 2)
    return components["report"](run_, outputs)
