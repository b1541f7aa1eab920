"""Batch augmentations for classifier training: random crop with padding, horizontal flip."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def random_crop(rng: jax.Array, images: jax.Array, padding: int, fill: float = -1.0) -> jax.Array:
    """Pads each image by `padding` pixels of `fill` (black in [-1, 1]) and crops it back at a random offset.

    images: [N, H, W, C] -> [N, H, W, C].
    """
    if padding == 0:
        return images
    n, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    offsets = jax.random.randint(rng, (n, 2), 0, 2 * padding + 1)
    crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Mirrors each image left-right with probability 1/2. [N, H, W, C] -> [N, H, W, C]."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def crop_and_flip(rng: jax.Array, images: jax.Array, padding: int, flip: bool) -> jax.Array:
    """random_crop, then random_flip when `flip`."""
    crop_rng, flip_rng = jax.random.split(rng)
    images = random_crop(crop_rng, images, padding)
    return random_flip(flip_rng, images) if flip else images
