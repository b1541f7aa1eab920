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
from pqdjax.stages import (
    imagenet_decode, imagenet_encode, imagenet_evaluate, imagenet_fidelity, imagenet_prior, imagenet_quantize, imagenet_teacher,
)
from pqdjax.stages.report import FIDELITY_INTRO, fidelity_table, paired_differences, paired_table, summarize


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


def markdown_table(summary: dict, teacher_accuracy: float, methods, ipcs) -> str:
    """Validation top-1 (%) mean ± std over seeds per method x IPC, and the teacher's."""
    head = "| method | " + " | ".join(f"IPC {k}" for k in ipcs) + " |\n|---|" + "---|" * len(ipcs) + "\n"
    rows = []
    for method in methods:
        cells = [
            f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})" if (s := summary.get(method, {}).get(ipc)) else "-"
            for ipc in ipcs
        ]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    rows.append("| teacher | " + " | ".join(f"{100 * teacher_accuracy:.2f}" for _ in ipcs) + " |")
    return "Validation top-1 accuracy (%), mean ± std over seeds:\n\n" + head + "\n".join(rows) + "\n"


def report(run, teacher, latents, quantized: dict, synthetic: dict, records: list[dict], fidelities: dict) -> dict:
    """Writes results.json (wall times under 'timing') and results.md; returns results.json's dict plus 'table'."""
    config = run.config
    ipcs = sorted(quantized)
    summary = summarize(records)
    quantization = {}
    for ipc in ipcs:
        distortion = np.asarray([float(quantized[ipc].load(run.store, c)["distortion"]) for c in range(latents.num_classes)])
        quantization[ipc] = {
            "distortion_per_class": distortion.tolist(),
            # Voronoi weights make the nearest-point map optimal: W2 = sqrt(distortion), exactly.
            "w2": {"ddoq": {"mean": float(np.sqrt(np.maximum(distortion, 0)).mean()), "per_class": np.sqrt(np.maximum(distortion, 0)).tolist()}},
        }
    table = markdown_table(summary, teacher.test_accuracy, list(config.methods), ipcs)
    paired = paired_differences(records, [p for p in config.evaluate.get("compare", ()) if set(p) <= set(config.methods)])
    table += paired_table(paired) + FIDELITY_INTRO + fidelity_table(fidelities, list(config.methods), ipcs)
    results = {
        "config": json.loads(config.to_json_best_effort()),
        "teacher_test_accuracy": teacher.test_accuracy,
        "accuracy": summary,
        "paired_differences": paired,
        "quantization": quantization,
        "fidelity": {m: {ipc: r for (m2, ipc), r in sorted(fidelities.items()) if m2 == m} for m in config.methods},
        "latents": {"shape": list(latents.shape), "per_class": latents.counts.sum(0).tolist()},
        "synthetic": {f"{m}_ipc{k}": os.path.relpath(s.manifest, run.store.workdir) for (m, k), s in sorted(synthetic.items())},
        "evaluations": sorted(
            ({k: v for k, v in r.items() if k != "seconds"} for r in records), key=lambda r: (r["method"], r["ipc"], r["seed"])
        ),
        "timing": {  # wall times in seconds: the one part of results.json that varies from run to run
            "stage_seconds": run.stage_seconds,
            "student_seconds": {f"{r['method']}_ipc{r['ipc']}_seed{r['seed']}": r.get("seconds") for r in records},
        },
    }
    if jax.process_index() == 0:
        artifacts.write_json(run.store.path("results.json"), results)
        artifacts.write_text(run.store.path("results.md"), f"# Results\n\n{table}\nStage wall times (s): {run.stage_seconds}\n")
        logging.info("report: wrote results.json and results.md to %s", run.store.workdir)
    return {**results, "table": table}
