"""How a synthetic set's weights enter a student's loss (config.evaluate.weighting).

DDOQ weighs image k of class c by w_ck, the mass of its point's Voronoi cell
(sum_k w_ck = 1); D4M weighs every image alike (w_ck = 1/K). The transforms,
applied per class before training, move between the two:

    power a   w -> w^a / sum_k w^a       a = 1: the Voronoi masses; a = 0: uniform
                                         (D4M); 0 < a < 1 flattens, a > 1 sharpens
    mix l     w -> l w + (1 - l) / K     l = 1: unchanged; l = 0: uniform

(power first, then mix). Each class's weights are then rescaled to mean 1
(per_class_mean_one), so every class weighs K images' worth whatever the
transform. The loss of a batch of B images with per-image losses l_i
(config.evaluate.weighting.normalize):

    'class'  (1/B) sum_i w_i l_i        the weighted empirical risk: its expectation
                                        over uniformly drawn batches is the
                                        Voronoi-weighted risk of the whole set
    'batch'  sum_i w_i l_i / sum_i w_i  a weighted average within the batch: a batch
                                        that drew light images still has loss scale 1
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pqdjax.errors import InputError

NORMALIZATIONS = ("class", "batch")


def _checked(weights: np.ndarray) -> np.ndarray:
    """weights [C, K] as float64, refused unless finite and non-negative with a positive sum in every class."""
    weights = np.asarray(weights, np.float64)
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or np.any(weights.sum(axis=1) <= 0):
        raise InputError("image weights must be finite and non-negative with a positive sum in every class.")
    return weights


def per_class_mean_one(weights: np.ndarray) -> np.ndarray:
    """Rescales each class's weights to mean 1. [C, K] -> [C, K] (weights summing to 1 per class become K * w)."""
    weights = _checked(weights)
    return (weights * weights.shape[1] / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def transform_weights(weights: np.ndarray, power: float = 1.0, mix: float = 1.0) -> np.ndarray:
    """The power and mix transforms of the module docstring, per class. [C, K] -> [C, K], rows summing to 1.

    A zero weight stays zero under any power a > 0 and becomes 1 (uniform) at
    a = 0, where 0^0 = 1.
    """
    if not (np.isfinite(power) and power >= 0):
        raise InputError(f"weighting power must be a finite number >= 0, got {power}.")
    if not 0.0 <= mix <= 1.0:
        raise InputError(f"weighting mix must be in [0, 1], got {mix}.")
    weights = _checked(weights)
    powered = weights**power  # numpy: 0.0 ** 0.0 == 1.0
    powered /= powered.sum(axis=1, keepdims=True)
    return mix * powered + (1.0 - mix) / weights.shape[1]


def student_weights(weights: np.ndarray, weighting) -> np.ndarray:
    """Set weights [C, K] (rows summing to 1) -> the student's per-image weights [C, K], mean 1 per class.

    weighting: config.evaluate.weighting (power, mix) or None for the weights as they are.
    """
    if weighting is not None:
        weights = transform_weights(weights, float(weighting.get("power", 1.0)), float(weighting.get("mix", 1.0)))
    return per_class_mean_one(weights)


def loss_normalization(weighting) -> str:
    """config.evaluate.weighting's normalize ('class' where the config has no weighting)."""
    return weighting.get("normalize", "class") if weighting is not None else "class"


def weighted_loss(per_example: jax.Array, weights: jax.Array, normalize: str = "class") -> jax.Array:
    """The batch's loss from per-example losses [B] and weights [B] (see the module docstring)."""
    if normalize == "class":
        return jnp.mean(weights * per_example)
    if normalize == "batch":
        return jnp.sum(weights * per_example) / jnp.maximum(jnp.sum(weights), jnp.finfo(per_example.dtype).tiny)
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}.")
