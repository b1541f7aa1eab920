"""The shipped Fashion-MNIST components: hashes, loading, the teacher's accuracy, and bad files refused."""

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from pqdjax import pretrained
from pqdjax.models import vae as vae_lib
from pqdjax.models.classifiers import make_classifier
from pqdjax.models.denoiser import make_denoiser

CONFIG = default.get_config()
FOLDER = pretrained.resolve(os.path.dirname(CONFIG.prior.weights))
MANIFEST = json.load(open(os.path.join(FOLDER, pretrained.MANIFEST)))


def _targets(config=CONFIG):
    vae = vae_lib.make_vae(config.prior.vae, 28, 1)
    teacher = make_classifier(config.teacher.model, 10)
    denoiser = make_denoiser(config.denoiser.model, vae_lib.latent_shape(vae, 28), 10)
    return {
        "vae": jax.eval_shape(lambda: vae_lib.init_params(vae, jax.random.key(0), 28)),
        "teacher": jax.eval_shape(lambda: teacher.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]),
        "denoiser": jax.eval_shape(denoiser.init_params, jax.random.key(0)),
    }


def test_the_manifest_lists_the_default_configs_files_with_their_hashes():
    files = {entry["file"]: entry for entry in MANIFEST["components"].values()}
    assert set(files) == {os.path.basename(CONFIG[s].weights) for s in ("prior", "teacher", "denoiser")}
    total = 0
    for name, entry in files.items():
        data = open(os.path.join(FOLDER, name), "rb").read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        assert len(data) == entry["bytes"]
        total += len(data)
        assert entry["train_seconds"] > 0 and entry["quality"]
    assert total < 30 * 2**20
    assert MANIFEST["retrain_command"] == pretrained.RETRAIN_COMMAND
    # what the manifest says each was trained with is what the pretrain option trains
    pretrain = default.get_config("pretrain")
    for name, section, model in (("vae", "prior", "vae"), ("teacher", "teacher", "model"), ("denoiser", "denoiser", "model")):
        entry = MANIFEST["components"][name]
        assert entry["model_config"] == json.loads(json.dumps(pretrain[section][model].to_dict(), default=list))
        assert entry["train_config"] == json.loads(json.dumps(pretrain[section].train.to_dict(), default=list))


def test_the_shipped_files_load_into_the_default_architectures():
    targets = _targets()
    for name, section, model in (("vae", "prior", "vae"), ("teacher", "teacher", "model"), ("denoiser", "denoiser", "model")):
        params, entry = pretrained.load_params(CONFIG[section].weights, targets[name], CONFIG[section][model])
        assert jax.tree.structure(params) == jax.tree.structure(targets[name])
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_the_shipped_teacher_reaches_its_manifest_accuracy():
    from pqdjax.data.sources import load_dataset
    from pqdjax.train.classifier import accuracy

    dataset = load_dataset(CONFIG.data)
    model = make_classifier(CONFIG.teacher.model, dataset.num_classes)
    params, entry = pretrained.load_params(CONFIG.teacher.weights, _targets()["teacher"], CONFIG.teacher.model)
    measured = accuracy(model, {"params": params}, dataset.test_images, dataset.test_labels)
    assert measured == pytest.approx(entry["quality"]["test_accuracy"], abs=2e-4)
    assert measured >= 0.93  # the target of a ConvNet-3 teacher on Fashion-MNIST (README: 93.04%)


@pytest.fixture
def copied(tmp_path):
    folder = tmp_path / "shipped"
    shutil.copytree(FOLDER, folder)
    return folder


def test_a_corrupt_file_is_named_with_the_retrain_command(copied):
    path = copied / "teacher.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError) as error:
        pretrained.load_params(str(path), _targets()["teacher"], CONFIG.teacher.model)
    message = str(error.value)
    assert "teacher.safetensors" in message and "sha256" in message and pretrained.RETRAIN_COMMAND in message
    assert "\n" not in message


def test_a_missing_file_and_a_changed_architecture_are_refused(copied):
    (copied / "vae.safetensors").unlink()
    with pytest.raises(pretrained.PretrainedError, match=r"vae.safetensors: no such file.*configs/default.py:pretrain"):
        pretrained.load_params(str(copied / "vae.safetensors"), _targets()["vae"], CONFIG.prior.vae)
    wider = CONFIG.teacher.model.copy_and_resolve_references()
    wider.width = 2 * wider.width
    with pytest.raises(pretrained.PretrainedError, match="trained with model config"):
        pretrained.load_params(str(copied / "teacher.safetensors"), _targets()["teacher"], wider)


def test_a_misshapen_tensor_is_named(tmp_path):
    params = {"dense": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    path = str(tmp_path / "tiny.safetensors")
    pretrained.save_params(path, params)
    pretrained.write_manifest(str(tmp_path), {"tiny": {"file": "tiny.safetensors", "model_config": {}}})
    loaded, entry = pretrained.load_params(path, params)
    np.testing.assert_array_equal(loaded["dense"]["kernel"], params["dense"]["kernel"])
    assert entry["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    target = {"dense": {"kernel": jax.ShapeDtypeStruct((4, 2), jnp.float32), "bias": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    with pytest.raises(pretrained.PretrainedError, match=r"tensor 'dense/kernel' has shape \(3, 2\), the model needs \(4, 2\)"):
        pretrained.load_params(path, target)
    target = {"dense": {**jax.eval_shape(lambda: params)["dense"], "scale": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    with pytest.raises(pretrained.PretrainedError, match="tensor 'dense/scale' is missing"):
        pretrained.load_params(path, target)
