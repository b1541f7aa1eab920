"""Conversions between stored uint8 images and the float images models see."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def to_model_range(images) -> jnp.ndarray:
    """uint8 [..., H, W, C] in [0, 255] -> float32 in [-1, 1] (the VAE's and classifiers' input)."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
    """float [..., H, W, C] in [-1, 1] -> uint8 in [0, 255], clipped."""
    scaled = (np.asarray(images, np.float32) + 1.0) * 127.5
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
