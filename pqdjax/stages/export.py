"""Stage export (the pretrain run only): the trained VAE, teacher and denoiser, measured and shipped.

`configs/default.py:pretrain` sets config.export_pretrained to a folder; after
the denoiser stage the pipeline calls `run` here, which writes one
safetensors file per component and the manifest (pqdjax.pretrained) with
what each one measures:

    vae       PSNR of its reconstructions of every test image
    teacher   test accuracy
    denoiser  teacher agreement of its class-conditional samples (strength 1,
              the config's guidance and steps): the share of samples the
              teacher labels as the class they were drawn for

and samples.png, a grid of those samples (a row per class).

A component the run loaded from `folder` itself (its config weights field
names a file there) is kept: its file and the training record of its
manifest entry stay, and only its quality is measured again (the teacher
agreement of the denoiser's samples depends on the teacher). So one
component can be retrained alone, e.g. the teacher:

    python -m pqdjax.main --config=configs/default.py:pretrain --workdir=runs/pretrain \
        --config.prior.weights=pretrained/fashion_mnist/vae.safetensors \
        --config.denoiser.weights=pretrained/fashion_mnist/denoiser.safetensors
"""

from __future__ import annotations

import os
import platform
import time

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from pqdjax import figures, parallel, pretrained
from pqdjax.stages import denoiser as denoiser_stage
from pqdjax.stages import prior as prior_stage
from pqdjax.stages import teacher as teacher_stage
from pqdjax.stages.image_decoders import TrainedLatentModel, decode_images, point_keys
from pqdjax.stages.fidelity import teacher_agreement


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, JAX backend {jax.default_backend()}"


def class_conditional_samples(run, prior, denoiser, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [C * per_class, H, W, ch] sampled from pure noise (strength 1) for each class, and their labels
    (the decode stage's 'sample' decoder, each sample with its own key)."""
    num_classes = denoiser.model.num_classes
    labels = np.repeat(np.arange(num_classes), per_class)
    noise_like = np.zeros((len(labels),) + tuple(denoiser.model.latent_shape), np.float32)
    keys = point_keys(run.rng("export", "samples"), range(num_classes), per_class)
    mesh = Mesh(np.asarray(jax.local_devices()), (parallel.DATA_AXIS,))
    return decode_images(TrainedLatentModel(prior, denoiser), "sample", noise_like, labels, None, keys,
                         run.config.decode.diffusion, mesh), labels


# component name -> (config section, file name, artifact of the stage that trains it)
COMPONENTS = {
    "vae": ("prior", "vae.safetensors", prior_stage.ARTIFACT),
    "teacher": ("teacher", "teacher.safetensors", teacher_stage.ARTIFACT),
    "denoiser": ("denoiser", "denoiser.safetensors", denoiser_stage.ARTIFACT),
}


def kept_components(config) -> dict[str, dict]:
    """The components the run loads from its export folder: name -> their manifest entry (kept as trained)."""
    return {
        name: pretrained.manifest_entry(config[section].weights)
        for name, (section, _, _) in COMPONENTS.items() if config[section].get("weights")
    }


def run(run, prior, teacher, denoiser, folder: str) -> dict:
    """Writes the three components and the manifest into `folder`; returns the manifest's components."""
    start = time.perf_counter()
    config, dataset, store = run.config, run.dataset, run.store
    folder = pretrained.resolve(folder)
    psnr = prior_stage.test_psnr_db(prior, dataset.test_images)
    samples, labels = class_conditional_samples(run, prior, denoiser, config.export_samples_per_class)
    agreement = teacher_agreement(teacher, samples, labels)
    per_class = [teacher_agreement(teacher, samples[labels == c], labels[labels == c]) for c in range(dataset.num_classes)]
    logging.info("export: VAE test PSNR %.2f dB, teacher test accuracy %.4f, denoiser sample agreement %.4f", psnr, teacher.test_accuracy, agreement)

    kept = kept_components(config)
    trained = {"vae": prior.params, "teacher": teacher.params, "denoiser": denoiser.params}
    os.makedirs(folder, exist_ok=True)
    for name, (_, file, _) in COMPONENTS.items():
        if name not in kept:
            pretrained.save_params(os.path.join(folder, file), trained[name])

    def entry(name, model_config, quality, **extra):
        if name in kept:  # as trained then, measured now
            record = {k: v for k, v in kept[name].items() if k not in ("sha256", "bytes")}
            return {**record, "quality": quality}
        section, file, artifact = COMPONENTS[name]
        return dict(
            file=file, model_config=model_config.to_dict(), train_config=config[section].train.to_dict(),
            data=config.data.to_dict(), seed=config.seed, train_seconds=store.info(artifact).get("seconds"),
            machine=machine(), quality=quality, **extra,
        )

    components = {
        "vae": entry("vae", config.prior.vae, {"test_psnr_db": round(psnr, 3)}, latent_scale=prior.latent_scale),
        "teacher": entry("teacher", config.teacher.model, {"test_accuracy": teacher.test_accuracy}),
        "denoiser": entry("denoiser", config.denoiser.model, {
            "teacher_agreement": agreement, "teacher_agreement_per_class": [round(a, 4) for a in per_class],
            "samples": len(labels), "strength": 1.0, "guidance": config.decode.diffusion.guidance,
            "steps": config.decode.diffusion.steps,
        }, vae_sha256=pretrained.sha256_of(os.path.join(folder, "vae.safetensors"))),
    }
    pretrained.write_manifest(folder, components)
    grid = samples.reshape((dataset.num_classes, -1) + samples.shape[1:])[:, :10]
    title = f"class-conditional samples of the denoiser (strength 1, guidance {config.decode.diffusion.guidance:g}); teacher agreement {agreement:.3f}"
    figures.image_grid(os.path.join(folder, "samples.png"), grid, dataset.class_names, title)
    logging.info("export: wrote %s (%.1fs)", folder, time.perf_counter() - start)
    return components
