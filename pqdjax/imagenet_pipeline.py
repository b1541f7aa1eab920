"""The ImageNet-1K pipeline (configs/in1k.py): Stable Diffusion latents, quantization, img2img, RDED/D4M students.

    prior -> teacher -> encode -> quantize -> decode -> fidelity -> evaluate -> report

    prior     Stable Diffusion v1.x loaded (or a tiny random one written for smoke runs)
    teacher   torchvision ResNet weights converted to flax {'params', 'batch_stats'}
    encode    tfds imagenet2012 train -> SD VAE latents, sharded, streamed to disk per class
    quantize  per class K = IPC points and Voronoi weights (CLVQ streamed, or Lloyd)
    decode    img2img from each point with the class name as prompt -> 224 px PNGs + manifests
    fidelity  teacher agreement, cell consistency, W2 of the re-encoded images, per set
    evaluate  a student per method, IPC and seed, validated at resize 256 / crop 224
    report    results.json and results.md in the workdir

pqdjax.pipeline.run dispatches here when config.data.name is 'imagenet2012';
like the default pipeline, every stage's artifacts are fingerprinted and a
rerun skips what is complete. A multi-host run needs a workdir on a
filesystem all hosts share.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import logging

from pqdjax import artifacts
from pqdjax.data.image_folder import load_images, read_manifest
from pqdjax.stages import (
    imagenet_decode, imagenet_encode, imagenet_evaluate, imagenet_fidelity, imagenet_prior, imagenet_quantize, imagenet_teacher,
)
from pqdjax.stages.report import FIGURE_CLASSES, evaluation_report, figure_set, student_seconds, write_figures


def run_stages(run) -> dict:
    """Runs (or resumes) the stages above for the pipeline.Run `run`; returns the report (results.json plus 'table')."""
    from pqdjax.pipeline import _timed

    total_start = time.perf_counter()
    prior = _timed(run, "prior", imagenet_prior.run, run)
    teacher = _timed(run, "teacher", imagenet_teacher.run, run)
    latents = _timed(run, "encode", imagenet_encode.run, run, prior)
    quantized = _timed(run, "quantize", imagenet_quantize.run, run, latents)
    synthetic = _timed(run, "decode", imagenet_decode.run, run, prior, latents, quantized)
    fidelities = _timed(run, "fidelity", imagenet_fidelity.run, run, prior, teacher, latents, quantized, synthetic)
    records = _timed(run, "evaluate", imagenet_evaluate.run, run, teacher, synthetic)
    run.stage_seconds["total"] = round(time.perf_counter() - total_start, 2)
    return report(run, teacher, latents, quantized, synthetic, records, fidelities)


def figure_grid(run, synthetic: dict, ipcs, num_classes: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(method, uint8 images [C, K, H, W, 3], weights [C, K]) of the first num_classes classes of distilled.png's set,
    read back from its manifest and PNGs."""
    method, ipc = figure_set(run.config.methods, ipcs, synthetic)
    files, labels, weights = read_manifest(synthetic[method, ipc].manifest)
    keep = labels < num_classes  # the manifest is class-major, K rows per class
    images = load_images([f for f, k in zip(files, keep) if k])
    return method, images.reshape((num_classes, ipc) + images.shape[1:]), weights[keep].reshape(num_classes, ipc)


def report(run, teacher, latents, quantized: dict, synthetic: dict, records: list[dict], fidelities: dict) -> dict:
    """Writes results.json (wall times under 'timing') and results.md; returns results.json's dict plus 'table'."""
    config = run.config
    ipcs = sorted(quantized)
    quantization = {}
    for ipc in ipcs:
        distortion = np.asarray([float(quantized[ipc].load(run.store, c)["distortion"]) for c in range(latents.num_classes)])
        quantization[ipc] = {
            "distortion_per_class": distortion.tolist(),
            # Voronoi weights make the nearest-point map optimal: W2 = sqrt(distortion), exactly.
            "w2": {"ddoq": {"mean": float(np.sqrt(np.maximum(distortion, 0)).mean()), "per_class": np.sqrt(np.maximum(distortion, 0)).tolist()}},
        }
    evaluation, sections = evaluation_report(config, teacher.test_accuracy, records, fidelities, ipcs, split="Validation")
    table = sections["accuracy"] + sections["paired"] + sections["fidelity"]
    results = {
        "config": json.loads(config.to_json_best_effort()),
        **evaluation,
        "quantization": quantization,
        "latents": {"shape": list(latents.shape), "per_class": latents.counts.sum(0).tolist()},
        "synthetic": {f"{m}_ipc{k}": os.path.relpath(s.manifest, run.store.workdir) for (m, k), s in sorted(synthetic.items())},
        "timing": {  # wall times in seconds: the one part of results.json that varies from run to run
            "stage_seconds": run.stage_seconds,
            "student_seconds": student_seconds(records),
        },
    }
    if jax.process_index() == 0:
        artifacts.write_json(run.store.path("results.json"), results)
        artifacts.write_text(run.store.path("results.md"), f"# Results\n\n{table}\nStage wall times (s): {run.stage_seconds}\n")
        shown = min(latents.num_classes, FIGURE_CLASSES)
        weights = {ipc: np.stack([quantized[ipc].load(run.store, c)["weights"] for c in range(shown)]) for ipc in ipcs}
        write_figures(run.store, evaluation["accuracy"], list(config.methods), teacher.test_accuracy, weights,
                      figure_grid(run, synthetic, ipcs, shown), run.classes.prompts)
        logging.info("report: wrote results.json, results.md and the figures to %s", run.store.workdir)
    return {**results, "table": table}
