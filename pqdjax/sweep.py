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
the decoder's quality for both weightings) among the settings whose
pushforward keeps what the method relies on: the class (teacher agreement at
least config.sweep.min_teacher_agreement) and the point (cell consistency, the
share of images that re-encode into their point's Voronoi cell, at least
config.sweep.min_cell_consistency). An image far outside its point's cell no
longer represents the cell's mass, so its Voronoi weight (DDOQ) and the W2
argument lose their meaning. When no setting qualifies, the best overall is
chosen and the report says so; the best overall is always reported beside it.
"""

from __future__ import annotations

import copy

import numpy as np
from absl import logging

from pqdjax import artifacts, figures, pipeline
from pqdjax.errors import ConfigError


def run(config, workdir: str) -> dict:
    """Runs the grid of config.sweep; returns {'records', 'chosen', 'table'}."""
    if config.data.get("evaluate_on", "test") != "validation":
        raise ConfigError("a sweep chooses settings on held-out training images: set config.data.evaluate_on='validation'.")
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
    chosen = choose(records, config.sweep.get("min_teacher_agreement", 0.0), config.sweep.get("min_cell_consistency", 0.0))
    if not chosen["constrained"]:
        logging.warning("sweep: no setting reaches the minimum teacher agreement and cell consistency; chose the best overall")
    table = markdown(records, chosen)
    store = artifacts.ArtifactStore(workdir)
    artifacts.write_json(store.path("sweep.json"), {"records": records, "chosen": chosen})
    artifacts.write_text(store.path("sweep.md"), "# Strength and guidance sweep (validation split)\n\n" + table)
    figures.sweep_curves(store.path("sweep.png"), records)
    return {"records": records, "chosen": chosen, "table": table}


def choose(records: list[dict], min_teacher_agreement: float = 0.0, min_cell_consistency: float = 0.0) -> dict:
    """The (strength, guidance) with the highest validation accuracy averaged over methods, among the qualifying ones.

    A setting qualifies when its teacher agreement and cell consistency, averaged
    over methods, reach the minima (a missing cell consistency counts as 0).
    Returns {'strength', 'guidance', 'validation_accuracy', 'constrained'} and
    'best_overall', the unconstrained choice in the same form; 'constrained' is
    False when no setting qualified (the chosen one is then the best overall).
    """
    by_setting: dict[tuple[float, float], list[dict]] = {}
    for r in records:
        by_setting.setdefault((r["strength"], r["guidance"]), []).append(r)
    mean = lambda rows, key: float(np.mean([r[key] or 0.0 for r in rows]))
    summary = {
        setting: {
            "strength": setting[0], "guidance": setting[1], "validation_accuracy": mean(rows, "validation_accuracy"),
            "teacher_agreement": mean(rows, "teacher_agreement"), "cell_consistency": mean(rows, "cell_consistency"),
        }
        for setting, rows in by_setting.items()
    }
    best = lambda candidates: max(candidates, key=lambda c: c["validation_accuracy"])
    overall = best(summary.values())
    qualifying = [
        c for c in summary.values()
        if c["teacher_agreement"] >= min_teacher_agreement and c["cell_consistency"] >= min_cell_consistency
    ]
    chosen = best(qualifying) if qualifying else overall
    return {**chosen, "constrained": bool(qualifying), "best_overall": overall}


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
    describe = lambda c: (
        f"strength {c['strength']:g}, guidance {c['guidance']:g} (validation accuracy {100 * c['validation_accuracy']:.2f}%, "
        f"teacher agreement {100 * c['teacher_agreement']:.1f}%, cell consistency {100 * c['cell_consistency']:.1f}%; means over methods)"
    )
    rule = "best of the settings that keep class and cell" if chosen["constrained"] else "no setting keeps class and cell: best overall"
    return "\n".join(rows) + f"\n\nChosen ({rule}): {describe(chosen)}.\nBest overall: {describe(chosen['best_overall'])}.\n"
