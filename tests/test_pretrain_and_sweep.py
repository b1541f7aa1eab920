"""The pretrain option (train, measure and ship the components), the validation sweep and the weight ablation, on the runlocal config."""

import json
import os

import numpy as np
import pytest

from configs import default
from pqdjax import pipeline, pretrained, sweep, weighting_ablation
from pqdjax.data.sources import hold_out_validation, load_dataset


def test_pretrain_ships_what_a_run_then_loads(idx_dataset_dir, tmp_path, monkeypatch):
    config = default.get_config("runlocal,pretrain")
    config.data.data_dir = idx_dataset_dir
    config.export_pretrained = str(tmp_path / "shipped")
    out = pipeline.run(config, str(tmp_path / "pretrain"))
    manifest = json.load(open(tmp_path / "shipped" / pretrained.MANIFEST))
    assert set(manifest["components"]) == {"vae", "teacher", "denoiser"}
    quality = json.loads(out["table"])
    assert 0 <= quality["denoiser"]["teacher_agreement"] <= 1 and quality["vae"]["test_psnr_db"] > 0
    assert os.path.exists(tmp_path / "shipped" / "samples.png")
    assert not os.path.exists(tmp_path / "pretrain" / "quantize")  # no distillation in a pretrain run

    # a run pointed at the shipped files trains none of the three
    from pqdjax.stages import denoiser, prior, teacher

    def forbidden(*args, **kwargs):
        raise AssertionError("a shipped component was trained again")

    for module, name in ((prior, "train_vae"), (teacher, "train_classifier"), (denoiser, "train_denoiser")):
        monkeypatch.setattr(module, name, forbidden)
    run_config = default.get_config("runlocal")
    run_config.data.data_dir = idx_dataset_dir
    for section, file in (("prior", "vae"), ("teacher", "teacher"), ("denoiser", "denoiser")):
        run_config[section].weights = str(tmp_path / "shipped" / f"{file}.safetensors")
    results = pipeline.run(run_config, str(tmp_path / "run"))
    assert results["teacher_test_accuracy"] == pytest.approx(manifest["components"]["teacher"]["quality"]["test_accuracy"], abs=1e-6)
    monkeypatch.undo()

    # the teacher retrained alone: the VAE and denoiser files and their training records are kept
    shipped = tmp_path / "shipped"
    before = {name: (shipped / f"{name}.safetensors").read_bytes() for name in ("vae", "teacher", "denoiser")}
    config.teacher.train.steps += 2
    config.prior.weights = str(shipped / "vae.safetensors")
    config.denoiser.weights = str(shipped / "denoiser.safetensors")
    pipeline.run(config, str(tmp_path / "pretrain_teacher"))
    after = json.load(open(shipped / pretrained.MANIFEST))["components"]
    for name in ("vae", "denoiser"):
        assert (shipped / f"{name}.safetensors").read_bytes() == before[name]
        kept = {k: v for k, v in manifest["components"][name].items() if k != "quality"}
        assert {k: v for k, v in after[name].items() if k != "quality"} == kept
    assert (shipped / "teacher.safetensors").read_bytes() != before["teacher"]
    assert after["teacher"]["train_config"]["steps"] == config.teacher.train.steps
    assert after["teacher"]["sha256"] == pretrained.sha256_of(str(shipped / "teacher.safetensors"))

    # kept components come from the folder being written, and a kept denoiser needs the kept VAE
    from pqdjax.config_checks import ConfigError, validate_config

    config.prior.weights = str(tmp_path / "elsewhere" / "vae.safetensors")
    with pytest.raises(ConfigError, match="is not in config.export_pretrained"):
        validate_config(config)
    config.prior.weights = ""
    with pytest.raises(ConfigError, match="keeps the shipped denoiser"):
        validate_config(config)


def test_the_validation_split_is_held_out_training_images(idx_dataset_dir):
    config = default.get_config("runlocal")
    config.data.data_dir = idx_dataset_dir
    full = load_dataset(config.data)
    config.data.evaluate_on = "validation"
    held = load_dataset(config.data)
    assert len(held.test_labels) == 10 * config.data.validation_per_class
    assert len(held.train_labels) + len(held.test_labels) == len(full.train_labels)
    assert (full.evaluation_split, held.evaluation_split) == ("Test", "Validation")  # how logs and results.md name it
    # the evaluation images are training images no longer in the training split, and no test image is used
    train_rows = {row.tobytes() for row in held.train_images}
    assert not any(row.tobytes() in train_rows for row in held.test_images)
    all_train = {row.tobytes() for row in full.train_images}
    assert all(row.tobytes() in all_train for row in held.test_images)
    with pytest.raises(ValueError, match="validation_per_class must be in"):
        hold_out_validation(full, 30)


def test_sweep_picks_the_best_validation_setting(idx_dataset_dir, tmp_path):
    config = default.get_config("runlocal,sweep")
    config.data.data_dir = idx_dataset_dir
    out = sweep.run(config, str(tmp_path))
    records = out["records"]
    assert {(r["strength"], r["guidance"]) for r in records} == {(0.5, 3.0), (1.0, 3.0)}
    settings = {(r["strength"], r["guidance"]) for r in records}
    mean = lambda s, key: np.mean([r[key] or 0.0 for r in records if (r["strength"], r["guidance"]) == s])
    keeps = [s for s in settings if mean(s, "teacher_agreement") >= 0.9 and mean(s, "cell_consistency") >= 0.5]
    best = max(keeps or settings, key=lambda s: mean(s, "validation_accuracy"))
    assert (out["chosen"]["strength"], out["chosen"]["guidance"]) == best
    assert out["chosen"]["constrained"] == bool(keeps)
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert os.path.exists(tmp_path / name)


def _record(strength, accuracy, agreement, consistency, method="d4m"):
    return {"strength": strength, "guidance": 4.0, "method": method, "validation_accuracy": accuracy,
            "teacher_agreement": agreement, "cell_consistency": consistency}


def test_sweep_choice_keeps_class_and_cell():
    records = [
        _record(0.5, 0.70, 0.95, 0.90), _record(0.5, 0.72, 0.95, 0.80, "ddoq"),  # qualifies, mean accuracy 0.71
        _record(0.7, 0.74, 0.95, 0.45), _record(0.7, 0.74, 0.95, 0.45, "ddoq"),  # best overall, loses the cell
        _record(0.6, 0.73, 0.85, 0.60), _record(0.6, 0.73, 0.85, 0.60, "ddoq"),  # loses the class
    ]
    chosen = sweep.choose(records, min_teacher_agreement=0.9, min_cell_consistency=0.5)
    assert (chosen["strength"], chosen["constrained"]) == (0.5, True)
    assert chosen["validation_accuracy"] == pytest.approx(0.71) and chosen["cell_consistency"] == pytest.approx(0.85)
    assert chosen["best_overall"]["strength"] == 0.7
    assert sweep.choose(records)["strength"] == 0.7  # no minima: the best overall
    fallback = sweep.choose(records, min_teacher_agreement=0.99)
    assert (fallback["strength"], fallback["constrained"]) == (0.7, False)
    # a set without a cell consistency (no points) never qualifies on it
    assert not sweep.choose([_record(0.5, 0.7, 0.95, None)], min_cell_consistency=0.5)["constrained"]


def test_weight_ablation_pairs_students_and_power_zero_is_d4m(idx_dataset_dir, tmp_path):
    config = default.get_config("runlocal,weighting")
    config.data.data_dir = idx_dataset_dir
    config.methods = ("ddoq", "d4m")
    out = weighting_ablation.run(config, str(tmp_path))
    by = {(r["power"], r["normalize"], r["method"]): r for r in out["records"]}
    assert set(by) == {(p, n, m) for p, n in ((1.0, "class"), (0.0, "class"), (1.0, "batch")) for m in ("ddoq", "d4m")}
    # power 0 makes ddoq's weights uniform: its students are d4m's, seed by seed
    assert by[0.0, "class", "ddoq"]["validation_accuracy"] == by[1.0, "class", "d4m"]["validation_accuracy"]
    # uniform weights are a fixed point of every transform and normalisation: d4m never changes
    for setting in ((0.0, "class"), (1.0, "batch")):
        assert by[setting + ("d4m",)]["validation_accuracy"] == by[1.0, "class", "d4m"]["validation_accuracy"]
    reference = by[1.0, "class", "ddoq"]
    assert reference["minus_reference"]["mean"] == 0.0 and reference["seeds"] == [0, 1]
    other = by[0.0, "class", "ddoq"]
    expected = np.mean(np.subtract(other["validation_accuracy"], reference["validation_accuracy"]))
    assert other["minus_reference"]["mean"] == pytest.approx(expected)
    stored = json.load(open(tmp_path / "weighting.json"))
    assert len(stored["records"]) == 6 and os.path.exists(tmp_path / "weighting.md")
