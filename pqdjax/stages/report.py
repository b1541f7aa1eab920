"""Stage report: results.json, results.md and the figures in the workdir, for every kind of run.

results.json holds every figure of the run with the config that produced it;
the compute cost (wall times per stage, artifact, synthetic set and student;
each student's training FLOPs as XLA counts them, pqdjax.cost; sums per method
and IPC) is under its "timing" key, the only part that differs between two
runs of the same config and seed. results.md has the accuracy table
(mean ± std over seeds, per method and IPC), the teacher's accuracy, W2
per method, the pushforward's fidelity per synthetic set (teacher
agreement, cell consistency, W2 of the re-encoded images: stages.fidelity)
and a table per further student architecture (config.evaluate.cross_architectures);
distilled.png the DDOQ images of every class with their weights;
accuracy_vs_ipc.png the accuracy against IPC per method with error bars;
weights_ipc{K}.png the histogram of the Voronoi weights per class.
"""

from __future__ import annotations

import json
import os
import types

import jax
import numpy as np
from absl import logging

from pqdjax import artifacts, figures, stats
from pqdjax.config_checks import split_method


def summarize(records: list[dict]) -> dict[str, dict[int, dict]]:
    """Test accuracy per method and IPC: {method: {ipc: {mean, std, n, seeds}}} (std: sample, ddof = 1, over seeds)."""
    table: dict[str, dict[int, dict]] = {}
    for record in records:
        table.setdefault(record["method"], {}).setdefault(record["ipc"], []).append(record)
    return {
        method: {
            ipc: {
                "mean": float(np.mean([r["test_accuracy"] for r in rs])),
                "std": stats.sample_std([r["test_accuracy"] for r in rs]),
                "n": len(rs),
                "seeds": [r["seed"] for r in rs],
            }
            for ipc, rs in sorted(by_ipc.items())
        }
        for method, by_ipc in table.items()
    }


def accuracy_table(summary: dict, teacher_accuracy: float, methods, ipcs, split: str = "Test") -> str:
    """Markdown: accuracy (%) mean ± std (n seeds) per method x IPC, and the teacher's (trained on the full data)."""
    head = "| method | " + " | ".join(f"IPC {k}" for k in ipcs) + " |\n|---|" + "---|" * len(ipcs) + "\n"
    rows = []
    for method in methods:
        cells = [
            f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f} (n={s['n']})" if (s := summary.get(method, {}).get(ipc)) else "-"
            for ipc in ipcs
        ]
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    rows.append("| full data (teacher) | " + " | ".join(f"{100 * teacher_accuracy:.2f}" for _ in ipcs) + " |")
    return f"{split} accuracy (%), mean ± std over seeds:\n\n" + head + "\n".join(rows) + "\n"


def w2_table(w2: dict, methods, ipcs) -> str:
    """Markdown: mean W2 over classes per method x IPC (w2[ipc][base method]['mean'])."""
    head = "| method | " + " | ".join(f"IPC {k}" for k in ipcs) + " |\n|---|" + "---|" * len(ipcs) + "\n"
    # A decoder suffix changes the images, not the points: W2 is the base method's.
    cell = lambda ipc, base: f"{w2[ipc][base]['mean']:.4f}" if base in w2[ipc] else "-"  # generated: no points of its own
    rows = [f"| {m} | " + " | ".join(cell(ipc, split_method(m)[0]) for ipc in ipcs) + " |" for m in methods]
    return "\nW2 from each class's latent measure to the method's weighted points (mean over classes):\n\n" + head + "\n".join(rows) + "\n"


def evaluation_report(config, teacher_accuracy: float, records: list[dict], fidelities: dict, ipcs, split: str = "Test") -> tuple[dict, dict[str, str]]:
    """What every pipeline reports of its students and synthetic sets.

    records: the students' records; those of config.evaluate.cross_architectures carry their 'arch'
    (pqdjax.stages.evaluate.student_models) and are reported apart, a table per architecture.
    Returns (results.json entries: teacher_test_accuracy, accuracy, paired_differences,
    fidelity, evaluations, and cross_architecture where there are such students; markdown
    sections: accuracy, paired, fidelity, cross_architecture).
    """
    methods = list(config.methods)
    pairs = [p for p in config.evaluate.get("compare", ()) if set(p) <= set(methods)]
    by_arch: dict[str, list[dict]] = {}
    for r in records:
        if "arch" in r:
            by_arch.setdefault(r["arch"], []).append(r)
    records = [r for r in records if "arch" not in r]
    summary = summarize(records)
    paired = paired_differences(records, pairs)
    results = {
        "teacher_test_accuracy": teacher_accuracy,
        "accuracy": summary,
        "paired_differences": paired,
        "fidelity": {m: {ipc: r for (m2, ipc), r in sorted(fidelities.items()) if m2 == m} for m in methods},
        "evaluations": sorted(
            (without_cost(r) for r in records), key=lambda r: (r["method"], r["ipc"], r["seed"])
        ),
    }
    sections = {
        "accuracy": accuracy_table(summary, teacher_accuracy, methods, ipcs, split),
        "paired": paired_table(paired),
        "fidelity": FIDELITY_INTRO + fidelity_table(fidelities, methods, ipcs),
        "cross_architecture": "",
    }
    if by_arch:
        cross = {arch: {"accuracy": summarize(rs), "paired_differences": paired_differences(rs, pairs),
                        "evaluations": sorted((without_cost(r) for r in rs),
                                              key=lambda r: (r["method"], r["ipc"], r["seed"]))}
                 for arch, rs in sorted(by_arch.items())}
        results["cross_architecture"] = cross
        sections["cross_architecture"] = "".join(
            f"\n## Student {arch} (the same sets; config.evaluate.cross_architectures)\n\n"
            + accuracy_table(c["accuracy"], teacher_accuracy, methods, ipcs, split) + paired_table(c["paired_differences"])
            for arch, c in cross.items())
    return results, sections


COST_FIELDS = ("seconds", "train_flops")  # a record's compute cost: reported under results.json's "timing" only


def without_cost(record: dict) -> dict:
    """A student's record without its wall time and FLOPs (they vary with the machine and XLA's version)."""
    return {k: v for k, v in record.items() if k not in COST_FIELDS}


def student_seconds(records: list[dict]) -> dict[str, float | None]:
    """Each student's wall time, keyed {method}_ipc{K}_seed{s}, or {arch}/{method}_ipc{K}_seed{s} for another architecture."""
    return {record_name(r): r.get("seconds") for r in records}


def student_cost(records: list[dict]) -> dict:
    """The students' compute cost: {'student_flops': {name: FLOPs of its training (pqdjax.cost) or None},
    'per_method': {method: {ipc: {students, seconds, flops}}}} (sums over seeds and architectures; flops None
    where any student's is unknown)."""
    per_method: dict = {}
    for r in records:
        cell = per_method.setdefault(r["method"], {}).setdefault(r["ipc"], {"students": 0, "seconds": 0.0, "flops": 0.0})
        cell["students"] += 1
        cell["seconds"] = round(cell["seconds"] + (r.get("seconds") or 0.0), 2)
        flops = r.get("train_flops")
        cell["flops"] = None if flops is None or cell["flops"] is None else cell["flops"] + flops
    return {"student_flops": {record_name(r): r.get("train_flops") for r in records}, "per_method": per_method}


def record_name(record: dict) -> str:
    """A student's name in the workdir (pqdjax.stages.evaluate.student_name) from its record."""
    from pqdjax.stages.evaluate import student_name

    return student_name(record["method"], record["ipc"], record["seed"], record.get("arch"))


def paired_differences(records: list[dict], pairs) -> dict[str, dict[int, dict]]:
    """For each (a, b) in pairs and IPC: a - b over the seeds both have (stats.paired_difference), keyed 'a - b'."""
    accuracy = {(r["method"], r["ipc"], r["seed"]): r["test_accuracy"] for r in records}
    out: dict[str, dict[int, dict]] = {}
    for a, b in pairs:
        for ipc in sorted({r["ipc"] for r in records}):
            seeds = sorted(s for (m, k, s) in accuracy if m == a and k == ipc and (b, ipc, s) in accuracy)
            if seeds:
                values = [accuracy[a, ipc, s] for s in seeds], [accuracy[b, ipc, s] for s in seeds]
                out.setdefault(f"{a} - {b}", {})[ipc] = {**stats.paired_difference(*values), "seeds": seeds}
    return out


def paired_table(paired: dict) -> str:
    """Markdown: per pair and IPC, the mean paired difference (points), its 95% interval and p-value."""
    if not paired:
        return ""
    rows = ["| difference | IPC | mean (points) | 95% interval | p (paired t) | seeds |", "|---|---|---|---|---|---|"]
    for name, by_ipc in paired.items():
        for ipc, d in by_ipc.items():
            interval = "-" if d["low"] is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
            p = "-" if d["p"] is None else f"{d['p']:.3f}"
            rows.append(f"| {name} | {ipc} | {100 * d['mean']:+.2f} | {interval} | {p} | {d['n']} |")
    return (
        "\nPaired differences of test accuracy (students of one seed share initialisation and batch order; "
        "t interval over the per-seed differences):\n\n" + "\n".join(rows) + "\n"
    )


FIDELITY_INTRO = (
    "\nWhat the pushforward kept (stages.fidelity): the share of images the teacher labels as their class, "
    "the share whose re-encoded latent stays in its point's Voronoi cell, and W2 from the class's latent "
    "measure to the re-encoded images with the set's weights beside W2 to the points:\n\n"
)


def fidelity_table(fidelities: dict, methods, ipcs) -> str:
    """Per synthetic set: teacher agreement (%), cell consistency (%), W2 of the re-encoded images / of the points."""
    head = "| method | IPC | teacher agreement (%) | cell consistency (%) | W2 images | W2 points |\n|---|---|---|---|---|---|\n"
    rows = []
    for ipc in ipcs:
        for method in methods:
            r = fidelities.get((method, ipc))
            if r is None:
                continue
            consistency = "-" if r["cell_consistency"] is None else f"{100 * r['cell_consistency']:.1f}"
            points = "-" if r["w2_points"] is None else f"{r['w2_points']:.4f}"
            rows.append(
                f"| {method} | {ipc} | {100 * r['teacher_agreement']:.1f} | {consistency} | {r['w2_images']:.4f} | {points} |"
            )
    return head + "\n".join(rows) + "\n"


FIGURE_CLASSES = 10  # the classes shown in distilled.png and weights_ipc{K}.png: the first ones (ImageNet has 1,000)


def write_figures(store, panels: dict, methods, teacher_accuracy: float, weights: dict, grid, class_names) -> None:
    """The figures of every pipeline: accuracy_vs_ipc.png, weights_ipc{K}.png per IPC, distilled.png.

    panels: {architecture: summarize(records)}, the main student's first, then the
    config.evaluate.cross_architectures students', a panel each; weights: {ipc: float [C, K]} the Voronoi weights;
    grid: (method, uint8 images [C, K, H, W, ch], weights [C, K]) of the set distilled.png shows, or None.
    The per-class figures show the first FIGURE_CLASSES classes.
    """
    shown = min(len(class_names), FIGURE_CLASSES)
    note = f" (first {shown} of {len(class_names)} classes)" if shown < len(class_names) else ""
    figures.accuracy_vs_ipc(store.path("accuracy_vs_ipc.png"), panels, methods, teacher_accuracy)
    for ipc, w in weights.items():
        w = np.asarray(w)[:shown]
        figures.weight_histograms(store.path(f"weights_ipc{ipc}.png"), w, class_names[:shown],
                                  f"Voronoi weights per class (K = {w.shape[1]}; dashed: uniform){note}")
    if grid is not None:
        method, images, set_weights = grid
        figures.distilled_grid(store.path("distilled.png"), types.SimpleNamespace(
            method=method + note, images=np.asarray(images)[:shown], weights=np.asarray(set_weights)[:shown]), class_names[:shown])


def full_data_summary(records: list[dict]) -> dict | None:
    """The full-data students' test accuracy over seeds {mean, std, n, epochs, records}, or None without them."""
    if not records:
        return None
    values = [r["test_accuracy"] for r in records]
    kept = [without_cost(r) for r in records]  # wall times and FLOPs go under "timing" only
    return {"mean": float(np.mean(values)), "std": stats.sample_std(values), "n": len(values), "epochs": records[0]["epochs"],
            "records": kept}


def quantization_report(quantized) -> dict:
    """results.json's quantization of one IPC: distortion per class, the quantizer's iterations per class (Lloyd's
    iterations; streamed CLVQ: its mini-batches) and W2 {base method: {mean, per_class}} of every base method with
    points of its own, as the quantize stage stored them (ddoq's is sqrt(distortion), exact because Voronoi weights
    make the nearest-point map optimal)."""
    w2 = {base: {"mean": float(values.mean()), "per_class": values.tolist()} for base, values in quantized.stored_w2().items()}
    return {"distortion_per_class": np.asarray(quantized.distortions(), np.float64).tolist(),
            "iterations_per_class": quantized.iterations().tolist(), "w2": w2}


def run(run, teacher, latents, quantized: dict, synthetic: dict, records: list[dict], fidelities: dict,
        full_data: list[dict] = ()) -> dict:
    """The report of every kind of run (pqdjax.pipeline): results.json (wall times and FLOPs under 'timing'),
    results.md and the figures (write_figures), written by process 0; returns results.json's dict plus 'table'.

    It reaches the stages' outputs through interfaces both kinds implement: quantized[ipc].distortions(),
    .iterations(), .stored_w2(), .class_weights(first) (stages.quantize);
    synthetic[method, ipc].load(first) and .manifest (stages.decode); latents.counts_per_class(), .shape and .cost;
    run.test_split.label and run.class_names.
    """
    config = run.config
    ipcs = sorted(quantized)
    quantization = {ipc: quantization_report(quantized[ipc]) for ipc in ipcs}
    evaluation, sections = evaluation_report(config, teacher.test_accuracy, records, fidelities, ipcs, split=run.test_split.label)
    full = full_data_summary(list(full_data))
    if full:  # a row under the teacher's: the student's architecture and loss on all the training images
        row = f"{100 * full['mean']:.2f} ± {100 * full['std']:.2f} (n={full['n']})"
        sections["accuracy"] = sections["accuracy"].rstrip("\n") + (
            f"\n| full data (student, {full['epochs']} epochs) | " + " | ".join(row for _ in ipcs) + " |\n")
    w2 = {ipc: quantization[ipc]["w2"] for ipc in ipcs}
    table = (sections["accuracy"] + w2_table(w2, list(config.methods), ipcs) + sections["paired"] + sections["fidelity"]
             + sections["cross_architecture"])
    results = {
        "config": json.loads(config.to_json_best_effort()),
        **evaluation,
        **({"full_data_student": full} if full else {}),
        "quantization": quantization,
        "latents": {"shape": list(latents.shape), "per_class": latents.counts_per_class().tolist()},
        # where each set's manifest (file, label, class, weight) lies in the workdir
        "synthetic": {f"{m}_ipc{k}": os.path.relpath(s.manifest, run.store.workdir) for (m, k), s in sorted(synthetic.items())},
        "timing": {
            **_timing(run, records),
            "artifact_seconds": _artifact_seconds(run),
            **({"full_data_student_seconds": {f"seed{r['seed']}": r.get("seconds") for r in full_data}} if full else {}),
            "encode": latents.cost,  # {seconds, flops} (stages.encode.encode_cost)
            "synthetic_seconds": _synthetic_cost(run, synthetic, "seconds"),
            "synthetic_flops": _synthetic_cost(run, synthetic, "flops"),
        },
    }
    if jax.process_index() == 0:
        _write_report(run, results, table, evaluation["accuracy"], latents, quantized, synthetic)
    return {**results, "table": table}


def _write_report(run, results: dict, table: str, summary: dict, latents, quantized: dict, synthetic: dict) -> None:
    """results.json, results.md and the figures of `run` (process 0); the per-class figures read only the classes
    they show."""
    from pqdjax.stages.decode import STRIPS_ARTIFACT

    store, ipcs = run.store, sorted(quantized)
    _write_results(run, results, table)
    shown = min(latents.num_classes, FIGURE_CLASSES)
    weights = {ipc: quantized[ipc].class_weights(shown) for ipc in ipcs}
    panels = {run.config.evaluate.model.get("arch", "student"): summary,
              **{arch: c["accuracy"] for arch, c in sorted(results.get("cross_architecture", {}).items())}}
    write_figures(store, panels, list(run.config.methods), results["teacher_test_accuracy"], weights,
                  figure_grid(run, synthetic, ipcs, shown), run.class_names)
    if store.info(STRIPS_ARTIFACT) is not None:
        figures.pushforward_strips(store.path("pushforward.png"), store.load_arrays(STRIPS_ARTIFACT), run.class_names)
    logging.info("report: wrote results.json, results.md and the figures to %s", store.workdir)


def _timing(run, records: list[dict]) -> dict:
    """results.json's timing: wall times in seconds (the one part of results.json that varies from run to run) of the
    stages and students, and the students' training FLOPs."""
    return {"stage_seconds": run.stage_seconds, "student_seconds": student_seconds(records), **student_cost(records)}


def _write_results(run, results: dict, table: str) -> None:
    """results.json and results.md (the tables and the stage wall times), by process 0."""
    artifacts.write_json(run.store.path("results.json"), results)
    artifacts.write_text(run.store.path("results.md"), f"# Results\n\n{table}\nStage wall times (s): {run.stage_seconds}\n")


def figure_set(methods, ipcs, synthetic) -> tuple[str, int]:
    """(method, IPC) of the set distilled.png shows: ddoq (else the last method) at the IPC nearest 10."""
    ipc = min(ipcs, key=lambda k: abs(k - 10))
    return ("ddoq" if ("ddoq", ipc) in synthetic else list(methods)[-1]), ipc


def figure_grid(run, synthetic: dict, ipcs, num_classes: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(method, uint8 images [C, K, H, W, ch], weights [C, K]) of the first num_classes classes of distilled.png's set
    (SyntheticSet.load reads back only their PNGs)."""
    method, ipc = figure_set(run.config.methods, ipcs, synthetic)
    images, weights = synthetic[method, ipc].load(first=num_classes)
    return method, images, weights


def _synthetic_cost(run, synthetic: dict, field: str) -> dict[str, float | None]:
    """Per synthetic set {method}_ipc{K}: the wall time ('seconds') or FLOPs ('flops', pqdjax.stages.image_decoders
    .decode_flops; None for pretrained priors) of making its images (real images: the time to write them, 0 FLOPs;
    d4m and ddoq, which share their images, each carry the one decoding's), as its manifest's marker recorded them
    (stages.decode)."""
    out = {}
    for (method, ipc), synthetic_set in synthetic.items():
        info = run.store.info(os.path.relpath(synthetic_set.manifest, run.store.workdir))
        if info is not None:
            out[f"{method}_ipc{ipc}"] = info.get(field)
    return out


def _artifact_seconds(run) -> dict[str, float]:
    """The wall time recorded when each trained artifact was made (it stays when a rerun reuses it)."""
    out = {}
    for name in ("prior/vae", "prior/denoiser", "teacher/params"):
        info = run.store.info(name) or {}
        if "seconds" in info:
            out[name] = info["seconds"]
    return out
