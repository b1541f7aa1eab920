"""The streamed pipeline beyond ImageNet-1K: ImageNette and CIFAR-10 (tfds mock data), ImageWoof (an image folder the
test writes), and the parts that make a subset of ImageNet's classes work (class names, prompts, DiT labels, the teacher's logits)."""

import csv
import json
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

from configs import cifar10, imagenette, imagewoof  # noqa: E402
from pqdjax import pipeline  # noqa: E402
from pqdjax.data import imagenet, streamed  # noqa: E402
from pqdjax.errors import ConfigError, DatasetFormatError, DatasetNotFoundError  # noqa: E402
from pqdjax.models.classifiers import ClassSubset, FromNormalizedInput, make_classifier  # noqa: E402
from pqdjax.train.classifier import accuracy  # noqa: E402
from pqdjax.stages import decode, teacher  # noqa: E402

# Five of ImageWoof's breeds (synset, ImageNet name), in sorted synset order, read from the
# class list independently of the code under test.
WOOF = ("n02086240", "n02087394", "n02088364", "n02089973", "n02093754")


def _imagenet_table():
    """{synset: (index, first name)} from imagenet_classes.txt, read here without pqdjax."""
    path = os.path.join(os.path.dirname(imagenet.__file__), "imagenet_classes.txt")
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return {synset: (i, names.split(",")[0].strip()) for i, (synset, names) in enumerate(rows)}


def _write_folder(root, synsets, per_split=(12, 4), size=(40, 48)):
    """DIR/train/SYNSET/*.jpg|png and DIR/val/SYNSET/*: class c is a disc of its own colour on noise, varied sizes."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), per_split):
        for c, synset in enumerate(synsets):
            folder = os.path.join(root, split, synset)
            os.makedirs(folder)
            for i in range(count):
                h, w = size[0] + 3 * (i % 3), size[1] - 2 * (i % 4)
                yy, xx = np.mgrid[:h, :w]
                disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
                image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
                image[disc] = (np.array([50 * c, 255 - 40 * c, 120 + 25 * c]) % 256).astype(np.uint8)
                Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.{'png' if i % 2 else 'jpg'}"), quality=95)


def _manifest(workdir, method, ipc):
    with open(os.path.join(workdir, f"synthetic/ipc{ipc}/manifest_{method}.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def woof_run(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("imagewoof2"))
    _write_folder(root, WOOF)
    config = imagewoof.get_config("runlocal")
    config.data.dir = root
    workdir = str(tmp_path_factory.mktemp("woof") / "run")
    results = pipeline.run(config, workdir)
    return dict(root=root, config=config, workdir=workdir, results=results)


def test_imagewoof_folder_runs_end_to_end_on_its_synset_classes(woof_run):
    config, workdir, root = woof_run["config"], woof_run["workdir"], woof_run["root"]
    (ipc,), num_classes = config.ipcs, config.data.num_classes
    assert config.prior.kind == "dit" and config.data.name == "imagefolder"
    table = _imagenet_table()
    expected_names = [table[s][1] for s in WOOF[:num_classes]]  # the first C sorted folders, by their ImageNet names
    rows = _manifest(workdir, "ddoq", ipc)
    assert [r["class"] for r in rows] == [n for n in expected_names for _ in range(ipc)]
    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    # every training image of the first C classes was encoded, in its class
    assert stored["latents"]["per_class"] == [len(os.listdir(os.path.join(root, "train", s))) for s in WOOF[:num_classes]]
    assert sorted(stored["accuracy"]) == sorted(config.methods)
    # The random baseline's images are training images of their own class: each PNG equals one file of
    # that class's folder, resized and center-cropped (decode.image_size), and no other class's.
    size = config.decode.image_size
    for r in _manifest(workdir, "random", ipc):
        png = np.asarray(Image.open(os.path.join(workdir, f"synthetic/ipc{ipc}", r["file"])))
        matches = [s for s in WOOF for f in sorted(os.listdir(os.path.join(root, "train", s)))
                   if np.array_equal(png, imagenet.resize_and_center_crop(
                       np.asarray(Image.open(os.path.join(root, "train", s, f)).convert("RGB")), size, size))]
        assert matches == [WOOF[int(r["label"])]]


def test_imagenette_on_mock_data_prompts_and_labels_are_imagenet_classes(tmp_path):
    config = imagenette.get_config("runlocal,prior=stable_diffusion")
    assert config.data.name == "imagenette/full-size-v2" and config.data.mock_examples > 0
    workdir = str(tmp_path / "run")
    pipeline.run(config, workdir)
    # ImageNette's first four classes in tfds's label order, named independently of the code
    table = _imagenet_table()
    synsets = ("n01440764", "n02102040", "n02979186", "n03000684")
    rows = _manifest(workdir, "d4m", config.ipcs[0])
    assert sorted({(int(r["label"]), r["class"]) for r in rows}) == [(c, table[s][1]) for c, s in enumerate(synsets)]
    classes = streamed.dataset_classes(config.data)
    np.testing.assert_array_equal(classes.imagenet_indices, [table[s][0] for s in synsets])


def test_class_subset_reads_the_classifiers_logits_at_the_classes():
    model = make_classifier(ml_collections.ConfigDict(dict(arch="resnet10", width=4)), 1000)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    images = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    subset = ClassSubset(model, (217, 0, 999))
    full = np.asarray(model.apply(variables, images, train=False))
    np.testing.assert_allclose(np.asarray(subset.apply(variables, images)), full[:, [217, 0, 999]], rtol=1e-6)


def test_dit_condition_is_the_imagenet_index_and_other_classes_are_refused():
    table = _imagenet_table()
    classes = streamed.Classes(WOOF[:2], ("a", "b"), np.asarray([table[s][0] for s in WOOF[:2]]))
    streamed_run = lambda classes: types.SimpleNamespace(kind="streamed", classes=classes)
    np.testing.assert_array_equal(decode._condition_labels(streamed_run(classes), np.array([1, 0, 1])),
                                  [table[WOOF[1]][0], table[WOOF[0]][0], table[WOOF[1]][0]])
    plain = streamed.Classes(("cat", "dog"), ("cat", "dog"), None)
    np.testing.assert_array_equal(decode._condition_labels(streamed_run(plain), np.array([1, 0])), [1, 0])
    with pytest.raises(ConfigError, match="not ImageNet synsets"):
        teacher.teacher_classes(plain, "mypets")


def test_folder_errors_name_the_problem(tmp_path):
    data = imagewoof.get_config("runlocal").data
    data.dir = str(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="train"):
        streamed.dataset_classes(data)
    _write_folder(str(tmp_path), WOOF[:3], per_split=(2, 1))
    os.rename(os.path.join(tmp_path, "val", WOOF[2]), os.path.join(tmp_path, "val", "n02099601"))
    with pytest.raises(DatasetFormatError, match="different classes"):
        streamed.dataset_classes(data)
    data.dir = ""
    with pytest.raises(ConfigError, match="config.data.dir"):
        streamed.open_configured_split(data, "train")


def test_cifar10_trains_its_teacher_and_runs_end_to_end(tmp_path):
    import tensorflow_datasets as tfds

    config = cifar10.get_config("runlocal")
    assert config.teacher.kind == "trained" and config.evaluate.model.stem == "cifar"
    workdir = str(tmp_path / "run")
    pipeline.run(config, workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        stored = json.load(f)
    # The teacher's stored accuracy, measured through FromNormalizedInput on sharded batches, equals the trained
    # ConvNet's accuracy on the test images read here straight from tfds's mock records ([-1, 1] input, no adapter).
    with tfds.testing.mock_data(num_examples=config.data.mock_examples):
        records = [tfds.data_source("cifar10", split="test", download=False)[i] for i in range(config.data.mock_examples)]
    images = np.stack([r["image"] for r in records])
    labels = np.asarray([int(r["label"]) % config.data.num_classes for r in records])
    convnet = make_classifier(config.teacher.model, config.data.num_classes)
    target = jax.eval_shape(lambda: convnet.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"])
    from pqdjax import artifacts

    params = artifacts.ArtifactStore(workdir).load_params("teacher/params", target)
    assert stored["teacher_test_accuracy"] == pytest.approx(accuracy(convnet, {"params": params}, images, labels), abs=1e-9)
    rows = _manifest(workdir, "ddoq", config.ipcs[0])
    assert all(Image.open(os.path.join(workdir, f"synthetic/ipc{config.ipcs[0]}", r["file"])).size == (32, 32) for r in rows)


def test_from_normalized_input_undoes_torchvision_normalisation():
    convnet = make_classifier(ml_collections.ConfigDict(dict(arch="convnet", width=8, depth=2, norm="instance")), 3)
    params = convnet.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))  # images in [0, 1]
    wrapped = FromNormalizedInput(convnet, imagenet.MEAN, imagenet.STD)
    normalized = (x - jnp.asarray(imagenet.MEAN)) / jnp.asarray(imagenet.STD)
    np.testing.assert_allclose(np.asarray(wrapped.apply(params, normalized, train=False)),
                               np.asarray(convnet.apply(params, 2 * x - 1)), rtol=1e-4, atol=1e-5)


def test_resnet_cifar_stem_keeps_the_resolution():
    """torchvision's stem divides 32 px by 4 before layer1 (final maps 1 x 1); the CIFAR stem by 1 (final maps 4 x 4)."""
    x = jnp.zeros((1, 32, 32, 3))
    for stem, final in (("imagenet", 1), ("cifar", 4)):
        model = make_classifier(ml_collections.ConfigDict(dict(arch="resnet18", width=4, stem=stem)), 10)
        variables = model.init(jax.random.key(0), x)
        _, state = model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "layer4_1", mutable=["intermediates"])
        (features,) = state["intermediates"]["layer4_1"]["__call__"]
        assert features.shape == (1, final, final, 32)
        assert variables["params"]["conv1"]["kernel"].shape == ((7, 7, 3, 4) if stem == "imagenet" else (3, 3, 3, 4))


def test_dit_on_classes_that_are_not_imagenet_classes_stops_at_the_first_stage(tmp_path):
    config = cifar10.get_config("runlocal")
    config.prior.kind = "dit"
    with pytest.raises(ConfigError, match="conditioned on ImageNet-1K classes"):
        pipeline.run(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "teacher")  # nothing after the prior stage ran
