"""Nearest-point assignment and Voronoi cell masses of any point set over any measure.

A measure is mu = sum_i m_i delta_{x_i} (x: [n, d], m: [n] >= 0; zero-mass rows
are padding and change nothing). For points c_1..c_K, cell k is the set of
samples whose nearest point is c_k (ties go to the lowest index); its mass
w_k = mu(cell_k) is the weight that makes sum_k w_k delta_{c_k} the W2-closest
measure on those points to mu, with W2^2 = E_mu[min_k |x - c_k|^2].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def squared_distances(x: jax.Array, points: jax.Array) -> jax.Array:
    """|x_i - c_k|^2 by the expanded form |x|^2 - 2 x.c + |c|^2, clamped at 0. [n, d], [K, d] -> [n, K]."""
    cross = jnp.matmul(x, points.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * cross + jnp.sum(points * points, axis=1)
    return jnp.maximum(d2, 0.0)


# Long rows (d >= LONG_ROW_PIECES * PIECE, a multiple of PIECE) are summed in pieces of PIECE entries.
PIECE = 128
LONG_ROW_PIECES = 8


def squared_norms(x: jax.Array) -> jax.Array:
    """|x_i|^2 over the last axis: [..., d] -> [...]. A matrix-vector product, which XLA:CPU
    runs several times faster than a row reduction; long rows as [..., d / 128, 128] pieces
    (a matrix-vector product each, then a sum over d / 128), since XLA:CPU's product with one
    long vector is slow (1,300 x 16,384, Stable Diffusion's latents of a class: 5.1 ms against
    26.8 ms; at d <= 1,024 the two are within 20%: python -m benchmarks.quantize --norms)."""
    d = x.shape[-1]
    ones = lambda n: jnp.ones(n, x.dtype)
    if d >= LONG_ROW_PIECES * PIECE and d % PIECE == 0:
        pieces = x.reshape(*x.shape[:-1], d // PIECE, PIECE)
        return jnp.sum(jnp.matmul(jnp.square(pieces), ones(PIECE), precision=jax.lax.Precision.HIGHEST), axis=-1)
    return jnp.matmul(jnp.square(x), ones(d), precision=jax.lax.Precision.HIGHEST)


# Rows of at least this length are "long": their cell sums are added row by row (cell_sums).
LONG_ROW = LONG_ROW_PIECES * PIECE
# From d >= this x K on (short rows), the cell sums are a one-hot matmul instead of a scatter.
ONE_HOT_DIM_PER_POINT = 128
# Long rows of at least this length unroll the row loop by 8 (fewer loop steps between long row adds).
UNROLLED_ROW = 8192


def row_loop_sums(x: jax.Array, mass: jax.Array, assignment: jax.Array, into: jax.Array) -> jax.Array:
    """`into` [k, d] plus m_i x_i added into row a_i, one sample after another in row order, in place.

    A fori_loop of dynamic slices: do not vmap it (it would become a scatter); vmapped
    Lloyd maps its measures one at a time instead (lloyd._one_measure_at_a_time).
    """
    def add(i, sums):
        row = jax.lax.dynamic_slice_in_dim(sums, assignment[i], 1) + mass[i] * jax.lax.dynamic_slice_in_dim(x, i, 1)
        return jax.lax.dynamic_update_slice_in_dim(sums, row, assignment[i], 0)
    return jax.lax.fori_loop(0, x.shape[0], add, into, unroll=8 if x.shape[1] >= UNROLLED_ROW else 1)


def cell_sums(x: jax.Array, mass: jax.Array, assignment: jax.Array, into: jax.Array) -> jax.Array:
    """`into` plus the mass-weighted sum of each cell's samples, s_c = sum_{i: a_i = c} m_i x_i:
    [r, d], [r], int [r] in [0, k), [k, d] -> [k, d]. (A pass adds its blocks into one running sum.)

    XLA:CPU's scatter (segment_sum) of the weighted rows first writes the weighted
    copy m * x, an [r, d] temporary: at 1,300 x 16,384 (Stable Diffusion's
    latents of a class, 85 MB) that costs more than the additions. So, by shape
    (python -m benchmarks.quantize --cell-sums):
      * long rows (d >= LONG_ROW): row_loop_sums, no temporary;
      * few points for the row length (d >= ONE_HOT_DIM_PER_POINT K): the
        mass-weighted one-hot assignment [r, K] times x, a matmul;
      * otherwise: the scatter of the weighted rows.
    """
    k, d = into.shape
    if d >= LONG_ROW:
        return row_loop_sums(x, mass, assignment, into)
    if d >= ONE_HOT_DIM_PER_POINT * k:
        weighted = (assignment[:, None] == jnp.arange(k)).astype(x.dtype) * mass[:, None]
        return into + jnp.matmul(weighted.T, x, precision=jax.lax.Precision.HIGHEST)
    return into + jax.ops.segment_sum(mass[:, None] * x, assignment, num_segments=k)


def nearest_partial(x: jax.Array, points: jax.Array, points_sq: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Partial distances |c|^2 - 2 x.c and the nearest point of each row: [b, d], [K, d], [K] ->
    (partial [b, K], int32 index [b], minimum [b]).

    One matmul, then the row minimum and the lowest index that attains it (two plain
    reductions, which XLA vectorises; a variadic argmin reduction and a gather are
    several times slower on CPU). A NaN row matches no minimum; the index is clamped
    so it stays in range.
    """
    k = points.shape[0]
    cross = jnp.matmul(x, points.T, precision=jax.lax.Precision.HIGHEST)
    partial = points_sq - 2.0 * cross
    minimum = jnp.min(partial, axis=1)
    index = jnp.min(jnp.where(partial == minimum[:, None], jnp.arange(k, dtype=jnp.int32), k), axis=1)
    return partial, jnp.minimum(index, k - 1), minimum


def nearest(x: jax.Array, points: jax.Array, x_sq: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Nearest point by the expanded distance, for one block of samples: [b, d], [K, d] -> (int32 [b], [b]).

    argmin_k |c_k|^2 - 2 x.c_k needs no |x|^2 (nearest_partial); |x|^2 is added back
    only to the minimum. x_sq: optional precomputed [b] |x|^2.
    """
    _, index, minimum = nearest_partial(x, points, jnp.sum(points * points, axis=1))
    x_sq = squared_norms(x) if x_sq is None else x_sq
    return index, jnp.maximum(minimum + x_sq, 0.0)


def assign(
    x: jax.Array, points: jax.Array, block_size: int | None = None, x_sq: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Nearest point of each sample.

    Args:
      x: [n, d] samples; points: [K, d].
      x_sq: optional [n] precomputed |x_i|^2 (loops that assign the same x repeatedly pass it).
      block_size: if given, the [n, K] distances are formed `block_size` rows
        at a time (lax.map), so memory is O(block_size * K) beyond x.
    Returns:
      (assignment int32 [n], squared distance to the nearest point [n]).
    """
    n = x.shape[0]
    if block_size is None or block_size >= n:
        return nearest(x, points, x_sq)
    blocks = -(-n // block_size)
    padded = jnp.pad(x, ((0, blocks * block_size - n), (0, 0)))
    a, d2 = jax.lax.map(lambda xb: nearest(xb, points), padded.reshape(blocks, block_size, -1))
    return a.reshape(-1)[:n], d2.reshape(-1)[:n]


def cell_masses(assignment: jax.Array, mass: jax.Array, k: int) -> jax.Array:
    """Mass of each Voronoi cell: [n] int, [n] -> [k]."""
    return jax.ops.segment_sum(mass, assignment, num_segments=k)


def voronoi_weights(x: jax.Array, mass: jax.Array, points: jax.Array, block_size: int | None = None) -> jax.Array:
    """Voronoi cell masses w_k = mu(cell_k) of `points` [K, d] over mu = (x [n, d], mass [n]) -> [K]."""
    assignment, _ = assign(x.astype(jnp.float32), points.astype(jnp.float32), block_size)
    return cell_masses(assignment, mass.astype(jnp.float32), points.shape[0])
