"""Bad input: each gives one clear line naming the problem and the fix, and leaves nothing half-written.

Missing datasets, truncated IDX files, IPC larger than a class, empty classes,
NaN losses and unwritable workdirs are tested next to their code
(test_sources.py, test_idx.py, test_pipeline.py, test_train.py, test_artifacts.py,
test_resume.py for checkpoints); this file holds the rest and the command-line path.
"""

import errno
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import write_idx_dataset
from pqdjax import artifacts
from pqdjax.data import idx, sources
from pqdjax.models import vae as vae_lib
from pqdjax.stages import encode
from pqdjax.stages.prior import Prior

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _data_config(data_dir):
    return ml_collections.ConfigDict(dict(name="fashion_mnist", source="idx", data_dir=str(data_dir), tfds_data_dir="", train_per_class=0, test_size=0))


# -- disk full ----------------------------------------------------------------------


def test_disk_full_while_writing_arrays(tmp_path, monkeypatch):
    store = artifacts.ArtifactStore(str(tmp_path))
    monkeypatch.setattr(np, "savez", _disk_full)
    with pytest.raises(artifacts.ArtifactError, match="disk is full.*free space"):
        store.save_arrays("quantize/ipc10.npz", {"x": np.arange(3)}, "fp")
    assert os.listdir(tmp_path / "quantize") == []  # no artifact, no marker, no temporary


def test_disk_full_while_writing_a_marker(tmp_path, monkeypatch):
    store = artifacts.ArtifactStore(str(tmp_path))
    real_dump = artifacts.json.dump

    def dump(obj, f, **kwargs):
        if "fingerprint" in obj:  # the marker, written after the artifact
            _disk_full()
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(artifacts.json, "dump", dump)
    with pytest.raises(artifacts.ArtifactError, match="disk is full"):
        store.save_arrays("a.npz", {"x": np.arange(3)}, "fp")
    assert not store.is_complete("a.npz", "fp")
    assert sorted(os.listdir(tmp_path)) == ["a.npz"]  # unmarked: a rerun redoes it


def test_disk_full_while_writing_a_checkpoint(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    store = artifacts.ArtifactStore(str(tmp_path))

    def save(self, *args, **kwargs):  # orbax wraps the OSError of its writer threads
        try:
            _disk_full()
        except OSError as e:
            raise ValueError("write failed") from e

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", save)
    with pytest.raises(artifacts.ArtifactError, match="disk is full.*--workdir"):
        store.save_params("teacher/params", {"w": jnp.ones(3)}, "fp")
    assert os.listdir(tmp_path / "teacher") == []


# -- images of the wrong shape --------------------------------------------------------


def test_train_and_test_images_of_different_sizes(tmp_path):
    write_idx_dataset(str(tmp_path), train_per_class=2, test_per_class=1)
    idx.write_idx(str(tmp_path / "t10k-images-idx3-ubyte.gz"), np.zeros((10, 32, 32), np.uint8))
    with pytest.raises(sources.DatasetFormatError, match=r"\(28, 28, 1\) but test images are \(32, 32, 1\).*same image shape"):
        sources.load_dataset(_data_config(tmp_path))


def test_images_with_an_unusable_channel_count():
    images = np.zeros((4, 8, 8, 2), np.uint8)
    dataset = sources.ImageDataset(images, np.zeros(4, np.int32), images, np.zeros(4, np.int32), ("a", "b"), "test")
    with pytest.raises(sources.DatasetFormatError, match="2 channels; pqdjax takes 1 .* or 3"):
        sources.check_images(dataset)


def test_labels_outside_the_classes(tmp_path):
    write_idx_dataset(str(tmp_path), train_per_class=2, test_per_class=1)
    idx.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.full(10, 12, np.uint8))
    with pytest.raises(sources.DatasetFormatError, match="test labels span 12..12.*check the label file"):
        sources.load_dataset(_data_config(tmp_path))


def test_images_of_the_wrong_rank(tmp_path):
    write_idx_dataset(str(tmp_path), train_per_class=2, test_per_class=1)
    idx.write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.zeros((20, 28 * 28), np.uint8))
    with pytest.raises(idx.IdxFormatError, match=r"expected \[N, H, W\] images"):
        sources.load_dataset(_data_config(tmp_path))


def test_image_size_the_vae_cannot_downsample():
    config = ml_collections.ConfigDict(dict(block_out_channels=(8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4))
    with pytest.raises(ValueError, match="not divisible.*block_out_channels"):
        vae_lib.make_vae(config, 30, 1)


# -- NaN latents -------------------------------------------------------------------


def test_nan_latents_stop_the_encode_stage(tmp_path):
    """The encode stage (in-memory images) and the re-encoding of fidelity stop at NaN latents with one line, and
    nothing is marked complete."""
    import types

    config = ml_collections.ConfigDict(dict(block_out_channels=(4, 4), layers_per_block=1, latent_channels=2, norm_num_groups=2))
    vae = vae_lib.make_vae(config, 8, 1)
    params = vae_lib.init_params(vae, jax.random.key(0), 8)
    params = jax.tree.map(lambda p: p.at[...].set(jnp.nan) if p.ndim == 4 else p, params)  # NaN conv kernels
    prior = Prior(vae, params, 1.0, "fp")
    images = np.zeros((6, 8, 8, 1), np.uint8)
    run = types.SimpleNamespace(
        kind="in_memory", config=ml_collections.ConfigDict(dict(encode=dict(batch_size=4))), store=artifacts.ArtifactStore(str(tmp_path)),
        dataset=types.SimpleNamespace(train_images=images, train_labels=np.array([0, 1, 0, 1, 0, 1]), num_classes=2))
    with pytest.raises(FloatingPointError, match=r"^encode: .*NaN or inf latents for 4 images of batch 0 \(first: training image 0\); retrain the prior"):
        encode.encode_process_part(run, prior, "encode/latents/process0", "fp")
    assert run.store.info("encode/latents/process0") is None
    with pytest.raises(FloatingPointError, match=r"^encode: .*NaN or inf latents for 6 of 6 images \(first: image 0, in batch 0\); retrain the prior"):
        prior.reencode(images, run.config)


# -- the command line ----------------------------------------------------------------


def _main(*args):
    return subprocess.run(
        [sys.executable, "-m", "pqdjax.main", *args], cwd=REPO, capture_output=True, text=True,
    )


@pytest.mark.parametrize("override, field, hint", [
    ("--config.fooo=1", "'fooo'", ""),
    ("--config.prior.trian.steps=3", "'trian'", 'Did you mean "train"'),
])
def test_mistyped_config_field_on_the_command_line(tmp_path, override, field, hint):
    result = _main("--config=configs/default.py:runlocal", f"--workdir={tmp_path / 'run'}", override)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"the config has no field {field}" in lines[0] and hint in lines[0] and override.split("=")[0] in lines[0]
    assert not os.path.exists(tmp_path / "run")


def test_an_input_error_is_one_line_and_writes_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _main("--config=configs/default.py:runlocal", f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={empty}")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("pqdjax: error: ") and "train-images-idx3-ubyte" in last
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path / "run") == ["config.json"]  # the config, and no artifact


def test_an_unknown_config_option_is_one_line(tmp_path):
    result = _main("--config=configs/default.py:runlocal,bogus", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines() if "Flax classes are deprecated" not in line]
    assert lines == ["pqdjax: error: unknown option(s) ['bogus'] for configs/default.py; known: table, runlocal, pretrain, sweep, weighting, protocol, cross_arch."]


def test_a_bug_keeps_its_traceback(tmp_path):
    """Only the project's input errors are one line: a ValueError from a bug in a stage shows where it came from."""
    script = (
        "import sys\n"
        "from absl import app\n"
        "from pqdjax import main, pipeline\n"
        "def buggy(config, workdir):\n"
        "    raise ValueError('a bug, not bad input')\n"
        "pipeline.run = buggy\n"
        f"sys.argv = ['pqdjax', '--config=configs/default.py:runlocal', '--workdir={tmp_path / 'run'}']\n"
        "app.run(main.main, flags_parser=main.parse_flags)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "in buggy" in result.stderr and "ValueError: a bug, not bad input" in result.stderr
    assert "pqdjax: error" not in result.stderr
