import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from pqdjax.data import grouping, idx, sources
from conftest import write_idx_dataset


def _config(**overrides):
    config = ml_collections.ConfigDict(dict(
        name="fashion_mnist", source="auto", data_dir="", tfds_data_dir="", train_per_class=0, test_size=0,
    ))
    config.update(overrides)
    return config


def test_reads_idx_folder(tmp_path):
    train_x, train_y, test_x, test_y = write_idx_dataset(str(tmp_path), train_per_class=7, test_per_class=3)
    dataset = sources.load_dataset(_config(data_dir=str(tmp_path)))
    assert dataset.train_images.shape == (70, 28, 28, 1) and dataset.train_images.dtype == np.uint8
    np.testing.assert_array_equal(dataset.train_images[..., 0], train_x)
    np.testing.assert_array_equal(dataset.train_labels, train_y)
    np.testing.assert_array_equal(dataset.test_images[..., 0], test_x)
    np.testing.assert_array_equal(dataset.test_labels, test_y)
    assert dataset.num_classes == 10 and dataset.class_names[9] == "Ankle boot"
    assert dataset.source == f"idx:{tmp_path}"


def test_limits_per_class(tmp_path):
    write_idx_dataset(str(tmp_path), train_per_class=7, test_per_class=3)
    dataset = sources.load_dataset(_config(data_dir=str(tmp_path), train_per_class=4, test_size=11))
    assert np.bincount(dataset.train_labels).tolist() == [4] * 10
    assert len(dataset.test_labels) == 11


def test_environment_variable(tmp_path, monkeypatch):
    write_idx_dataset(str(tmp_path), train_per_class=2, test_per_class=1)
    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    assert sources.load_dataset(_config()).source == f"idx:{tmp_path}"


def test_fingerprints_cover_the_data_not_only_the_config(tmp_path, monkeypatch):
    """Other files behind the same config (here $PQDJAX_FASHION_MNIST_DIR's, rewritten in place) change every artifact's fingerprint."""
    from configs import default
    from pqdjax import artifacts, pipeline

    monkeypatch.setenv(sources.FASHION_MNIST_ENV, str(tmp_path / "data"))
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    config = default.get_config("runlocal")
    config.data.data_dir = ""
    store = artifacts.ArtifactStore(str(tmp_path / "run"))
    fingerprint = lambda: pipeline.Run(config=config, store=store).data_fingerprint
    (tmp_path / "data").mkdir()
    write_idx_dataset(str(tmp_path / "data"), train_per_class=3, test_per_class=1, seed=0)
    first = fingerprint()
    assert fingerprint() == first  # the same files: the same fingerprint
    write_idx_dataset(str(tmp_path / "data"), train_per_class=3, test_per_class=1, seed=1)
    assert fingerprint() != first
    write_idx_dataset(str(tmp_path / "data"), train_per_class=3, test_per_class=1, seed=0)
    assert fingerprint() == first


def test_explicit_folder_missing_files(tmp_path):
    with pytest.raises(sources.DatasetNotFoundError, match="t10k-images-idx3-ubyte|train-images-idx3-ubyte"):
        sources.load_dataset(_config(data_dir=str(tmp_path)))


def test_truncated_file_in_folder(tmp_path):
    write_idx_dataset(str(tmp_path), train_per_class=2, test_per_class=1)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(idx.IdxFormatError, match="train-labels"):
        sources.load_dataset(_config(data_dir=str(tmp_path)))


def test_missing_everywhere_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(sources.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))

    def offline(*args, **kwargs):  # what tfds does without a network
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(sources, "_read_tfds", offline)
    with pytest.raises(sources.DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        sources.load_dataset(_config())
    assert "ConnectionError" in str(info.value)


def test_tfds_data_source(tmp_path):
    with tfds.testing.mock_data(num_examples=12):
        dataset = sources.load_dataset(_config(source="tfds"))
    assert dataset.train_images.shape == (12, 28, 28, 1) and dataset.train_images.dtype == np.uint8
    assert dataset.test_labels.shape == (12,)
    assert dataset.class_names[0] == "T-shirt/top"


def test_class_indices_and_padding():
    labels = np.array([2, 0, 2, 1, 2])
    groups = grouping.class_indices(labels, 3)
    assert [g.tolist() for g in groups] == [[1], [3], [0, 2, 4]]
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    padded, mass = grouping.stack_padded([values[g] for g in groups])
    assert padded.shape == (3, 3, 2)
    np.testing.assert_array_equal(padded[2], values[[0, 2, 4]])
    np.testing.assert_array_equal(padded[0, 1:], 0)
    np.testing.assert_allclose(mass.sum(1), 1.0)
    np.testing.assert_allclose(mass[0], [1, 0, 0])


def test_empty_class_is_an_error():
    with pytest.raises(grouping.EmptyClassError, match=r"\[1\]"):
        grouping.class_indices(np.array([0, 2, 2]), 3)
