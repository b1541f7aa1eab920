"""Batch augmentations for classifier training: random crop with padding, horizontal flip.

A crop-and-flip augmentation has finitely many outcomes per image: a view is
(dy, dx, mirrored), with the crop offset dy, dx in [0, 2 * padding] and
mirrored in {0, 1}, so (2 * padding + 1)^2 * 2 views in all (one flip state
when flipping is off). `sample_views` draws one per image and `apply_views`
makes the images; `view_index` numbers the views so that anything computed
once per view (a teacher's logits, pqdjax.train.student) can be looked up.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_crop(rng: jax.Array, images: jax.Array, padding: int, fill: float = -1.0) -> jax.Array:
    """Pads each image by `padding` pixels of `fill` (black in [-1, 1]) and crops it back at a random offset.

    images: [N, H, W, C] -> [N, H, W, C].
    """
    if padding == 0:
        return images
    offsets = jax.random.randint(rng, (images.shape[0], 2), 0, 2 * padding + 1)
    return _crop(images, offsets, padding, fill)


def _crop(images: jax.Array, offsets: jax.Array, padding: int, fill: float = -1.0) -> jax.Array:
    """images [N, H, W, C], offsets int [N, 2] in [0, 2 * padding] -> the windows [N, H, W, C] of the padded images."""
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2. [N, H, W, C] -> [N, H, W, C]."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def sample_views(rng: jax.Array, n: int, padding: int, flip: bool) -> jax.Array:
    """One random view per image: int32 [n, 3] of (dy, dx, mirrored).

    Draws exactly what crop_and_flip draws from the same key (same offsets, same flips).
    """
    crop_rng, flip_rng = jax.random.split(rng)
    offsets = (jax.random.randint(crop_rng, (n, 2), 0, 2 * padding + 1) if padding
               else jnp.zeros((n, 2), jnp.int32))
    mirrored = jax.random.bernoulli(flip_rng, 0.5, (n, 1)) if flip else jnp.zeros((n, 1), bool)
    return jnp.concatenate([offsets.astype(jnp.int32), mirrored.astype(jnp.int32)], axis=1)


def apply_views(images: jax.Array, views: jax.Array, padding: int, fill: float = -1.0) -> jax.Array:
    """images [N, H, W, C], views int [N, 3] -> each image's view [N, H, W, C] (crop first, then mirror)."""
    images = _crop(images, views[:, :2], padding, fill)
    return jnp.where(views[:, 2, None, None, None] == 1, images[:, :, ::-1, :], images)


def crop_and_flip(rng: jax.Array, images: jax.Array, padding: int, flip: bool) -> jax.Array:
    """Random crop with `padding`, then a random left-right flip when `flip`. [N, H, W, C] -> [N, H, W, C]."""
    return apply_views(images, sample_views(rng, images.shape[0], padding, flip), padding)


def num_views(padding: int, flip: bool) -> int:
    """How many distinct views crop_and_flip can make of one image."""
    return (2 * padding + 1) ** 2 * (2 if flip else 1)


def view_index(views: jax.Array, padding: int, flip: bool) -> jax.Array:
    """int [N, 3] views -> int [N] in [0, num_views): the row of `all_views` each view is."""
    side = 2 * padding + 1
    index = views[:, 0] * side + views[:, 1]
    return index * 2 + views[:, 2] if flip else index


def all_views(padding: int, flip: bool) -> np.ndarray:
    """int32 [num_views, 3]: every view, row v the one view_index numbers v."""
    side = 2 * padding + 1
    dy, dx, mirrored = np.meshgrid(np.arange(side), np.arange(side), np.arange(2 if flip else 1), indexing="ij")
    return np.stack([dy.ravel(), dx.ravel(), mirrored.ravel()], axis=1).astype(np.int32)
