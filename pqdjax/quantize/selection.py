"""Real samples chosen to stand for a class: the baselines beside the quantizers' points.

Over a measure mu = sum_i m_i delta_{x_i} (x: [n, d], mass: [n]; zero-mass rows
are padding and never chosen):

    medoids  the sample nearest each given point (the real image closest to each
             k-means centroid: the "medoid" baseline; two points can share one)
    herding  K samples chosen greedily so that their running mean stays closest to
             the mean of mu (Welling 2009; the herding baseline of dataset
             distillation, here in the VAE's latent space): step t picks the
             unchosen x_i minimising |mean(mu) - (s_{t-1} + x_i) / t|, s the sum of
             the chosen ones

Both return row indices into x, jit and vmap over classes (padded to one n).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pqdjax.quantize.voronoi import squared_distances


def medoids(x: jax.Array, mass: jax.Array, points: jax.Array) -> jax.Array:
    """Index of the sample (with mass > 0) nearest each point: [n, d], [n], [K, d] -> int32 [K]."""
    d2 = squared_distances(points, x)  # [K, n]
    return jnp.argmin(jnp.where(mass[None, :] > 0, d2, jnp.inf), axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=2)
def herding(x: jax.Array, mass: jax.Array, k: int) -> jax.Array:
    """Indices of k samples chosen by herding toward the mass-weighted mean: [n, d], [n] -> int32 [k]."""
    x = x.astype(jnp.float32)
    target = jnp.sum(mass[:, None] * x, axis=0) / jnp.sum(mass)
    available = mass > 0

    def choose(t, carry):
        total, available, chosen = carry
        candidate_means = (total[None, :] + x) / (t + 1.0)  # [n, d]
        error = jnp.sum(jnp.square(candidate_means - target[None, :]), axis=1)
        i = jnp.argmin(jnp.where(available, error, jnp.inf))
        return total + x[i], available.at[i].set(False), chosen.at[t].set(i)

    init = (jnp.zeros(x.shape[1], jnp.float32), available, jnp.zeros(k, jnp.int32))
    return jax.lax.fori_loop(0, k, choose, init)[2]
