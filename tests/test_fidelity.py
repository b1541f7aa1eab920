"""The pushforward metrics of stages.fidelity, each against a small case computed by hand."""

import itertools
import os
import types

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from pqdjax import artifacts
from pqdjax.data.preprocess import to_model_range
from pqdjax.models import vae as vae_lib
from pqdjax.stages import fidelity
from pqdjax.stages.decode import SyntheticSet
from pqdjax.stages.encode import ClassFiles, Latents
from pqdjax.stages.prior import Prior
from pqdjax.stages.quantize import Quantized, class_name
from pqdjax.stages.teacher import Teacher
from pqdjax.train.student import MODEL_RANGE_UINT8


class FirstPixels(nn.Module):
    """A parameter-free 'teacher': the logits are the first C pixels of the image."""

    num_classes: int = 3

    def __call__(self, x, train: bool = False):  # called as every classifier is (pqdjax.models.classifiers)
        return x.reshape(len(x), -1)[:, : self.num_classes]


def _teacher(num_classes: int = 3) -> Teacher:
    return Teacher(model=FirstPixels(num_classes), variables={"params": {}}, test_accuracy=0.0, fingerprint="first pixels",
                   space=MODEL_RANGE_UINT8)


def test_teacher_agreement_counts_the_images_labelled_as_their_class():
    images = np.zeros((4, 2, 2, 1), np.uint8)
    # argmax of the first 3 pixels: 1, 0, 2, 2
    images[0, 0, 1] = 200
    images[1, 0, 0] = 200
    images[2, 1, 0] = 200
    images[3, 1, 0] = 90
    labels = np.array([1, 0, 0, 2])  # right, right, wrong, right
    assert fidelity.teacher_agreement(_teacher(), images, labels) == 0.75


def test_cell_consistency_by_hand():
    points = np.array([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])  # one class, K = 3
    reencoded = np.array([[[0.5, 0.1], [1.5, 0.0], [0.2, 3.0]]])  # nearest: 0, 0, 2
    assert fidelity.cell_consistency(reencoded, points) == 2 / 3
    two_classes = np.concatenate([points, points])
    both = np.concatenate([reencoded, np.array([[[3.9, 0.1], [4.0, 0.2], [0.0, 5.0]]])])  # second class: 1, 1, 2
    assert fidelity.cell_consistency(both, two_classes) == (2 + 2) / 6


def test_measure_against_brute_force_transport(tmp_path):
    """W2 of the re-encoded images (uniform weights, n = K = 3 per class: an assignment) by trying every permutation."""
    config = ml_collections.ConfigDict(dict(arch="conv", block_out_channels=(8,), layers_per_block=1, latent_channels=2, patch=2))
    vae = vae_lib.make_vae(config, 4, 1)
    params = vae_lib.init_params(vae, jax.random.key(0), 4)
    prior = Prior(vae, params, 1.3, "prior")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 4, 4, 1), dtype=np.uint8)  # [C, K, H, W, ch]
    data = rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    encode = lambda x: np.asarray(vae_lib.encode(vae, params, to_model_range(x), 1.3), np.float64).reshape(len(x), -1)
    data_labels = np.array([0, 1, 0, 1, 1, 0])
    files = ClassFiles(str(tmp_path / "latents"), 8, np.zeros(2, np.int64))  # the encode stage's per-class files
    files.append(encode(data).astype(np.float32), data_labels, np.arange(6))
    latents = Latents((files.folder,), files.counts[None], (2, 2, 2), 2, "latents")
    points = rng.normal(size=(2, 3, 8)).astype(np.float32)
    store = artifacts.ArtifactStore(str(tmp_path))
    for c, w2_d4m in enumerate((1.0, 2.0)):
        store.save_arrays(class_name(3, c), {"points": points[c], "w2_d4m": w2_d4m}, "quantized")
    quantized = Quantized(3, 2, store, "quantized")
    from pqdjax.data import image_folder

    image_folder.write_set(str(tmp_path / "set"), images, np.full((2, 3), 1 / 3, np.float32), ["a", "b"])
    synthetic = SyntheticSet("d4m", 3, str(tmp_path / "set" / image_folder.MANIFEST), "set")
    run = types.SimpleNamespace(config=ml_collections.ConfigDict(dict(
        quantize=dict(w2_exact_max_size=10_000_000, w2_relative_epsilon=3e-3, w2_max_iterations=1000),
        encode=dict(batch_size=4), decode=dict(method="diffusion"), data=dict(),
    )))
    teacher = _teacher(num_classes=2)
    record = fidelity.measure(run, prior, teacher, latents, quantized, synthetic)

    w2 = []
    consistent = 0
    for c in range(2):
        x = encode(data[data_labels == c])
        z = encode(images[c])
        cost = ((x[:, None] - z[None]) ** 2).sum(-1)
        w2.append(np.sqrt(min(np.mean(cost[np.arange(3), list(p)]) for p in itertools.permutations(range(3)))))
        d = ((z[:, None] - points[c][None].astype(np.float64)) ** 2).sum(-1)
        consistent += int(np.sum(np.argmin(d, axis=1) == np.arange(3)))
    np.testing.assert_allclose(record["w2_images"], np.mean(w2), rtol=1e-5)
    assert record["cell_consistency"] == consistent / 6
    assert record["w2_points"] == 1.5
    flat = images.reshape(6, 4, 4, 1)
    expected_agreement = np.mean(np.argmax(flat.reshape(6, -1)[:, :2], axis=1) == np.repeat([0, 1], 3))
    assert record["teacher_agreement"] == expected_agreement


def test_a_set_loads_class_major_whatever_the_order_of_its_manifest(tmp_path):
    """The PNGs and manifest of a set, rows in any order, load back as the images and weights written."""
    from pqdjax.data import image_folder
    from pqdjax.errors import InputError
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 2, 5, 5, 3), dtype=np.uint8)
    weights = rng.dirichlet(np.ones(2), size=3).astype(np.float32)
    folder = str(tmp_path / "set")
    image_folder.write_set(folder, images, weights, ["a", "b", "c"])
    manifest = os.path.join(folder, image_folder.MANIFEST)
    with open(manifest) as f:
        header, *rows = f.read().splitlines()
    shuffled = [rows[i] for i in (5, 0, 3, 2, 4, 1)]
    with open(manifest, "w") as f:
        f.write("\n".join([header] + shuffled) + "\n")
    loaded = SyntheticSet("ddoq", 2, manifest, "set").load()
    np.testing.assert_array_equal(loaded[0], images)
    np.testing.assert_allclose(loaded[1], weights, rtol=1e-7)
    np.testing.assert_array_equal(SyntheticSet("ddoq", 2, manifest, "set").load(first=2)[0], images[:2])

    with open(manifest, "w") as f:
        f.write("\n".join([header] + shuffled[:-1]) + "\n")  # one image of class 0 missing
    with pytest.raises(InputError, match="does not hold 2 images of each"):
        SyntheticSet("ddoq", 2, manifest, "set").load()
