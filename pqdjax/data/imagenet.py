"""ImageNet-1K: its tfds name, class names, torchvision's normalisation, and the resize + center crop of its protocol.

Reading any streamed dataset (ImageNet-1K among them) is pqdjax.data.streamed.
Preparing `imagenet2012` is a one-off outside pqdjax, because ImageNet cannot be
downloaded automatically: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
in tfds's manual_dir and run, in an environment with TensorFlow,

    tfds build imagenet2012 --manual_dir=DIR --data_dir=DATA_DIR --file_format=array_record

Images are resized so that the shorter side is `resize`, then center-cropped
to `crop` x `crop` (bilinear, antialiased, as torchvision's Resize +
CenterCrop): 512/512 for D4M's Stable Diffusion encoder, 256/224 for
validating students. The 1,000 class names ship in imagenet_classes.txt
(synset and WordNet names, in tfds's label order).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

TFDS_NAME = "imagenet2012"
NUM_CLASSES = 1000
# torchvision's normalisation, which converted torchvision weights expect.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")


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


