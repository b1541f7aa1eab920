"""Datasets read record by record, each process its own part, in fixed-size batches (the streamed pipeline).

config.data.name names the dataset:
  'imagenet2012', or any other tfds name ('imagenette/full-size-v2', ...):
      read with tfds.data_source from prepared ArrayRecord files (no TensorFlow
      at run time) in config.data.tfds_data_dir;
  'imagefolder':
      config.data.dir/SPLIT/CLASS/*.jpg|png|... (config.data.train_split and
      test_split name the SPLIT folders: 'train' and 'val' for fast.ai's
      ImageNette and ImageWoof, 'train' and 'val' for an ImageNet folder).
A source is anything with __len__ and __getitem__(i) -> {'image': uint8
[H, W, 3], 'label': int}; tfds's data sources are, and FolderSource is.

Classes (`dataset_classes`): the names come from the dataset (tfds's label
feature, or the folder names). Where they are WordNet synsets ('n01440764'),
as in ImageNet, ImageNette and ImageWoof, each class is also an ImageNet-1K
class: its prompt is its ImageNet name ('tench'), DiT is conditioned on its
ImageNet index, and an ImageNet teacher's logits are read at those indices.

Each process of a multi-host run reads its own contiguous part of a split
(`pqdjax.parallel.process_shard`). Images are resized so that the shorter side is `resize`,
then center-cropped to `crop` x `crop` (pqdjax.data.imagenet.resize_and_center_crop).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
import os
import re
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from PIL import Image

from pqdjax import parallel
from pqdjax.data import image_folder, imagenet
from pqdjax.data.imagenet import resize_and_center_crop
from pqdjax.errors import ConfigError, DatasetFormatError, DatasetNotFoundError

# The fields of config.data that decide which examples a stage reads and how it sees them (not
# where they are stored): the fingerprints of the stages that read the training split (encode) and
# the test split (teacher accuracy, student evaluation) take exactly these.
TRAIN_DATA_FIELDS = ("name", "dir", "train_split", "encode_resize", "encode_crop", "num_classes", "train_limit", "mock_examples")
TEST_DATA_FIELDS = ("name", "dir", "test_split", "eval_resize", "eval_crop", "num_classes", "test_limit", "mock_examples")


def data_fields(data, fields: tuple[str, ...]) -> dict:
    """What a stage's fingerprint knows of its data: {field: config.data's value} for the fields of
    TRAIN_DATA_FIELDS or TEST_DATA_FIELDS (None where unset), and 'content', the split_digest of the
    split they name, so that other records behind the same config (another tfds_data_dir) redo the work.
    """
    out = {k: data.get(k) for k in fields}
    split = data.get("train_split" if "train_split" in fields else "test_split")
    out["content"] = split_digest(open_configured_split(data, split))
    return out


def split_digest(source) -> str:
    """sha256 of a data source's length and of its first, middle and last examples (every field's bytes).

    A cheap content check (three records of a split of any size): it tells
    apart another preparation or version of the dataset, not a single record
    changed in place.
    """
    digest = hashlib.sha256(str(len(source)).encode())
    n = len(source)
    for i in sorted({0, n // 2, n - 1} if n else set()):
        example = source[i]
        for key in sorted(example):
            value = example[key]
            digest.update(key.encode())
            digest.update(value if isinstance(value, bytes) else str(value).encode() if isinstance(value, str)
                          else np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def open_split(split: str, data_dir: str | None = None, name: str = imagenet.TFDS_NAME):
    """tfds.data_source of a prepared split ('train', 'validation', 'train[:1%]'); a clear error when not prepared."""
    import tensorflow_datasets as tfds  # slow to import; only streamed runs need it

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises several types for a missing dataset
        how = (f"Put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder DIR and run `tfds build {name} "
               "--manual_dir=DIR --data_dir=DATA_DIR --file_format=array_record`" if name == imagenet.TFDS_NAME
               else f"Run `tfds build {name} --data_dir=DATA_DIR --file_format=array_record`")
        raise DatasetNotFoundError(
            f"tfds {name} split {split!r} is not prepared in {data_dir or 'the default tfds data_dir'} "
            f"({type(e).__name__}). {how} once (needs TensorFlow), then set config.data.tfds_data_dir=DATA_DIR."
        ) from e


class FolderSource:
    """One split of an image folder, DIR/SPLIT/CLASS/*, as a random-access source of decoded RGB images.

    Labels are the positions of the class folders in sorted order; records are
    {'image': uint8 [H, W, 3], 'label': int}, files in sorted order within each class.
    """

    def __init__(self, folder: str, split: str):
        split_dir = os.path.join(folder, split)
        if not os.path.isdir(split_dir):
            found = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) if os.path.isdir(folder) else []
            raise DatasetNotFoundError(
                f"{split_dir} is not a folder (config.data.dir={folder!r} holds {found or 'nothing'}); an image folder "
                "is DIR/SPLIT/CLASS/*.jpg, with SPLIT named by config.data.train_split and test_split."
            )
        files = image_folder.class_files(split_dir)
        empty = [c for c, paths in files.items() if not paths]
        if not files or empty:
            raise DatasetFormatError(f"{split_dir}: {'class folder(s) ' + str(empty[:3]) + ' hold' if empty else 'no class folder holds'} "
                                     f"no image ({', '.join(image_folder.IMAGE_SUFFIXES)}).")
        self.class_names = tuple(files)
        self.files = [(path, label) for label, paths in enumerate(files.values()) for path in paths]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path, label = self.files[i]
        try:
            with Image.open(path) as image:
                return {"image": np.asarray(image.convert("RGB")), "label": label}
        except OSError as e:
            raise DatasetFormatError(f"{path}: not a readable image ({e}); remove it or replace it.") from e


class FoldedLabels:
    """A data source whose labels are taken modulo `num_classes` (tfds mock data: a few classes, each with examples)."""

    def __init__(self, source, num_classes: int):
        self.source, self.num_classes = source, num_classes
        self.dataset_info = getattr(source, "dataset_info", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        example = dict(self.source[i])
        return {**example, "label": int(example["label"]) % self.num_classes}


def open_configured_split(config, split: str):
    """The split `split` of the dataset config.data names (module docstring): a random-access source.

    With mock_examples > 0 (tfds names only) the source is tfds.testing.mock_data's
    random version of the dataset (that many examples of random size in every
    split, labels folded into the first num_classes classes), for smoke runs.
    """
    if config.name == "imagefolder":
        if not config.get("dir"):
            raise ConfigError("config.data.dir is empty: set it to the image folder, DIR/SPLIT/CLASS/*.jpg.")
        return FolderSource(config.dir, split)
    mock = config.get("mock_examples", 0)
    if not mock:
        return open_split(split, config.get("tfds_data_dir"), config.name)
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=mock):
        source = open_split(split, name=config.name)
    return FoldedLabels(source, config.num_classes)


_SYNSET = re.compile(r"^n\d{8}$")


@dataclasses.dataclass(frozen=True)
class Classes:
    """The classes a run distils, in label order.

    names: the dataset's class names (tfds's label names, or the folder names), [C].
    prompts: the text prompt of each class (Stable Diffusion's condition), [C].
    imagenet_indices: int [C], each class's ImageNet-1K index (DiT's condition, the ImageNet teacher's
        logit), or None where the classes are not ImageNet synsets.
    """

    names: tuple[str, ...]
    prompts: tuple[str, ...]
    imagenet_indices: np.ndarray | None


def source_class_names(source) -> tuple[str, ...]:
    """The class names of a source: FolderSource's folders, or the names of a tfds source's 'label' feature."""
    names = getattr(source, "class_names", None)
    if names is None:
        info = getattr(source, "dataset_info", None)
        try:
            names = info.features["label"].names
        except (AttributeError, KeyError, TypeError) as e:
            raise DatasetFormatError("the dataset has no 'label' feature with class names; a streamed dataset needs one.") from e
    return tuple(names)


def class_count(config) -> int:
    """The number of classes of the dataset config.data names, read from its training split."""
    return len(source_class_names(open_configured_split(config, config.train_split)))


def dataset_classes(config) -> Classes:
    """The first config.num_classes classes of the dataset config (config.data), both splits checked to agree."""
    if config.num_classes < 1:  # 0 ('every class') is resolved by pqdjax.pipeline.run before any stage
        raise ConfigError(f"config.data.num_classes = {config.num_classes}: at least 1 class, or 0 for every class when "
                          "the run starts through pqdjax.pipeline.run.")
    train = source_class_names(open_configured_split(config, config.train_split))
    test = source_class_names(open_configured_split(config, config.test_split))
    if train != test:
        raise DatasetFormatError(f"the {config.train_split!r} and {config.test_split!r} splits of {config.name} have different "
                                 f"classes ({list(train[:3])}... against {list(test[:3])}...); both need the same.")
    if config.num_classes > len(train):
        raise ConfigError(f"config.data.num_classes = {config.num_classes}, but {config.name} has {len(train)} classes.")
    names = train[: config.num_classes]
    if not all(_SYNSET.match(name) for name in names):
        return Classes(names, tuple(name.replace("_", " ") for name in names), None)
    synsets = imagenet.class_synsets_and_names()[0]
    unknown = sorted(set(names) - set(synsets))
    if unknown:
        raise DatasetFormatError(f"{config.name}: class(es) {unknown[:3]} look like WordNet synsets but are not ImageNet-1K classes.")
    indices = np.asarray([synsets.index(name) for name in names], np.int32)
    return Classes(names, tuple(imagenet.class_prompts()[i] for i in indices), indices)


def read_split(config, split: str, resize: int, crop: int, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The whole split (its first config.train_limit examples where set) in host memory, for datasets of CIFAR's
    size: (uint8 images [N, crop, crop, 3], int32 labels [N]) of the first config.num_classes classes, in
    record order. Every process reads all of it (no sharding).
    """
    source = open_configured_split(config, split)
    limit = config.get("train_limit") if split == config.get("train_split") else config.get("test_limit")
    count = min(len(source), limit or len(source))
    images, labels = [], []
    for batch in host_batches(source, np.arange(count), BatchSpec(batch_size, resize, crop)):
        keep = batch["mask"] & (batch["labels"] < config.num_classes)
        images.append(batch["images"][keep])
        labels.append(batch["labels"][keep])
    return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def steps_per_process(num_examples: int, batch_size: int) -> int:
    """Batches every process runs over a split of num_examples shared by process_shard: the largest part's count.

    Processes must run the same number of sharded steps, so those with a
    smaller part pad with fully masked batches (`equal_host_batches`).
    """
    return math.ceil(math.ceil(num_examples / jax.process_count()) / batch_size)


def equal_host_batches(source, num_examples: int, spec: "BatchSpec", first_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """host_batches over this process's part of the first num_examples, then all-masked batches up to steps_per_process.

    first_batch: batches to skip (without reading them) when resuming.
    """
    indices = parallel.process_shard(num_examples)
    total = steps_per_process(num_examples, spec.batch_size)
    yielded = first_batch
    for batch in host_batches(source, indices[first_batch * spec.batch_size :], spec):
        yield batch
        yielded += 1
    if yielded < total:
        empty = _empty_batch(spec)
        for _ in range(total - yielded):
            yield empty


def _empty_batch(spec: "BatchSpec") -> dict[str, np.ndarray]:
    """A batch of the right shapes with every row masked out."""
    return {
        "images": np.zeros((spec.batch_size, spec.crop, spec.crop, 3), np.uint8), "labels": np.zeros(spec.batch_size, np.int32),
        "index": np.zeros(spec.batch_size, np.int64), "mask": np.zeros(spec.batch_size, bool),
    }


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """How to batch a split: rows per batch on this process, the image geometry, reader threads."""

    batch_size: int
    resize: int
    crop: int
    num_threads: int = 8  # records are read, decoded and resized in parallel (PIL releases the GIL)


def host_batches(source, indices: Sequence[int], spec: BatchSpec) -> Iterator[dict[str, np.ndarray]]:
    """This process's examples in order, in batches of exactly spec.batch_size.

    Yields {'images': uint8 [B, crop, crop, 3], 'labels': int32 [B], 'index': int64 [B],
    'mask': bool [B]}; the last batch is padded with copies of its last row, mask False
    there, so that every jitted call sees one shape.
    """
    indices = np.asarray(indices)

    def load(i: int) -> tuple[np.ndarray, int]:
        example = source[int(i)]
        return resize_and_center_crop(example["image"], spec.resize, spec.crop), int(example["label"])

    with concurrent.futures.ThreadPoolExecutor(spec.num_threads) as pool:
        for start in range(0, len(indices), spec.batch_size):
            chunk = indices[start : start + spec.batch_size]
            yield _pad_batch(list(pool.map(load, chunk)), chunk, spec.batch_size)


def _pad_batch(loaded: list[tuple[np.ndarray, int]], chunk: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    images = np.stack([image for image, _ in loaded])
    labels = np.asarray([label for _, label in loaded], np.int32)
    short = batch_size - len(chunk)
    mask = np.arange(batch_size) < len(chunk)
    if short:
        images = np.concatenate([images, np.repeat(images[-1:], short, axis=0)])
        labels = np.concatenate([labels, np.repeat(labels[-1:], short)])
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], short)])
    return {"images": images, "labels": labels, "index": chunk.astype(np.int64), "mask": mask}
