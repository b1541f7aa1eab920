"""Image folders in and out: a dataset read from class folders, distilled sets written as PNGs in class folders.

Reading (`read_dataset`, config.data.name = 'imagefolder'): DIR/train/CLASS/*
and optionally DIR/test/CLASS/* (png, jpg, jpeg, bmp, webp), the class names
the sorted folder names, every image resized (shorter side) and center-cropped
to a square and converted to RGB or grayscale. Without DIR/test the last
`test_fraction` of each class's images (by file name) is the test split.

Writing: every run writes each synthetic set this way (pqdjax.stages.decode: under
synthetic/ipc{K}/{source}_{decoder}/, where d4m and ddoq share one folder of
images and differ in their manifests, synthetic/ipc{K}/manifest_{method}.csv):

    {class folder}/{k:03d}.png   the K images of a class; class folder
                                 '{index}_{name}' with the index zero-padded,
                                 so sorted folder names are the label order
                                 (what torchvision's ImageFolder assigns)
    manifest.csv                 file,label,class,weight: one row per image,
                                 file relative to the manifest's folder,
                                 weights summing to 1 within each class

Training on a set outside pqdjax needs only the manifest (README.md shows a
few lines of numpy and PIL).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from pqdjax.data.imagenet import resize_and_center_crop
from pqdjax.errors import ConfigError, DatasetFormatError, DatasetNotFoundError, InputError

MANIFEST = "manifest.csv"
COLUMNS = ("file", "label", "class", "weight")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def class_files(split_dir: str) -> dict[str, list[str]]:
    """class name -> sorted image paths, for the class folders of one split folder."""
    classes = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    return {
        c: sorted(os.path.join(split_dir, c, f) for f in os.listdir(os.path.join(split_dir, c)) if f.lower().endswith(IMAGE_SUFFIXES))
        for c in classes
    }


def _load(path: str, size: int, channels: int) -> np.ndarray:
    """One image file -> uint8 [size, size, channels]: shorter side to size (bilinear), center crop."""
    try:
        with Image.open(path) as image:  # converted first: palette and alpha images become plain pixels
            pixels = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    except OSError as e:
        raise DatasetFormatError(f"{path}: not a readable image ({e}); remove it or replace it.") from e
    return resize_and_center_crop(pixels, size, size, channels)


def read_dataset(folder: str, size: int, channels: int = 3, test_fraction: float = 0.1):
    """(train_images, train_labels, test_images, test_labels, class_names, source) of an image folder (module docstring)."""
    if channels not in (1, 3):
        raise ConfigError(f"config.data.channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    train_dir, test_dir = os.path.join(folder, "train"), os.path.join(folder, "test")
    if not os.path.isdir(train_dir):
        raise DatasetNotFoundError(f"{folder} has no train/ folder; an image folder is DIR/train/CLASS/*.png|jpg (and optionally DIR/test/CLASS/*).")
    train = class_files(train_dir)
    if len(train) < 2:
        raise DatasetFormatError(f"{train_dir} has {len(train)} class folder(s); distillation needs at least 2 classes, one folder each.")
    empty = [c for c, files in train.items() if not files]
    if empty:
        raise DatasetFormatError(f"{train_dir}: class folder(s) {empty[:3]} hold no image ({', '.join(IMAGE_SUFFIXES)}).")
    names = tuple(train)
    if os.path.isdir(test_dir):
        test = class_files(test_dir)
        if tuple(test) != names:
            raise DatasetFormatError(f"{test_dir} has the classes {sorted(test)[:5]}..., train/ has {list(names)[:5]}...; both need the same class folders.")
        source = f"imagefolder:{folder}"
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"config.data.test_fraction must be in (0, 1) when {folder} has no test/ folder, got {test_fraction}.")
        cut = {c: len(files) - max(1, int(round(test_fraction * len(files)))) for c, files in train.items()}
        if min(cut.values()) < 1:
            raise DatasetFormatError(f"{train_dir}: a class has too few images to hold out a test split; add a test/ folder or more images.")
        test = {c: files[cut[c]:] for c, files in train.items()}
        train = {c: files[: cut[c]] for c, files in train.items()}
        source = f"imagefolder:{folder} (test: the last {test_fraction:g} of each class)"

    def arrays(split: dict[str, list[str]]):
        files = [(f, label) for label, c in enumerate(names) for f in split[c]]
        return np.stack([_load(f, size, channels) for f, _ in files]), np.asarray([label for _, label in files], np.int32)

    train_images, train_labels = arrays(train)
    test_images, test_labels = arrays(test)
    return train_images, train_labels, test_images, test_labels, names, source


def class_folder(index: int, name: str, num_classes: int) -> str:
    """'{index}_{name}' with the index zero-padded to num_classes' digits and the name made safe for a path."""
    digits = max(3, len(str(max(num_classes - 1, 0))))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"
    return f"{index:0{digits}d}_{safe}"


def image_file(index: int, name: str, num_classes: int, k: int) -> str:
    """The relative path of the k-th image of class `index`: '{class folder}/{k:03d}.png'."""
    return f"{class_folder(index, name, num_classes)}/{k:03d}.png"


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 1] (grayscale) or [H, W, 3] -> PNG file contents."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"a PNG takes uint8 [H, W, 1 or 3] images, got {image.dtype} {image.shape}.")
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def manifest_text(files: Sequence[str], labels: np.ndarray, weights: np.ndarray, class_names: Sequence[str]) -> str:
    """The manifest's CSV text (a header, then one row per image)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for file, label, weight in zip(files, np.asarray(labels), np.asarray(weights, np.float64)):
        writer.writerow((file, int(label), class_names[int(label)], f"{float(weight):.9g}"))
    return buffer.getvalue()


def write_set(folder: str, images: np.ndarray, weights: np.ndarray, class_names: Sequence[str]) -> None:
    """Writes a set of images uint8 [C, K, H, W, ch] with weights [C, K] into `folder` (created), with its manifest."""
    num_classes, ipc = images.shape[:2]
    files, labels = [], []
    for c in range(num_classes):
        os.makedirs(os.path.join(folder, class_folder(c, class_names[c], num_classes)), exist_ok=True)
        for k in range(ipc):
            files.append(image_file(c, class_names[c], num_classes, k))
            labels.append(c)
            with open(os.path.join(folder, files[-1]), "wb") as f:
                f.write(png_bytes(images[c, k]))
    with open(os.path.join(folder, MANIFEST), "w") as f:
        f.write(manifest_text(files, np.asarray(labels), np.asarray(weights).reshape(-1), class_names))


def read_manifest(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(absolute image paths, labels int32 [n], weights float32 [n]) of a manifest CSV."""
    folder = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    files = [os.path.join(folder, r["file"]) for r in rows]
    return files, np.asarray([int(r["label"]) for r in rows], np.int32), np.asarray([float(r["weight"]) for r in rows], np.float32)


def load_images(files: Sequence[str]) -> np.ndarray:
    """uint8 [n, H, W, ch] from PNG files of one size (grayscale ones get ch = 1)."""
    images = [np.asarray(Image.open(f)) for f in files]
    return np.stack([image[..., None] if image.ndim == 2 else image for image in images])


def read_set(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images uint8 [n, H, W, ch], labels int32 [n], weights float32 [n]) of the set whose manifest is `path`."""
    files, labels, weights = read_manifest(path)
    return load_images(files), labels, weights


def read_class_major(path: str, ipc: int, first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The set whose manifest is `path`, with `ipc` images per class, class-major: (images uint8 [C, K, H, W, ch],
    weights float32 [C, K]), rows of the manifest in any order; only the first `first` classes if given (only their
    PNGs are read). InputError where the manifest does not hold K images of each of classes 0..C-1."""
    files, labels, weights = read_manifest(path)
    # by class, then by image index k (the file name '{k:03d}.png': shorter names first, then by name)
    order = np.asarray(sorted(range(len(files)), key=lambda i: (labels[i], len(files[i]), files[i])), np.int64)
    num_classes = len(labels) // ipc
    if len(labels) % ipc or not np.array_equal(labels[order], np.repeat(np.arange(num_classes), ipc)):
        raise InputError(f"{path} does not hold {ipc} images of each of classes 0..{num_classes - 1}; "
                         "delete synthetic/ in the workdir to decode the sets again.")
    kept = num_classes if first is None else min(first, num_classes)
    order = order[: kept * ipc]
    images = load_images([files[i] for i in order])
    return images.reshape((kept, ipc) + images.shape[1:]), weights[order].astype(np.float32).reshape(kept, ipc)
