"""The ImageNet student augmentations of SRe2L / RDED / D4M: RandomResizedCrop, flip, CutMix.

All functions are jittable and take an explicit PRNG key; images are float
[N, H, W, C]. Knowledge distillation needs no mixed labels: the teacher labels
the augmented (cropped, flipped, cut-and-mixed) batch itself. What CutMix does
mix is the per-image loss weights, by the area each image contributes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pqdjax.train.augment import random_flip


def random_resized_crop(
    rng: jax.Array, images: jax.Array, size: int, scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
    """torchvision's RandomResizedCrop on every image: [N, H, W, C] -> [N, size, size, C].

    A crop with area fraction ~ U(scale) and log aspect ratio ~ U(log ratio) at a
    uniform position, resized bilinearly (antialiased) to size x size. Where
    torchvision redraws a crop that does not fit (up to 10 times), this clips
    its sides to the image, so that the work per image is fixed.
    """
    n, h, w, c = images.shape
    area_rng, ratio_rng, y_rng, x_rng = jax.random.split(rng, 4)
    area = h * w * jax.random.uniform(area_rng, (n,), minval=scale[0], maxval=scale[1])
    aspect = jnp.exp(jax.random.uniform(ratio_rng, (n,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])))
    crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
    crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
    y0 = jax.random.uniform(y_rng, (n,)) * (h - crop_h)
    x0 = jax.random.uniform(x_rng, (n,)) * (w - crop_w)
    return jax.vmap(lambda image, y, x, ch, cw: crop_and_resize(image, y, x, ch, cw, size))(images, y0, x0, crop_h, crop_w)


def crop_and_resize(image: jax.Array, y0, x0, crop_h, crop_w, size: int) -> jax.Array:
    """The window [y0, y0 + crop_h) x [x0, x0 + crop_w) (float pixel units) of [H, W, C], resized to [size, size, C]."""
    scale = jnp.stack([size / crop_h, size / crop_w])
    translation = -jnp.stack([y0, x0]) * scale
    out = jax.image.scale_and_translate(
        image, (size, size, image.shape[-1]), (0, 1), scale, translation, method="linear", antialias=True,
    )
    return out.astype(image.dtype)


def cutmix(rng: jax.Array, images: jax.Array, weights: jax.Array, beta: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """CutMix (Yun et al. 2019) within the batch: one box, pasted from a permuted batch.

    lambda ~ Beta(beta, beta); a box of area (1 - lambda) H W at a uniform centre
    (clipped to the image) is copied from images[perm] into every image. Returns
    the mixed images [N, H, W, C] and weights [N] mixed by the actual areas:
    (1 - a) w_i + a w_perm(i), a = box area / (H W).
    """
    n, h, w, _ = images.shape
    lam_rng, perm_rng, y_rng, x_rng = jax.random.split(rng, 4)
    lam = jax.random.beta(lam_rng, beta, beta)
    perm = jax.random.permutation(perm_rng, n)
    cut = jnp.sqrt(1.0 - lam)
    cy, cx = jax.random.uniform(y_rng) * h, jax.random.uniform(x_rng) * w
    y_lo, y_hi = jnp.clip(jnp.round(cy - cut * h / 2), 0, h), jnp.clip(jnp.round(cy + cut * h / 2), 0, h)
    x_lo, x_hi = jnp.clip(jnp.round(cx - cut * w / 2), 0, w), jnp.clip(jnp.round(cx + cut * w / 2), 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)
    mixed = jnp.where(box[None, :, :, None], images[perm], images)
    pasted = (y_hi - y_lo) * (x_hi - x_lo) / (h * w)
    return mixed, (1.0 - pasted) * weights + pasted * weights[perm]


def student_augment(rng: jax.Array, images: jax.Array, weights: jax.Array, size: int, cutmix_beta: float) -> tuple[jax.Array, jax.Array]:
    """RandomResizedCrop(size, scale 0.08-1) + horizontal flip + CutMix (skipped when cutmix_beta is 0).

    images [N, H, W, C] float, weights [N] -> ([N, size, size, C], [N]).
    """
    crop_rng, flip_rng, mix_rng = jax.random.split(rng, 3)
    images = random_flip(flip_rng, random_resized_crop(crop_rng, images, size))
    if cutmix_beta > 0:
        images, weights = cutmix(mix_rng, images, weights, cutmix_beta)
    return images, weights
