"""Per-block distance bounds that let Lloyd skip the points no sample of a block can be nearest to.

Lloyd's assignment step computes all n x K distances every iteration. Once the
samples are sorted by cell, a block of contiguous rows lies in a few cells,
and most points are far from all of its samples. For each block B and point
k we keep

    lower[B, k] <= min_{i in B} |x_i - c_k|          (every sample's distance to c_k)
    upper[B]    >= max_{i in B} |x_i - c_{a(i)}|     (every sample's distance to its own point)

A point with lower[B, k] > upper[B] is farther from each sample of B than
that sample's own point, so it is no sample's nearest point: the block's
distances are computed only against its candidates {k : lower[B, k] <= upper[B]},
gathered into a [cap, d] matrix (one small matmul) when there are at most
`cap` of them (a few static sizes), and against all K points otherwise. When the points move by
p_k, the bounds stay valid as lower[B, k] - p_k and upper[B] + max p_k over the
block's own points (triangle inequality), so the iterates are Lloyd's exactly
(the same test as Elkan 2003 and Hamerly 2010, per block instead of per sample,
which keeps the work in matmuls). On unclustered data every point stays a
candidate and each block takes the full path.

Rounding: the distances come from the expanded form |x|^2 - 2 x.c + |c|^2 in
float32, so the bounds are widened by `expansion_slack`, a bound on its
rounding error, and the moves by a few ulps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from pqdjax.quantize.voronoi import cell_sums, nearest_partial, squared_distances, squared_norms


@struct.dataclass
class BlockBounds:
    """Bounds of B blocks against K points (see the module docstring).

    Attributes:
      lower: [B, K] lower bound on the distance from any sample of the block to point k.
      upper: [B] upper bound on the distance from any sample of the block to its own point.
    """

    lower: jax.Array
    upper: jax.Array

    @classmethod
    def unknown(cls, blocks: int, k: int) -> "BlockBounds":
        """Bounds that rule nothing out (every point a candidate): the first pass computes them."""
        return cls(lower=jnp.zeros((blocks, k), jnp.float32), upper=jnp.full((blocks,), jnp.inf, jnp.float32))


def candidate_caps(k: int) -> tuple[int, ...]:
    """Static sizes of a block's gathered candidate sets, about K / 16, K / 8 and K / 4 (multiples of 8, below K).

    A block takes the smallest size that holds its candidates, or all K points.
    """
    sizes = {-(-k // divisor) * 8 for divisor in (128, 64, 32)}
    return tuple(sorted(size for size in sizes if size < k))


def chain_order(points: jax.Array) -> jax.Array:
    """A greedy nearest-neighbour tour of the points, [K, d] -> int32 [K] (a permutation starting at 0).

    Sorting samples by the tour position of their cell puts nearby cells next to each
    other, so a block of contiguous rows spans cells that are near one another.
    """
    k = points.shape[0]
    d2 = squared_distances(points, points)

    def step(i, carry):
        order, visited, current = carry
        following = jnp.argmin(jnp.where(visited, jnp.inf, d2[current])).astype(jnp.int32)
        return order.at[i].set(following), visited.at[following].set(True), following

    start = (jnp.zeros((k,), jnp.int32), jnp.zeros((k,), jnp.bool_).at[0].set(True), jnp.int32(0))
    return jax.lax.fori_loop(1, k, step, start)[0]


def tour_sorted_order(assignment: jax.Array, points: jax.Array) -> jax.Array:
    """Sample order that groups the cells, the cells along chain_order(points): int32 [n] -> int32 [n]."""
    k = points.shape[0]
    tour_position = jnp.zeros((k,), jnp.int32).at[chain_order(points)].set(jnp.arange(k, dtype=jnp.int32))
    return jnp.argsort(tour_position[assignment], stable=True)


def gather_blocks(x, mass, x_sq, order, count: int, rows: int):
    """Samples in `order`, cut into `count` blocks of `rows`: ([count, rows, d], [count, rows], [count, rows] |x|^2).

    x: [n, d]; mass, x_sq: [n]; order: int [n]. Pad rows repeat the last sample with zero
    mass, which keeps the last block's bounds as tight as the others'. One gather per array
    (copying x is most of the sorting's cost).
    """
    n, d = x.shape
    pad = count * rows - n
    rows_taken = jnp.concatenate([order, jnp.full((pad,), order[-1], order.dtype)])
    mass_blocks = jnp.where(jnp.arange(count * rows) < n, mass[rows_taken], 0.0)
    return x[rows_taken].reshape(count, rows, d), mass_blocks.reshape(count, rows), x_sq[rows_taken].reshape(count, rows)


def gatherable(bounds: BlockBounds, caps: tuple[int, ...]) -> jax.Array:
    """Fraction of blocks whose candidates fit the largest gathered size (0 without sizes)."""
    if not caps:
        return jnp.zeros((), jnp.float32)
    return jnp.mean(jnp.sum(bounds.lower <= bounds.upper[:, None], axis=1) <= max(caps))


def predicted_gatherable(assignment: jax.Array, d2: jax.Array, mass: jax.Array, points: jax.Array, caps: tuple[int, ...]) -> jax.Array:
    """Share of the mass whose cell is predicted to leave few enough candidates to gather, before any sorting.

    For a block inside cell a, lower[B, k] >= |c_a - c_k| - r and upper[B] <= r with r
    the block's largest distance to c_a, so points farther than 2 r from c_a are no
    candidates. The prediction takes r as the cell's mean distance r_a (a typical block,
    not its worst sample) and counts the points within 2 r_a of c_a; a cell whose count
    fits the largest cap counts as gatherable. Costs a K x K distance matrix.
    assignment: int [n]; d2: [n] squared distances to the assigned points; mass: [n]; points: [K, d].
    """
    if not caps:
        return jnp.zeros((), jnp.float32)
    k = points.shape[0]
    cell_mass = jax.ops.segment_sum(mass, assignment, k)
    radius = jax.ops.segment_sum(mass * jnp.sqrt(d2), assignment, k) / jnp.maximum(cell_mass, jnp.finfo(jnp.float32).tiny)
    within = jnp.sqrt(squared_distances(points, points)) <= 2.0 * radius[:, None]
    return jnp.sum(cell_mass * (jnp.sum(within, axis=1) <= max(caps))) / jnp.maximum(jnp.sum(cell_mass), jnp.finfo(jnp.float32).tiny)


def expansion_slack(x_sq_max: jax.Array, points_sq_max: jax.Array, d: int) -> jax.Array:
    """Bound on the float32 rounding error of |x|^2 - 2 x.c + |c|^2 (a d-term dot product)."""
    return 2.0 * (d + 2) * jnp.finfo(jnp.float32).eps * (x_sq_max + points_sq_max)


def bounded_block(xb, mb, sqb, points, points_sq, lower, upper, caps: tuple[int, ...], sums):
    """Nearest points, cell sums and new bounds of one block, computing only candidate distances.

    Args:
      xb: [r, d] samples; mb: [r] masses; sqb: [r] |x|^2.
      points: [K, d]; points_sq: [K] |c|^2.
      lower: [K], upper: scalar: this block's bounds, valid for `points`.
      caps: static candidate-set sizes (candidate_caps); more candidates take the full path.
      sums: [K, d] the pass's running cell sums, which this block's are added into.
    Returns:
      assignment int32 [r] (lowest index among equally near points, as `voronoi.nearest`),
      squared distance to it [r], `sums` plus this block's cell sums of mass * x [K, d], cell masses [K], and the
      block's new (lower [K], upper), exact up to the rounding slack.
    """
    k, d = points.shape
    candidates = lower <= upper
    count = jnp.sum(candidates)
    slack = expansion_slack(jnp.max(sqb), jnp.max(points_sq), d)

    def nearest_among(rows_points, rows_sq):
        # Position (lowest among ties) of each sample's nearest row, its partial distance, and
        # the block's smallest squared distance to each row.
        partial, position, minimum = nearest_partial(xb, rows_points, rows_sq)
        return position, minimum, jnp.min(partial + sqb[:, None], axis=0)

    def among_candidates(cap):
        def run(_):
            # Candidates in ascending order, padded with the first one: a repeat comes after its
            # first occurrence, so it never wins a tie, and the lowest position is the lowest index.
            index = jnp.nonzero(candidates, size=cap, fill_value=k)[0].astype(jnp.int32)
            index = jnp.where(index == k, index[0], index)
            position, minimum, column_min = nearest_among(points[index], points_sq[index])
            # Non-candidates keep their (still valid) lower bound; repeats write the same value.
            return index[position], minimum, lower.at[index].set(jnp.sqrt(jnp.maximum(column_min - slack, 0.0)))
        return run

    def against_all(_):
        assignment, minimum, column_min = nearest_among(points, points_sq)
        return assignment, minimum, jnp.sqrt(jnp.maximum(column_min - slack, 0.0))

    # Branch i gathers caps[i] candidates; the last branch computes all K distances.
    sizes = jnp.asarray(caps + (k,), jnp.int32)
    branch = jnp.where(count >= 1, jnp.argmax(count <= sizes), len(caps))
    assignment, minimum, new_lower = jax.lax.switch(branch, [among_candidates(cap) for cap in caps] + [against_all], None)
    sums = cell_sums(xb, mb, assignment, sums)
    masses = jax.ops.segment_sum(mb, assignment, num_segments=k)
    d2_min = jnp.maximum(minimum + sqb, 0.0)
    new_upper = jnp.sqrt(jnp.max(d2_min) + slack)
    return assignment, d2_min, sums, masses, (new_lower, new_upper)


def bounded_pass(x_blocks, mass_blocks, sq_blocks, points, bounds: BlockBounds, caps: tuple[int, ...]):
    """One assignment-and-accumulation pass over all blocks with their bounds.

    x_blocks: [B, r, d]; mass_blocks, sq_blocks: [B, r]; points: [K, d]; bounds for `points`.
    Returns assignment int32 [B, r], squared distances [B, r], cell sums [K, d],
    cell masses [K], and the bounds recomputed for `points`.
    """
    k, d = points.shape
    points_sq = squared_norms(points)

    def block(carry, blk):
        sums, masses = carry
        xb, mb, sqb, lower, upper = blk
        assignment, d2_min, sums, block_masses, new_bounds = bounded_block(
            xb, mb, sqb, points, points_sq, lower, upper, caps, sums)
        return (sums, masses + block_masses), (assignment, d2_min, new_bounds)

    zeros = (jnp.zeros((k, d), x_blocks.dtype), jnp.zeros((k,), x_blocks.dtype))
    (sums, masses), (assignment, d2_min, (lower, upper)) = jax.lax.scan(
        block, zeros, (x_blocks, mass_blocks, sq_blocks, bounds.lower, bounds.upper))
    return assignment, d2_min, sums, masses, BlockBounds(lower=lower, upper=upper)


def move(bounds: BlockBounds, old_points: jax.Array, new_points: jax.Array, assignment: jax.Array) -> BlockBounds:
    """Bounds for `new_points` [K, d] from bounds for `old_points` [K, d] (triangle inequality).

    assignment: int [B, r], each block's samples' points (old_points' cells): a block's
    upper bound grows by the largest step among its own points.
    """
    d = new_points.shape[1]
    eps = jnp.finfo(jnp.float32).eps
    step = jnp.sqrt(jnp.sum(jnp.square(new_points - old_points), axis=1))
    # Rounding of the difference and of its norm: a few ulps of the points' size.
    scale = jnp.sqrt(jnp.max(jnp.sum(jnp.square(new_points), axis=1)) + jnp.max(jnp.sum(jnp.square(old_points), axis=1)))
    step = step * (1.0 + 4.0 * eps) + 2.0 * (d + 2) ** 0.5 * eps * scale
    return BlockBounds(lower=bounds.lower - step[None, :], upper=bounds.upper + jnp.max(step[assignment], axis=1))
