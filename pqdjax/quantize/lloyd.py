"""Lloyd's algorithm (k-means) with greedy k-means++ seeding, on weighted point sets.

A class's latent measure is mu = sum_i m_i delta_{x_i} (m_i >= 0, sum m_i = 1;
zero-mass rows are padding and change nothing). Lloyd alternates the nearest-
point assignment and the barycentre of each Voronoi cell until the centres stop
moving; its fixed points are the stationary K-point quantizers of mu.

Everything here is jittable with static `k` and `max_iter`, and vmaps over
classes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import struct

from pqdjax.quantize import block_bounds
from pqdjax.quantize.checks import check_mass, check_options
from pqdjax.quantize.voronoi import assign, cell_masses, cell_sums, nearest, squared_distances, squared_norms


@struct.dataclass
class Quantization:
    """A K-point quantizer of a measure and how it was found.

    Attributes:
      points: [K, d] quantization points (centroids).
      weights: [K] mass of each point's Voronoi cell under mu (sums to 1), for
        every method (the barycenter's own measure has uniform weights instead).
      assignment: int32 [n] index of each sample's nearest point.
      distortion: scalar, E_mu[min_k |x - c_k|^2] (also W2^2(mu, sum_k w_k delta_{c_k})).
      iterations: int32 scalar, iterations run (Lloyd or barycenter steps, CLVQ mini-batches).
      converged: bool scalar, whether the tolerance was met within the iteration bound.
    """

    points: jax.Array
    weights: jax.Array
    assignment: jax.Array
    distortion: jax.Array
    iterations: jax.Array
    converged: jax.Array


def finish(x: jax.Array, mass: jax.Array, points: jax.Array, iterations, converged, block_size: int | None = None) -> Quantization:
    """The Quantization of `points`: Voronoi assignment, weights and distortion under mu = (x, mass)."""
    assignment, d2_min = assign(x, points, block_size)
    return Quantization(
        points=points,
        weights=cell_masses(assignment, mass, points.shape[0]),
        assignment=assignment,
        distortion=jnp.sum(mass * d2_min),
        iterations=jnp.asarray(iterations, jnp.int32),
        converged=jnp.asarray(converged, jnp.bool_),
    )


def tolerance_threshold(x: jax.Array, mass: jax.Array, tol: float, x_sq: jax.Array | None = None) -> jax.Array:
    """scikit-learn's absolute tolerance: tol * mean per-feature variance of mu.

    The variance is (E|x|^2 - |E x|^2) / d: E x as a column sum of mass * x
    (which XLA:CPU fuses into one pass, about ten times faster than the
    vector-matrix product mass @ x) and E|x|^2 from |x|^2 (`x_sq`, [n], which
    Lloyd computes anyway). Where that difference keeps less than a thousandth
    of E|x|^2 (samples far from the origin for their spread, so cancellation
    would eat its digits), the two-pass form E|x - E x|^2 / d instead.
    tol = 0 costs nothing.
    """
    if isinstance(tol, (int, float)) and tol == 0:
        return jnp.zeros((), x.dtype)
    mean = jnp.sum(mass[:, None] * x, axis=0)
    second_moment = jnp.dot(mass, squared_norms(x) if x_sq is None else x_sq, precision=jax.lax.Precision.HIGHEST)
    spread = second_moment - jnp.sum(jnp.square(mean))

    def two_pass(_):
        return jnp.sum(mass[:, None] * jnp.square(x - mean))

    spread = jax.lax.cond(spread > 1e-3 * second_moment, lambda s: s, two_pass, spread)
    return tol * spread / x.shape[1]


def kmeans_plus_plus(x: jax.Array, mass: jax.Array, k: int, rng: jax.Array, n_local_trials: int | None = None) -> jax.Array:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as in scikit-learn) for a weighted sample.

    The first centre is drawn with probability proportional to the mass; each
    next one from `n_local_trials` candidates drawn proportionally to
    mass * D^2 (D: distance to the nearest centre so far), keeping the
    candidate that lowers the potential most. When every sample already sits
    on a centre (K above the number of distinct samples), the remaining
    centres repeat samples, drawn by mass.

    Args:
      x: [n, d] samples. mass: [n] non-negative weights (zero for padding).
      k: number of centres. rng: PRNG key.
      n_local_trials: candidates per step; default 2 + floor(log k).
    Returns:
      [k, d] initial centres, all samples with positive mass.
    """
    n_local_trials = n_local_trials or 2 + int(math.log(k))
    mass = mass.astype(x.dtype)
    rng, first_rng = jax.random.split(rng)
    first = jax.random.choice(first_rng, x.shape[0], p=mass / mass.sum())
    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = squared_distances(x, x[first][None])[:, 0]

    def add_center(i, carry):
        centers, closest, rng = carry
        rng, step_rng = jax.random.split(rng)
        potential = mass * closest
        p = jnp.where(potential.sum() > 0, potential, mass)
        candidates = jax.random.choice(step_rng, x.shape[0], (n_local_trials,), p=p / p.sum())
        candidate_d2 = jnp.minimum(closest[None], squared_distances(x, x[candidates]).T)
        best = jnp.argmin(candidate_d2 @ mass)
        return centers.at[i].set(x[candidates[best]]), candidate_d2[best], rng

    centers, _, _ = jax.lax.fori_loop(1, k, add_center, (centers, closest, rng))
    return centers


# Rows per block of the fused assign-and-accumulate pass: a block's [rows, K] distances and
# [rows, d] samples stay in cache between the matmul, the minimum and the cell sums.
BLOCK_ROWS = 4096
# Rows per block with block bounds: smaller blocks of cell-sorted samples span fewer cells
# (more points ruled out) but add a loop step each.
BOUNDED_BLOCK_ROWS = 1024
# "auto" uses block bounds from this many samples and points on (below, the bounds cost more than they save).
BOUNDED_MIN_ROWS = 8 * BOUNDED_BLOCK_ROWS
BOUNDED_MIN_POINTS = 32
# Below this fraction of blocks with few enough candidates to gather, Lloyd stops using the bounds.
BOUNDED_MIN_GATHERED = 0.5


def _blocks(n: int, block_rows: int) -> tuple[int, int]:
    """(number of blocks, rows per block) covering n rows with blocks of at most block_rows rows.

    Where a count between ceil(n / block_rows) and twice that divides n, the blocks are
    exact: the [n, d] samples reshape into them with no copy. A padded copy is a fresh
    buffer of n x d floats in every call (50,000 x 256: about 36 ms on one core, mostly
    first touches of its pages, 7% of 20 plain iterations there); otherwise rows a
    multiple of 8, with fewer than 8 rows of padding per block.
    """
    count = -(-n // block_rows)
    exact = next((c for c in range(count, 2 * count + 1) if n % c == 0), None)
    if exact is not None:
        return exact, n // exact
    rows = -(-n // count)
    return count, -(-rows // 8) * 8


def _assign_and_accumulate(x_blocks, mass_blocks, sq_blocks, points):
    """One pass over the samples, block by block: nearest point, cell sums and cell masses.

    x_blocks: [B, r, d]; mass_blocks, sq_blocks: [B, r] (mass and |x|^2); points: [K, d].
    Returns assignment int32 [B, r], squared distance to it [B, r], cell sums of
    mass * x [K, d] and cell masses [K].
    """
    k, d = points.shape

    def block(carry, blk):
        sums, masses = carry
        xb, mb, sqb = blk
        assignment, d2_min = nearest(xb, points, sqb)
        sums = cell_sums(xb, mb, assignment, sums)
        masses = masses + jax.ops.segment_sum(mb, assignment, num_segments=k)
        return (sums, masses), (assignment, d2_min)

    zeros = (jnp.zeros((k, d), x_blocks.dtype), jnp.zeros((k,), x_blocks.dtype))
    if x_blocks.shape[0] == 1:
        (sums, masses), (assignment, d2_min) = block(zeros, (x_blocks[0], mass_blocks[0], sq_blocks[0]))
        return assignment[None], d2_min[None], sums, masses
    (sums, masses), (assignment, d2_min) = jax.lax.scan(block, zeros, (x_blocks, mass_blocks, sq_blocks))
    return assignment, d2_min, sums, masses


def _padded_blocks(x: jax.Array, mass: jax.Array, block_rows: int):
    """x [n, d], mass [n] in blocks of about block_rows rows: ([B, r, d], [B, r], [B, r] |x|^2).

    Appended rows are zeros with zero mass: they join no cell and are cut from the outputs.
    """
    n, d = x.shape
    count, rows = _blocks(n, block_rows)
    pad = count * rows - n
    if pad:
        x, mass = jnp.pad(x, ((0, pad), (0, 0))), jnp.pad(mass, (0, pad))
    x_blocks = x.reshape(count, rows, d)
    return x_blocks, mass.reshape(count, rows), squared_norms(x_blocks)


def _plain_pass(blocks, n: int, points: jax.Array):
    """_assign_and_accumulate over `blocks` (_padded_blocks), outputs cut to the n samples:
    assignment int32 [n], squared distances [n], cell sums [K, d], cell masses [K]."""
    assignment, d2_min, sums, masses = _assign_and_accumulate(*blocks, points)
    return assignment.reshape(-1)[:n], d2_min.reshape(-1)[:n], sums, masses


def _reseed_empty(x, mass, centers, masses, d2_min):
    """The j-th empty cell takes the j-th farthest sample (distinct samples for distinct cells)."""
    k = centers.shape[0]
    empty = masses <= 0
    far = jax.lax.top_k(jnp.where(mass > 0, d2_min, -1.0), k)[1]
    rank = jnp.cumsum(empty) - 1
    return jnp.where(empty[:, None], x[far[jnp.clip(rank, 0, k - 1)]], centers)


def _new_centers(x, mass, points, sums, masses, d2_min):
    """Barycentres of the cells (an empty cell re-seeded), the squared shift summed over centres, any empty."""
    empty = jnp.any(masses <= 0)
    centers = sums / jnp.maximum(masses, jnp.finfo(x.dtype).tiny)[:, None]
    centers = jax.lax.cond(empty, _reseed_empty, lambda *args: args[2], x, mass, centers, masses, d2_min)
    return centers, jnp.sum(jnp.square(centers - points)), empty


def _keep_going(max_iter, threshold):
    def cond(state):
        i, shift, stable = state[-4:-1]
        return (i < max_iter) & (shift > threshold) & ~stable
    return cond


def _lloyd(x: jax.Array, mass: jax.Array, init: jax.Array, max_iter: int = 100, tol: float = 1e-4) -> Quantization:
    """Runs Lloyd iterations from `init` until the centres move less than the tolerance.

    Convergence follows scikit-learn: stop when the squared centre shift,
    summed over centres, is at most tol * (mean per-feature variance of mu),
    or when the assignment no longer changes. The returned `assignment`,
    `weights` and `distortion` belong to the returned `points`.

    Each iteration is one pass over the samples in blocks of about BLOCK_ROWS
    rows, computing per block the distances (one matmul), the nearest point
    and the cell sums while the block is in cache; then the barycentres. An
    empty cell is re-seeded at the sample farthest from its centre.

    Args:
      x: [n, d] samples. mass: [n] non-negative weights summing to 1.
      init: [K, d] initial centres (K <= n). max_iter: iteration bound (static).
      tol: relative tolerance (0 runs until the assignment is stable or max_iter).
    """
    x = x.astype(jnp.float32)
    mass = mass.astype(jnp.float32)
    n, d = x.shape
    k = init.shape[0]
    blocks = _padded_blocks(x, mass, BLOCK_ROWS)
    threshold = tolerance_threshold(x, mass, tol, blocks[2].reshape(-1)[:n])
    one_pass = functools.partial(_plain_pass, blocks, n)

    init_state = (
        init.astype(jnp.float32),
        jnp.full((n,), -1, jnp.int32),
        jnp.zeros((n,), jnp.float32),
        jnp.zeros((k,), jnp.float32),
        jnp.int32(0),
        jnp.float32(jnp.inf),
        jnp.bool_(False),
        jnp.bool_(False),
    )
    return _plain_iterations(x, mass, one_pass, init_state, max_iter, threshold)


def _plain_iterations(x, mass, one_pass, state, max_iter, threshold) -> Quantization:
    """Plain Lloyd iterations (one_pass: _plain_pass over the samples) from `state` = (points, assignment,
    squared distances, cell masses, iterations done, squared shift, stable, current) until _keep_going stops."""
    def final_pass(points):
        assignment, d2_min, _, masses = one_pass(points)
        return assignment, d2_min, masses

    def body(state):
        points, previous_assignment, _, _, i, _, _, _ = state
        assignment, d2_min, sums, masses = one_pass(points)
        # As in scikit-learn: an unchanged assignment is strict convergence.
        stable = jnp.all((assignment == previous_assignment) | (mass <= 0))
        centers, shift, empty = _new_centers(x, mass, points, sums, masses, d2_min)
        # A stable assignment with no empty cell gives back the same centres bit for bit,
        # so this pass's assignment, distances and masses already belong to the new centres.
        return centers, assignment, d2_min, masses, i + 1, shift, stable, stable & ~empty

    points, assignment, d2_min, masses, iterations, shift, stable, current = jax.lax.while_loop(
        _keep_going(max_iter, threshold), body, state)
    assignment, d2_min, masses = jax.lax.cond(
        current, lambda p: (assignment, d2_min, masses), final_pass, points,
    )
    return Quantization(
        points=points,
        weights=masses,
        assignment=assignment,
        distortion=jnp.sum(mass * d2_min),
        iterations=iterations,
        converged=(shift <= threshold) | stable,
    )


def _lloyd_bounded(x: jax.Array, mass: jax.Array, init: jax.Array, max_iter: int, tol: float = 1e-4) -> Quantization:
    """_lloyd with block bounds (pqdjax.quantize.block_bounds): the same iterates, fewer distances on clustered data.

    The first iteration runs in the input order; its assignment sorts the
    samples by cell, so that each block of BOUNDED_BLOCK_ROWS contiguous rows
    spans few cells. From the second iteration on, each block computes its
    distances only to the points its bounds leave as candidates. Where the
    first pass predicts that fewer than BOUNDED_MIN_GATHERED of the mass will
    have few enough candidates to gather (block_bounds.predicted_gatherable:
    unclustered data), nothing is sorted and every pass is plain; if after the
    fourth iteration fewer than BOUNDED_MIN_GATHERED of the blocks have few
    enough candidates, the remaining iterations are plain passes.
    Outputs are in the input order. Needs max_iter >= 1 (static).
    """
    x = x.astype(jnp.float32)
    mass = mass.astype(jnp.float32)
    n, d = x.shape
    k = init.shape[0]
    points = init.astype(jnp.float32)

    # Iteration 1, in the input order (the plain pass).
    plain_blocks = _padded_blocks(x, mass, BLOCK_ROWS)
    x_sq = plain_blocks[2].reshape(-1)[:n]
    threshold = tolerance_threshold(x, mass, tol, x_sq)
    plain_pass = functools.partial(_plain_pass, plain_blocks, n)
    first, first_d2, sums, masses = plain_pass(points)
    centers, shift, _ = _new_centers(x, mass, points, sums, masses, first_d2)

    # The rest on samples sorted by cell, the cells in the order of a nearest-neighbour tour of
    # their points, where the first pass predicts that the bounds will rule out enough; else
    # (unclustered data) plain passes in the input order, with no sorted copy of the samples.
    caps = block_bounds.candidate_caps(k)
    sorting = block_bounds.predicted_gatherable(first, first_d2, mass, centers, caps) >= BOUNDED_MIN_GATHERED
    # Without sorting: iterations 2.. are _lloyd's own plain passes in the input order, after its first.
    after_first = (centers, first, first_d2, masses, jnp.int32(1), shift, jnp.bool_(False), jnp.bool_(False))
    return jax.lax.cond(
        sorting,
        lambda: _bounded_rest(x, mass, x_sq, points, centers, first, first_d2, masses, shift, threshold, plain_pass, caps, max_iter),
        lambda: _plain_iterations(x, mass, plain_pass, after_first, max_iter, threshold),
    )


def _bounded_rest(x, mass, x_sq, points, centers, first, first_d2, masses, shift, threshold, plain_pass, caps, max_iter):
    """Iterations 2.. of _lloyd_bounded on the samples sorted by cell, with block bounds while they pay."""
    n, d = x.shape
    k = points.shape[0]
    order = block_bounds.tour_sorted_order(first, points)
    count, rows = _blocks(n, BOUNDED_BLOCK_ROWS)
    pad = count * rows - n
    x_blocks, mass_blocks, sq_blocks = block_bounds.gather_blocks(x, mass, x_sq, order, count, rows)
    xs, ms = x_blocks.reshape(count * rows, d), mass_blocks.reshape(-1)  # sorted samples, pad rows last

    def one_pass(points, bounds, pruning):
        """A pass with the bounds over the sorted blocks, or without them over the input's
        blocks (the plain pass's speed); outputs in the sorted order either way."""
        def bounded(points, bounds):
            assignment, d2_min, sums, masses, bounds = block_bounds.bounded_pass(
                x_blocks, mass_blocks, sq_blocks, points, bounds, caps)
            return assignment.reshape(-1)[:n], d2_min.reshape(-1)[:n], sums, masses, bounds

        def plain(points, bounds):
            assignment, d2_min, sums, masses = plain_pass(points)
            return assignment[order], d2_min[order], sums, masses, bounds

        return jax.lax.cond(pruning, bounded, plain, points, bounds)

    def body(state):
        points, bounds, pruning, was_pruning, previous_assignment, _, _, i, _, _, _ = state
        assignment, d2_min, sums, masses, bounds = one_pass(points, bounds, pruning)
        stable = jnp.all((assignment == previous_assignment) | (ms[:n] <= 0))
        centers, shift, empty = _new_centers(xs, ms, points, sums, masses, jnp.pad(d2_min, (0, pad)))
        # Pad rows copy the last sample, so they share its point.
        bounds = block_bounds.move(bounds, points, centers, jnp.pad(assignment, (0, pad), mode="edge").reshape(count, rows))
        # Where the bounds rule out too little (unclustered data), the rest of the iterations
        # run without them; they are judged from the third sorted pass, when the points
        # have stopped making the long first moves that loosen every bound.
        still_pruning = pruning & ((i < 3) | (block_bounds.gatherable(bounds, caps) >= BOUNDED_MIN_GATHERED))
        # As in _lloyd, a stable assignment gives back the same centres bit for bit when this
        # pass added the samples in the same order as the one before (same kind of pass).
        current = stable & ~empty & (pruning == was_pruning)
        return (centers, bounds, still_pruning, pruning, assignment, d2_min, masses, i + 1, shift, stable, current)

    init_state = (
        centers, block_bounds.BlockBounds.unknown(count, k), jnp.bool_(bool(caps)), jnp.bool_(False),
        first[order], first_d2[order], masses, jnp.int32(1), shift, jnp.bool_(False), jnp.bool_(False),
    )
    points, bounds, pruning, _, assignment, d2_min, masses, iterations, shift, stable, current = jax.lax.while_loop(
        _keep_going(max_iter, threshold), body, init_state)

    def final_pass(points, bounds, pruning):
        assignment, d2_min, _, masses, _ = one_pass(points, bounds, pruning)
        return assignment, d2_min, masses

    assignment, d2_min, masses = jax.lax.cond(
        current, lambda *_: (assignment, d2_min, masses), final_pass, points, bounds, pruning,
    )
    return Quantization(
        points=points,
        weights=masses,
        assignment=jnp.zeros((n,), jnp.int32).at[order].set(assignment),
        distortion=jnp.sum(ms[:n] * d2_min),
        iterations=iterations,
        converged=(shift <= threshold) | stable,
    )


def uses_block_bounds(n: int, k: int, max_iter, bounds: bool | None = None) -> bool:
    """Whether `lloyd` runs with block bounds: `bounds` if given (True needs a static max_iter >= 1),
    else from BOUNDED_MIN_ROWS samples and BOUNDED_MIN_POINTS points on."""
    static = isinstance(max_iter, int) and max_iter >= 1
    if bounds is None:
        return static and n >= BOUNDED_MIN_ROWS and k >= BOUNDED_MIN_POINTS
    if bounds and not static:
        raise ValueError(f"Lloyd with block bounds needs a static max_iter >= 1 (a Python int), got {max_iter!r}.")
    return bool(bounds)


def lloyd(
    x: jax.Array, mass: jax.Array, init: jax.Array, max_iter: int = 100, tol: float = 1e-4, bounds: bool | None = None,
) -> Quantization:
    """Lloyd iterations from `init` (see _lloyd); under jax.vmap, one measure after another.

    Vmapped, a while loop runs every measure for as many iterations as the
    slowest one and turns each branch into both branches; here vmap runs the
    measures in sequence (lax.map), each stopping on its own, as scikit-learn
    does when fitting one measure after another.

    Args:
      x: [n, d] samples. mass: [n] non-negative weights summing to 1.
      init: [K, d] initial centres (K <= n). max_iter: iteration bound (static).
      tol: relative tolerance (0 runs until the assignment is stable or max_iter).
      bounds: skip distances with block bounds (_lloyd_bounded; same iterates, faster
        on clustered data); None decides from the sizes (uses_block_bounds).
    Returns:
      Quantization of `x` with the points Lloyd converged to.
    """
    check_mass(mass, x.shape[:1])
    check_options("lloyd", max_iter=(max_iter, 1), tol=(tol, 0))
    with_bounds = uses_block_bounds(x.shape[0], init.shape[0], max_iter, bounds)
    # Python numbers stay static (tol = 0 then skips the variance pass); traced ones are operands.
    static_iter = max_iter if isinstance(max_iter, int) else None
    static_tol = float(tol) if isinstance(tol, (int, float)) else None
    traced = tuple(value for value, static in ((max_iter, static_iter), (tol, static_tol)) if static is None)
    return _one_measure_at_a_time(static_iter, static_tol, with_bounds)(x, mass, init, *traced)


@functools.lru_cache(maxsize=None)
def _one_measure_at_a_time(static_iter: int | None, static_tol: float | None, with_bounds: bool = False):
    """_lloyd (or _lloyd_bounded) as a custom_vmap function of (x, mass, init, then max_iter and tol where not static)."""

    @jax.custom_batching.custom_vmap
    def run(*args):
        x, mass, init, *traced = args
        traced = iter(traced)
        max_iter = static_iter if static_iter is not None else next(traced)
        tol = static_tol if static_tol is not None else next(traced)
        return (_lloyd_bounded if with_bounds else _lloyd)(x, mass, init, max_iter, tol)

    @run.def_vmap
    def run_batched(axis_size, in_batched, *args):
        args = tuple(a if batched else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))) for a, batched in zip(args, in_batched))
        out = jax.lax.map(lambda a: run(*a), args)
        return out, jax.tree.map(lambda _: True, out)

    return run


@dataclasses.dataclass(frozen=True)
class Lloyd:
    """Lloyd's algorithm from k-means++ seeds (static options; hashable, so a jit static argument).

    max_iter: iteration bound. tol: scikit-learn's relative tolerance.
    bounds: skip distances with block bounds (True, False, or None: from the sizes).
    """

    max_iter: int = 100
    tol: float = 1e-4
    bounds: bool | None = None

    def __post_init__(self):
        check_options("Lloyd", max_iter=(self.max_iter, 1), tol=(self.tol, 0))

    def __call__(self, x: jax.Array, mass: jax.Array, k: int, rng: jax.Array) -> Quantization:
        """x: [n, d], mass: [n] -> Quantization with K = k points."""
        return lloyd(x, mass, kmeans_plus_plus(x, mass, k, rng), self.max_iter, self.tol, self.bounds)
