"""ImageNet-1K from tfds (`imagenet2012`) without TensorFlow, read per process in fixed-size batches.

Reading uses `tfds.data_source`, random access to the ArrayRecord files of a
prepared `imagenet2012` (no TensorFlow at run time). Preparing it is a one-off
outside pqdjax, because ImageNet cannot be downloaded automatically: put
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in tfds's manual_dir and
run, in an environment with TensorFlow,

    tfds build imagenet2012 --manual_dir=DIR --data_dir=DATA_DIR --file_format=array_record

Each process of a multi-host run reads its own contiguous part of a split
(`process_shard`). Images are resized so that the shorter side is `resize`,
then center-cropped to `crop` x `crop` (bilinear, antialiased, as torchvision's
Resize + CenterCrop): 512/512 for D4M's Stable Diffusion encoder, 256/224 for
validating students. The 1,000 class names ship in imagenet_classes.txt
(synset and WordNet names, in tfds's label order).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from pqdjax.errors import DatasetNotFoundError

TFDS_NAME = "imagenet2012"
NUM_CLASSES = 1000
# torchvision's normalisation, which converted torchvision weights expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")


# The fields of config.data that decide which examples a stage reads and how it sees them (not
# where they are stored): the fingerprints of the stages that read the training split (encode) and
# the test split (teacher accuracy, student evaluation) take exactly these.
TRAIN_DATA_FIELDS = ("name", "train_split", "encode_resize", "encode_crop", "num_classes", "train_limit", "mock_examples")
TEST_DATA_FIELDS = ("name", "test_split", "eval_resize", "eval_crop", "num_classes", "test_limit", "mock_examples")


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


def normalize(images: jax.Array) -> jax.Array:
    """Float images in [0, 1], [..., 3] -> (images - MEAN) / STD per channel."""
    return (images - jnp.asarray(MEAN, images.dtype)) / jnp.asarray(STD, images.dtype)


def class_synsets_and_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The 1,000 WordNet synsets ('n01440764') and their names ('tench, Tinca tinca') in label order."""
    with open(_CLASSES_FILE) as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if len(rows) != NUM_CLASSES or any(len(r) != 2 for r in rows):
        raise ValueError(f"{_CLASSES_FILE} must have {NUM_CLASSES} lines 'synset<TAB>names'; the package is damaged.")
    synsets, names = zip(*rows)
    return tuple(synsets), tuple(names)


def class_prompts() -> tuple[str, ...]:
    """One short name per class for text prompts: the first of its WordNet names ('tench')."""
    return tuple(name.split(",")[0].strip() for name in class_synsets_and_names()[1])


def resize_and_center_crop(image: np.ndarray, resize: int, crop: int, channels: int = 3) -> np.ndarray:
    """uint8 [H, W, 3] (or [H, W, 1], [H, W]) -> uint8 [crop, crop, channels]: shorter side to `resize`
    (bilinear, as torchvision), center crop; channels 3 (RGB) or 1 (grayscale)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    pil = Image.fromarray(image).convert("RGB" if channels == 3 else "L")
    w, h = pil.size
    scale = resize / min(w, h)
    new_w, new_h = max(crop, round(w * scale)), max(crop, round(h * scale))
    pil = pil.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - crop) // 2, (new_h - crop) // 2
    out = np.asarray(pil.crop((left, top, left + crop, top + crop)), np.uint8)
    return out if channels == 3 else out[..., None]


def process_shard(num_examples: int, process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
    """The example indices this process reads: its contiguous part of [0, num_examples) (parts differ by at most 1)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return np.array_split(np.arange(num_examples), count)[index]


def open_split(split: str, data_dir: str | None = None, name: str = TFDS_NAME):
    """tfds.data_source of a prepared split ('train', 'validation', 'train[:1%]'); a clear error when not prepared."""
    import tensorflow_datasets as tfds  # slow to import; only ImageNet runs need it

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises several types for a missing dataset
        raise DatasetNotFoundError(
            f"tfds {name} split {split!r} is not prepared in {data_dir or 'the default tfds data_dir'} "
            f"({type(e).__name__}). Put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a folder DIR and run "
            f"`tfds build {name} --manual_dir=DIR --data_dir=DATA_DIR --file_format=array_record` once "
            "(needs TensorFlow), then set config.data.tfds_data_dir=DATA_DIR."
        ) from e


class FoldedLabels:
    """A data source whose labels are taken modulo `num_classes` (tfds mock data: a few classes, each with examples)."""

    def __init__(self, source, num_classes: int):
        self.source, self.num_classes = source, num_classes

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        example = dict(self.source[i])
        return {**example, "label": int(example["label"]) % self.num_classes}


def open_configured_split(config, split: str):
    """The split of config.data (fields tfds_data_dir, num_classes, mock_examples).

    With mock_examples > 0 the source is tfds.testing.mock_data's random
    imagenet2012 (that many examples of random size in every split, labels
    folded into the first num_classes classes), for smoke runs without ImageNet.
    """
    mock = config.get("mock_examples", 0)
    if not mock:
        return open_split(split, config.tfds_data_dir)
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=mock):
        source = open_split(split)
    return FoldedLabels(source, config.num_classes)


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
    indices = process_shard(num_examples)
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
