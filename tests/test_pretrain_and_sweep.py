"""The pretrain option (train, measure and ship the components) and the validation sweep, on the runlocal config."""

import json
import os

import numpy as np
import pytest

from configs import default
from pqdjax import pipeline, pretrained, sweep
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


def test_the_validation_split_is_held_out_training_images(idx_dataset_dir):
    config = default.get_config("runlocal")
    config.data.data_dir = idx_dataset_dir
    full = load_dataset(config.data)
    config.data.evaluate_on = "validation"
    held = load_dataset(config.data)
    assert len(held.test_labels) == 10 * config.data.validation_per_class
    assert len(held.train_labels) + len(held.test_labels) == len(full.train_labels)
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
    best = max({(r["strength"], r["guidance"]) for r in records},
               key=lambda s: np.mean([r["validation_accuracy"] for r in records if (r["strength"], r["guidance"]) == s]))
    assert (out["chosen"]["strength"], out["chosen"]["guidance"]) == best
    for name in ("sweep.json", "sweep.md", "sweep.png"):
        assert os.path.exists(tmp_path / name)
