"""Optimal quantization of (class-wise) latent measures.

    quantize(x, mass, k, rng) -> Quantization     # one measure
    quantize_classes(x, mass, k, rngs)             # [C, n, d] padded classes at once

plus the pieces: k-means++ seeding, Lloyd, Voronoi weights, distortion, W2.
"""

from __future__ import annotations

import functools

import jax

from pqdjax.quantize.lloyd import Quantization, assign, cell_masses, kmeans_plus_plus, lloyd, squared_distances
from pqdjax.quantize.metrics import distortion, wasserstein2

__all__ = [
    "Quantization", "assign", "cell_masses", "distortion", "kmeans_plus_plus", "lloyd",
    "quantize", "quantize_classes", "squared_distances", "wasserstein2",
]


def quantize(x: jax.Array, mass: jax.Array, k: int, rng: jax.Array, *, max_iter: int = 100, tol: float = 1e-4) -> Quantization:
    """K-point quantizer of mu = sum_i mass_i delta_{x_i}: k-means++ seeding, then Lloyd.

    x: [n, d]; mass: [n] summing to 1 (zeros for padding). Returns points [k, d]
    with their Voronoi weights.
    """
    return lloyd(x, mass, kmeans_plus_plus(x, mass, k, rng), max_iter=max_iter, tol=tol)


@functools.partial(jax.jit, static_argnames=("k", "max_iter"))
def quantize_classes(x: jax.Array, mass: jax.Array, k: int, rngs: jax.Array, *, max_iter: int = 100, tol: float = 1e-4) -> Quantization:
    """`quantize` for every class at once. x: [C, n, d], mass: [C, n], rngs: [C] keys -> fields with a leading [C]."""
    return jax.vmap(lambda xc, mc, rc: quantize(xc, mc, k, rc, max_iter=max_iter, tol=tol))(x, mass, rngs)
