"""The best of several starts of a quantizer (scikit-learn's n_init), in one compiled call."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from pqdjax.quantize.lloyd import Quantization


def start_keys(rng: jax.Array, n: int) -> jax.Array:
    """The keys of n starts: rng itself, then fold_in(rng, 1), ..., fold_in(rng, n - 1)."""
    others = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(1, n))
    return jnp.concatenate([rng[None], others])


@dataclasses.dataclass(frozen=True)
class Restarts:
    """`solver` from n_init seeds (start_keys), keeping the start of least distortion.

    Start 0 is the solver's single run with the same key, so restarts never give a
    higher distortion than no restarts. The starts are vmapped: Lloyd runs them one
    after another, each to its own convergence (pqdjax.quantize.lloyd); CLVQ and the
    barycenter run them side by side.
    """

    solver: Any
    n_init: int

    def __call__(self, x: jax.Array, mass: jax.Array, k: int, rng: jax.Array) -> Quantization:
        """x: [n, d], mass: [n] -> the best start's Quantization with K = k points."""
        starts = jax.vmap(lambda key: self.solver(x, mass, k, key))(start_keys(rng, self.n_init))
        best = jnp.argmin(starts.distortion)  # the first of equal minima
        return jax.tree.map(lambda a: a[best], starts)
