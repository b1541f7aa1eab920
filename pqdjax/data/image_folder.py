"""Distilled sets as files any framework reads: PNGs in class folders and a manifest of weights.

Every run writes each synthetic set this way (the default pipeline under
distilled/{method}_ipc{K}/, the ImageNet one under synthetic/ipc{K}/, where
d4m and ddoq share one folder of images and differ in their manifests):

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

MANIFEST = "manifest.csv"
COLUMNS = ("file", "label", "class", "weight")


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
