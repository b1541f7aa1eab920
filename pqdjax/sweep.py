"""Choosing the pushforward's strength and guidance on a validation split, never the test set.

    python -m pqdjax.main --config=configs/default.py:sweep --workdir=runs/sweep

The sweep option of a config sets config.sweep (strengths, guidances) and
evaluates on validation images held out from the training set
(config.data.evaluate_on = 'validation'). For every (guidance, strength) the
ordinary pipeline runs in the same workdir, so the prior, teacher, latents
and quantization are computed once and only decode, fidelity and the
students are redone. Written to the workdir:

    sweep.json  one record per (guidance, strength, method): teacher agreement,
                cell consistency, student validation accuracy (mean over seeds)
    sweep.md    the same as a table, and the chosen setting
    sweep.png   the three against strength, a line per guidance

Every grid point writes the same synthetic/, fidelity/ and evaluate/ names
(results.json is the last point's): a rerun of an interrupted sweep redoes
the points after the first, and sweep.json is the record of the grid. The
shipped VAE, teacher and denoiser were trained on all training images, the
held-out ones included; only the quantization and the students are kept
from them, so validation scores are somewhat optimistic, never test-set ones.

The chosen setting maximises the student validation accuracy averaged over
the config's methods (d4m and ddoq share the decoded images, so their mean is
the decoder's quality for both weightings).
"""

from __future__ import annotations

import copy

import numpy as np
from absl import logging

from pqdjax import artifacts, figures, pipeline


def run(config, workdir: str) -> dict:
    """Runs the grid of config.sweep; returns {'records', 'chosen', 'table'}."""
    if config.data.get("evaluate_on", "test") != "validation":
        raise ValueError("a sweep chooses settings on held-out training images: set config.data.evaluate_on='validation'.")
    records = []
    for guidance in config.sweep.guidances:
        for strength in config.sweep.strengths:
            point = copy.deepcopy(config)
            point.decode.diffusion.update(strength=float(strength), guidance=float(guidance))
            point.decode.figure_strengths = ()
            logging.info("sweep: strength %g, guidance %g", strength, guidance)
            results = pipeline.run(point, workdir)
            ipc = max(results["fidelity"][config.methods[0]])
            for method in config.methods:
                fidelity = results["fidelity"][method][ipc]
                accuracy = results["accuracy"][method][ipc]
                records.append({
                    "strength": float(strength), "guidance": float(guidance), "method": method, "ipc": ipc,
                    "teacher_agreement": fidelity["teacher_agreement"], "cell_consistency": fidelity["cell_consistency"],
                    "validation_accuracy": accuracy["mean"], "validation_accuracy_std": accuracy["std"],
                })
    chosen = choose(records)
    table = markdown(records, chosen)
    store = artifacts.ArtifactStore(workdir)
    artifacts.write_json(store.path("sweep.json"), {"records": records, "chosen": chosen})
    artifacts.write_text(store.path("sweep.md"), "# Strength and guidance sweep (validation split)\n\n" + table)
    figures.sweep_curves(store.path("sweep.png"), records)
    return {"records": records, "chosen": chosen, "table": table}


def choose(records: list[dict]) -> dict:
    """The (strength, guidance) with the highest validation accuracy averaged over methods, and that average."""
    by_setting: dict[tuple[float, float], list[float]] = {}
    for r in records:
        by_setting.setdefault((r["strength"], r["guidance"]), []).append(r["validation_accuracy"])
    (strength, guidance), accuracies = max(by_setting.items(), key=lambda item: np.mean(item[1]))
    return {"strength": strength, "guidance": guidance, "validation_accuracy": float(np.mean(accuracies))}


def markdown(records: list[dict], chosen: dict) -> str:
    rows = [
        "| guidance | strength | method | teacher agreement (%) | cell consistency (%) | validation accuracy (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        consistency = "-" if r["cell_consistency"] is None else f"{100 * r['cell_consistency']:.1f}"
        rows.append(
            f"| {r['guidance']:g} | {r['strength']:g} | {r['method']} | {100 * r['teacher_agreement']:.1f} | {consistency} "
            f"| {100 * r['validation_accuracy']:.2f} ± {100 * r['validation_accuracy_std']:.2f} |"
        )
    return (
        "\n".join(rows)
        + f"\n\nChosen: strength {chosen['strength']:g}, guidance {chosen['guidance']:g} "
        + f"(validation accuracy {100 * chosen['validation_accuracy']:.2f}%, mean over methods).\n"
    )
