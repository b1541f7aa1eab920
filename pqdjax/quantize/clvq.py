"""CLVQ: competitive learning vector quantization, the online form of Lloyd.

Each mini-batch of samples is assigned to its nearest points, and each point
moves towards every sample it wins with step 1/count, count being the number
of samples it has won so far (mini-batch k-means as in scikit-learn's
MiniBatchKMeans, which D4M uses). A point is thereby always the mean of the
samples it has won, and count / total is the companion estimate of its cell
mass. Only a mini-batch and the K points are in memory at a time, so a
class's latents never need to fit in memory (`clvq_stream`); `clvq` is the
jittable, vmappable form over an in-memory measure, which draws its
mini-batches from the measure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from pqdjax.quantize.checks import check_mass, check_options
from pqdjax.quantize.lloyd import Quantization, finish, kmeans_plus_plus, tolerance_threshold
from pqdjax.quantize.voronoi import assign


@struct.dataclass
class CLVQState:
    """points [K, d]; counts [K], the (weighted) number of samples each point has won."""

    points: jax.Array
    counts: jax.Array

    @property
    def mass_estimate(self) -> jax.Array:
        """The companion estimate of the cell masses: counts / total. [K]"""
        return self.counts / jnp.maximum(self.counts.sum(), jnp.finfo(jnp.float32).tiny)


def clvq_step(state: CLVQState, batch: jax.Array, batch_mass: jax.Array | None = None) -> CLVQState:
    """One mini-batch of competitive learning. batch: [B, d]; batch_mass: [B] sample weights (default 1)."""
    batch = batch.astype(jnp.float32)
    batch_mass = jnp.ones(batch.shape[:1], jnp.float32) if batch_mass is None else batch_mass.astype(jnp.float32)
    k = state.points.shape[0]
    winner, _ = assign(batch, state.points)
    won = jax.ops.segment_sum(batch_mass, winner, num_segments=k)
    sums = jax.ops.segment_sum(batch_mass[:, None] * batch, winner, num_segments=k)
    counts = state.counts + won
    # c <- c + (sum_j (x_j - c)) / count: the 1/count step applied to each won sample.
    step = (sums - won[:, None] * state.points) / jnp.maximum(counts, jnp.finfo(jnp.float32).tiny)[:, None]
    return CLVQState(points=state.points + step, counts=counts)


def clvq(x: jax.Array, mass: jax.Array, init: jax.Array, rng: jax.Array, batch_size: int = 1024,
         max_steps: int = 200, tol: float = 1e-4) -> Quantization:
    """CLVQ over mini-batches drawn from mu = sum_i mass_i delta_{x_i} (with replacement, by mass).

    Stops after `max_steps` mini-batches, or earlier when a step moves the
    points by at most tol * (mean per-feature variance of mu) in squared norm.
    The returned weights, assignment and distortion are exact (one pass over
    x in blocks of batch_size rows); beyond x the working memory is
    O(batch_size * K + n), never an [n, K] matrix.

    Args:
      x: [n, d]; mass: [n] summing to 1 (zeros for padding); init: [K, d]; rng: key.
    """
    check_mass(mass, x.shape[:1])
    check_options("clvq", batch_size=(batch_size, 1), max_steps=(max_steps, 1), tol=(tol, 0))
    x = x.astype(jnp.float32)
    mass = mass.astype(jnp.float32)
    threshold = tolerance_threshold(x, mass, tol)
    k = init.shape[0]

    def cond(carry):
        _, i, shift, _ = carry
        return (i < max_steps) & (shift > threshold)

    def body(carry):
        state, i, _, rng = carry
        rng, batch_rng = jax.random.split(rng)
        rows = jax.random.choice(batch_rng, x.shape[0], (batch_size,), p=mass)
        new = clvq_step(state, x[rows])
        return new, i + 1, jnp.sum(jnp.square(new.points - state.points)), rng

    init_state = CLVQState(points=init.astype(jnp.float32), counts=jnp.zeros((k,), jnp.float32))
    state, steps, shift, _ = jax.lax.while_loop(cond, body, (init_state, jnp.int32(0), jnp.float32(jnp.inf), rng))
    return finish(x, mass, state.points, steps, shift <= threshold, block_size=batch_size)


@dataclasses.dataclass(frozen=True)
class CLVQ:
    """CLVQ from k-means++ seeds on a subsample (static options; hashable, so a jit static argument).

    batch_size: samples per mini-batch. max_steps: mini-batch bound.
    tol: stop when a step's squared shift is at most tol * mean feature variance.
    init_size: samples drawn (by mass) for k-means++ seeding, as in MiniBatchKMeans.
    """

    batch_size: int = 1024
    max_steps: int = 300
    tol: float = 1e-6
    init_size: int = 3072

    def __post_init__(self):
        check_options("CLVQ", batch_size=(self.batch_size, 1), max_steps=(self.max_steps, 1), tol=(self.tol, 0),
                      init_size=(self.init_size, 1))

    def __call__(self, x: jax.Array, mass: jax.Array, k: int, rng: jax.Array) -> Quantization:
        """x: [n, d], mass: [n] -> Quantization with K = k points."""
        init_rng, seed_rng, run_rng = jax.random.split(rng, 3)
        size = max(min(self.init_size, x.shape[0]), k)
        if size < x.shape[0]:
            rows = jax.random.choice(init_rng, x.shape[0], (size,), p=mass)
            init = kmeans_plus_plus(x[rows], jnp.full((size,), 1.0 / size, x.dtype), k, seed_rng)
        else:
            init = kmeans_plus_plus(x, mass, k, seed_rng)
        return clvq(x, mass, init, run_rng, self.batch_size, self.max_steps, self.tol)


@struct.dataclass
class StreamResult:
    """What `clvq_stream` returns: points [K, d], the companion mass estimate [K], the exact
    Voronoi weights [K] and distortion (from a second pass), and the number of mini-batches."""

    points: jax.Array
    mass_estimate: jax.Array
    weights: jax.Array
    distortion: jax.Array
    steps: int


@jax.jit
def _cell_sums(points, batch, batch_mass):
    winner, d2 = assign(batch.astype(jnp.float32), points)
    return jax.ops.segment_sum(batch_mass, winner, num_segments=points.shape[0]), jnp.sum(batch_mass * d2)


def clvq_stream(batches: Callable[[], Iterable[np.ndarray]], init: np.ndarray, epochs: int = 1) -> StreamResult:
    """CLVQ over a measure read in mini-batches, never held in memory as a whole.

    Args:
      batches: returns a fresh iterable of [B, d] arrays (equal weight per
        sample) each time it is called, e.g. slices of a memory-mapped file.
        All batches should have one shape, so the step compiles once.
      init: [K, d] initial points (e.g. k-means++ on a first batch).
      epochs: passes of competitive learning; one more pass then measures the
        exact Voronoi weights and distortion of the final points.
    """
    step = jax.jit(clvq_step)
    state = CLVQState(points=jnp.asarray(init, jnp.float32), counts=jnp.zeros(len(init), jnp.float32))
    steps = 0
    for _ in range(epochs):
        for batch in batches():
            state = step(state, jnp.asarray(batch))
            steps += 1
    cells = jnp.zeros(len(init), jnp.float32)
    total_d2, total = 0.0, 0
    for batch in batches():
        batch = jnp.asarray(batch)
        ones = jnp.ones(batch.shape[:1], jnp.float32)
        c, d2 = _cell_sums(state.points, batch, ones)
        cells, total_d2, total = cells + c, total_d2 + d2, total + batch.shape[0]
    if total == 0:
        raise ValueError("clvq_stream: `batches()` yielded no samples; pass a callable returning a non-empty iterable of [B, d] arrays.")
    return StreamResult(state.points, state.mass_estimate, cells / total, total_d2 / total, steps)
