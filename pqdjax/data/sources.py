"""In-memory image-classification datasets: local IDX files, or tfds.

`load_dataset(config.data)` returns an `ImageDataset` of uint8 arrays. For
Fashion-MNIST it looks, in order, in `config.data.data_dir`, in the folder
named by the environment variable PQDJAX_FASHION_MNIST_DIR, in the Debian
package's folder (/usr/share/datasets/fashion-mnist), and last asks tfds
(`tfds.data_source`, which downloads where a network is there). Missing
everywhere, it raises one `DatasetNotFoundError` that says how to get it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import ml_collections
import numpy as np

from pqdjax.data import idx, image_folder
from pqdjax.errors import ConfigError, DatasetFormatError, DatasetNotFoundError  # re-exported

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_ENV = "PQDJAX_FASHION_MNIST_DIR"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset held in host memory.

    Attributes:
      train_images: uint8 [N, H, W, C].
      train_labels: int32 [N], in [0, num_classes).
      test_images: uint8 [M, H, W, C].
      test_labels: int32 [M].
      class_names: one name per class.
      source: where the arrays were read from, for the log and results.json.
      evaluation_split: what test_* hold, as reports name it: 'Test', or 'Validation'
        (held-out training images: hold_out_validation).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    source: str
    evaluation_split: str = "Test"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @functools.cached_property
    def content_digest(self) -> str:
        """sha256 of the arrays (shapes, dtypes, bytes) and class names: what the data is, not where it was read.

        Part of every artifact's fingerprint (pqdjax.pipeline.Run.data_fingerprint),
        so that other files behind the same config (another folder in
        $PQDJAX_FASHION_MNIST_DIR, tfds instead of the IDX files, a file
        replaced in place) redo the work. Hashing Fashion-MNIST's 55 MB takes
        about 0.1 s.
        """
        digest = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(memoryview(array).cast("B"))
        digest.update("\n".join(self.class_names).encode())
        return digest.hexdigest()


def _find_idx_file(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _read_idx_folder(folder: str, class_names: tuple[str, ...]) -> ImageDataset:
    paths = {}
    for key, stem in _IDX_FILES.items():
        path = _find_idx_file(folder, stem)
        if path is None:
            raise DatasetNotFoundError(
                f"{folder} has no {stem}[.gz]; it needs the four IDX files "
                f"{', '.join(_IDX_FILES.values())} (plain or .gz)."
            )
        paths[key] = path
    arrays = {key: idx.read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise idx.IdxFormatError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match; "
                "expected [N, H, W] images and [N] labels."
            )
    return ImageDataset(
        train_images=arrays["train_images"][..., None],
        train_labels=arrays["train_labels"].astype(np.int32),
        test_images=arrays["test_images"][..., None],
        test_labels=arrays["test_labels"].astype(np.int32),
        class_names=class_names,
        source=f"idx:{folder}",
    )


def _read_tfds(name: str, data_dir: str | None, download: bool) -> ImageDataset:
    import tensorflow_datasets as tfds  # imported here: slow, and only this path needs it

    splits = tfds.data_source(name, split=["train", "test"], data_dir=data_dir, download=download)
    arrays = {}
    for split, source in zip(("train", "test"), splits):
        examples = [source[i] for i in range(len(source))]
        arrays[f"{split}_images"] = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
        arrays[f"{split}_labels"] = np.asarray([e["label"] for e in examples], np.int32)
    class_names = tuple(tfds.builder(name, data_dir=data_dir).info.features["label"].names)
    return ImageDataset(**arrays, class_names=class_names, source=f"tfds:{name}")


def _fashion_mnist(config: ml_collections.ConfigDict) -> ImageDataset:
    if config.source not in ("auto", "idx", "tfds"):
        raise ConfigError(f"config.data.source must be 'auto', 'idx' or 'tfds', got {config.source!r}.")
    if config.source in ("auto", "idx"):
        if config.data_dir:  # an explicit folder is used or fails, never skipped
            return _read_idx_folder(config.data_dir, FASHION_MNIST_CLASSES)
        for folder in (os.environ.get(FASHION_MNIST_ENV), DEBIAN_FASHION_MNIST_DIR):
            if folder and _find_idx_file(folder, _IDX_FILES["train_images"]):
                return _read_idx_folder(folder, FASHION_MNIST_CLASSES)
    tfds_error = "not tried (config.data.source='idx')"
    if config.source in ("auto", "tfds"):
        try:
            return _read_tfds("fashion_mnist", config.get("tfds_data_dir") or None, download=True)
        except Exception as e:  # noqa: BLE001 - any tfds failure ends in the one error below
            tfds_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    raise DatasetNotFoundError(
        "Fashion-MNIST was not found: no IDX files in $"
        f"{FASHION_MNIST_ENV} or {DEBIAN_FASHION_MNIST_DIR}, and tfds failed ({tfds_error}). "
        "Install it with `sudo apt-get install dataset-fashion-mnist`, or point "
        f"--config.data.data_dir (or ${FASHION_MNIST_ENV}) at a folder with the four IDX files."
    )


def _image_folder(config: ml_collections.ConfigDict) -> ImageDataset:
    """config.data fields: dir (DIR/train/CLASS/*), image_size, channels, test_fraction (pqdjax.data.image_folder)."""
    if not config.get("dir"):
        raise ConfigError("config.data.dir is empty: set --config.data.dir=DIR, a folder with DIR/train/CLASS/*.png|jpg.")
    *arrays, class_names, source = image_folder.read_dataset(
        config.dir, config.image_size, config.get("channels", 3), config.get("test_fraction", 0.1),
    )
    return ImageDataset(*arrays, class_names=class_names, source=source)


_LOADERS = {"fashion_mnist": _fashion_mnist, "imagefolder": _image_folder}


def load_dataset(config: ml_collections.ConfigDict) -> ImageDataset:
    """Loads the dataset named by `config.name`, limited per class as configured.

    config fields: name, source, data_dir, optional train_per_class /
    test_size limits (used by small configs and tests), and evaluate_on:
    'test', or 'validation' to hold out config.validation_per_class training
    images per class as the evaluation split in place of the test set (for
    choosing settings without looking at the test set).
    """
    if config.name not in _LOADERS:
        raise ConfigError(f"Unknown dataset {config.name!r}; known: {sorted(_LOADERS)}.")
    dataset = _LOADERS[config.name](config)
    check_images(dataset)
    dataset = limit_dataset(dataset, config.get("train_per_class"), config.get("test_size"))
    evaluate_on = config.get("evaluate_on", "test")
    if evaluate_on == "validation":
        return hold_out_validation(dataset, config.validation_per_class)
    if evaluate_on != "test":
        raise ConfigError(f"config.data.evaluate_on must be 'test' or 'validation', got {evaluate_on!r}.")
    return dataset


def hold_out_validation(dataset: ImageDataset, per_class: int) -> ImageDataset:
    """The last `per_class` training images of each class become the evaluation split (test_*); the test set is dropped."""
    counts = np.bincount(dataset.train_labels, minlength=dataset.num_classes)
    if per_class < 1 or per_class >= counts.min():
        raise ConfigError(
            f"config.data.validation_per_class must be in [1, {counts.min() - 1}] (the smallest class has "
            f"{counts.min()} training images), got {per_class}."
        )
    held = np.concatenate([np.flatnonzero(dataset.train_labels == c)[-per_class:] for c in range(dataset.num_classes)])
    held.sort()
    keep = np.setdiff1d(np.arange(len(dataset.train_labels)), held)
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[keep], train_labels=dataset.train_labels[keep],
        test_images=dataset.train_images[held], test_labels=dataset.train_labels[held],
        source=f"{dataset.source} (evaluated on {per_class} held-out training images per class, not the test set)",
        evaluation_split="Validation",
    )


def check_images(dataset: ImageDataset) -> None:
    """Raises DatasetFormatError unless all images are uint8 [N, H, W, C] of one shape with C = 1 or 3."""
    where = dataset.source
    for split in ("train", "test"):
        images = getattr(dataset, f"{split}_images")
        if images.ndim != 4:
            raise DatasetFormatError(f"{where}: {split} images have shape {images.shape}; expected [N, height, width, channels].")
        if images.shape[-1] not in (1, 3):
            raise DatasetFormatError(
                f"{where}: {split} images have {images.shape[-1]} channels; pqdjax takes 1 (grayscale) or 3 (RGB) channels."
            )
        if images.dtype != np.uint8:
            raise DatasetFormatError(f"{where}: {split} images are {images.dtype}; expected uint8 pixels in [0, 255].")
    if dataset.train_images.shape[1:] != dataset.test_images.shape[1:]:
        raise DatasetFormatError(
            f"{where}: train images are {dataset.train_images.shape[1:]} but test images are "
            f"{dataset.test_images.shape[1:]} (height, width, channels); both splits need the same image shape."
        )
    for split in ("train", "test"):
        labels = getattr(dataset, f"{split}_labels")
        if labels.size and (labels.min() < 0 or labels.max() >= dataset.num_classes):
            raise DatasetFormatError(
                f"{where}: {split} labels span {labels.min()}..{labels.max()}, outside the "
                f"{dataset.num_classes} classes [0, {dataset.num_classes}); check the label file."
            )


def limit_dataset(dataset: ImageDataset, train_per_class: int | None, test_size: int | None) -> ImageDataset:
    """Keeps the first `train_per_class` training images of each class and the first `test_size` test images."""
    train_keep = np.arange(len(dataset.train_labels))
    if train_per_class:
        train_keep = np.concatenate(
            [np.flatnonzero(dataset.train_labels == c)[:train_per_class] for c in range(dataset.num_classes)]
        )
        train_keep.sort()
    test_keep = np.arange(min(test_size or len(dataset.test_labels), len(dataset.test_labels)))
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[train_keep],
        train_labels=dataset.train_labels[train_keep],
        test_images=dataset.test_images[test_keep],
        test_labels=dataset.test_labels[test_keep],
    )
