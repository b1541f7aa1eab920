"""The weight ablation: how much of DDOQ's result is its weights, on a validation split.

    python -m pqdjax.main --config=configs/default.py:weighting --workdir=runs/weighting

D4M and DDOQ decode the same k-means points; they differ only in the weights
of the student's loss. The weighting option of a config sets
config.weighting_ablation.settings, a list of config.evaluate.weighting
values (pqdjax.train.weighting: power a, mix l, loss normalisation), and
evaluates on validation images held out from the training set
(config.data.evaluate_on = 'validation'). For every setting the ordinary
pipeline runs in the same workdir, so everything up to the synthetic sets is
computed once and only the students are redone; a student's initialisation
and batch order depend on (IPC, seed) only, so the students of one seed
under different weightings are paired, and power 0 is D4M's student exactly
(tests/test_pipeline.py). Written to the workdir:

    weighting.json  per setting and method: the per-seed validation accuracies,
                    their mean and sample std, and the paired difference
                    against the reference setting (power 1, mix 1: the
                    Voronoi masses as DDOQ defines them)
    weighting.md    the same as a table

As in the strength sweep (pqdjax.sweep), every setting writes the same
evaluate/ names: a rerun of an interrupted ablation redoes the settings after
the first, and weighting.json is its record.
"""

from __future__ import annotations

import copy

from absl import logging

from pqdjax import artifacts, pipeline, stats
from pqdjax.errors import ConfigError

REFERENCE = {"power": 1.0, "mix": 1.0, "normalize": "class"}


def _label(setting: dict) -> str:
    return f"a={setting['power']:g}, l={setting['mix']:g}, {setting['normalize']}"


def run(config, workdir: str) -> dict:
    """Runs every setting of config.weighting_ablation.settings; returns {'records', 'table'}."""
    if config.data.get("evaluate_on", "test") != "validation":
        raise ConfigError("the weight ablation compares settings on held-out training images: set config.data.evaluate_on='validation'.")
    settings = [{**REFERENCE, **dict(s)} for s in config.weighting_ablation.settings]
    if REFERENCE not in settings:
        raise ConfigError(f"config.weighting_ablation.settings must include the reference {REFERENCE}, to which the others are compared.")
    per_setting = []
    for setting in settings:
        point = copy.deepcopy(config)
        point.evaluate.weighting.update(setting)
        point.decode.figure_strengths = ()
        logging.info("weight ablation: %s", _label(setting))
        results = pipeline.run(point, workdir)
        per_setting.append((setting, results["evaluations"]))
    reference = next(evaluations for setting, evaluations in per_setting if setting == REFERENCE)
    records = []
    for setting, evaluations in per_setting:
        for method in config.methods:
            for ipc in sorted({e["ipc"] for e in evaluations}):
                mine = {e["seed"]: e["test_accuracy"] for e in evaluations if e["method"] == method and e["ipc"] == ipc}
                ref = {e["seed"]: e["test_accuracy"] for e in reference if e["method"] == method and e["ipc"] == ipc}
                seeds = sorted(set(mine) & set(ref))
                records.append({
                    **setting, "method": method, "ipc": ipc, "seeds": seeds,
                    "validation_accuracy": [mine[s] for s in seeds],
                    "mean": sum(mine[s] for s in seeds) / len(seeds), "std": stats.sample_std([mine[s] for s in seeds]),
                    "minus_reference": stats.paired_difference([mine[s] for s in seeds], [ref[s] for s in seeds]),
                })
    table = markdown(records)
    store = artifacts.ArtifactStore(workdir)
    artifacts.write_json(store.path("weighting.json"), {"reference": REFERENCE, "records": records})
    artifacts.write_text(store.path("weighting.md"), "# Weight ablation (validation split)\n\n" + table)
    return {"records": records, "table": table}


def markdown(records: list[dict]) -> str:
    rows = [
        "| weighting | method | IPC | validation accuracy (%) | minus reference (points) | 95% interval | p (paired t) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        d = r["minus_reference"]
        interval = "-" if d["low"] is None else f"[{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
        p = "-" if d["p"] is None else f"{d['p']:.3f}"
        rows.append(
            f"| {_label(r)} | {r['method']} | {r['ipc']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} "
            f"| {100 * d['mean']:+.2f} | {interval} | {p} | {len(r['seeds'])} |"
        )
    return (
        "\n".join(rows)
        + f"\n\nReference: {_label(REFERENCE)} (the Voronoi masses). a = 0 is D4M (uniform weights); ± is the sample std "
        "over seeds; the differences are paired by seed.\n"
    )
