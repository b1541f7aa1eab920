"""Lloyd with block bounds (pqdjax.quantize.block_bounds): valid bounds, the same iterates as plain Lloyd."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from pqdjax import quantize as q
from pqdjax.quantize.voronoi import squared_norms

block_bounds = importlib.import_module("pqdjax.quantize.block_bounds")
lloyd_module = importlib.import_module("pqdjax.quantize.lloyd")


def _mixture(n, d, clusters, seed, spread):
    """Gaussian mixture with unit-variance centres, as in the quantization benchmark: [n, d] float32."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (clusters, d))
    return (centers[rng.integers(0, clusters, n)] + rng.normal(0, spread, (n, d))).astype(np.float32)


def _uniform(n):
    return jnp.full((n,), 1.0 / n, jnp.float32)


def _sorted_blocks(x, init, rows):
    """Samples sorted by their cell under `init` (cells in tour order) and cut into blocks of `rows`, as _lloyd_bounded does."""
    first, _ = q.assign(x, init)
    order = block_bounds.tour_sorted_order(first, init)
    return block_bounds.gather_blocks(x, _uniform(x.shape[0]), squared_norms(x), order, -(-x.shape[0] // rows), rows)


def test_bounds_hold_and_rule_out_most_points():
    # High-dimensional clusters split by more points than clusters, as in the benchmark.
    x = jnp.asarray(_mixture(8192, 64, 8, seed=0, spread=0.5))
    k = 48
    init = q.kmeans_plus_plus(x, _uniform(len(x)), k, jax.random.key(0))
    x_blocks, mass_blocks, sq_blocks = _sorted_blocks(x, init, rows=1024)
    caps = block_bounds.candidate_caps(k)
    run = jax.jit(lambda p, b: block_bounds.bounded_pass(x_blocks, mass_blocks, sq_blocks, p, b, caps))
    xb64 = np.asarray(x_blocks, np.float64)
    points = init
    bounds = block_bounds.BlockBounds.unknown(x_blocks.shape[0], k)
    gathered = []
    for _ in range(5):
        candidates = np.asarray(jnp.sum(bounds.lower <= bounds.upper[:, None], axis=1))
        gathered.append(np.mean(candidates <= max(caps)))
        assignment, d2, sums, masses, new_bounds = run(points, bounds)
        # The same pass with every distance computed: the same nearest points, sums and masses.
        full = run(points, block_bounds.BlockBounds.unknown(x_blocks.shape[0], k))
        np.testing.assert_array_equal(np.asarray(assignment), np.asarray(full[0]))
        np.testing.assert_allclose(np.asarray(sums), np.asarray(full[2]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(masses), np.asarray(full[3]), atol=1e-6)
        centers = sums / masses[:, None]
        bounds = block_bounds.move(new_bounds, points, centers, assignment)
        points = centers
        # Oracle in float64: the moved bounds hold for the new points.
        dist = np.sqrt(((xb64[:, :, None, :] - np.asarray(points, np.float64)[None, None]) ** 2).sum(-1))  # [B, r, K]
        np.testing.assert_array_less(np.asarray(bounds.lower), dist.min(axis=1) + 1e-9)
        own = np.take_along_axis(dist, np.asarray(assignment)[..., None], axis=2)[..., 0]
        np.testing.assert_array_less(own.max(axis=1), np.asarray(bounds.upper) + 1e-9)
        # Every sample's nearest new point is still a candidate of its block.
        nearest = dist.argmin(axis=2)
        candidate = np.asarray(bounds.lower <= bounds.upper[:, None])
        assert np.take_along_axis(candidate, nearest, axis=1).all()
    assert gathered[0] == 0.0  # nothing known before the first pass
    # Once the points move less than in the first iteration, most blocks compute a few distances only.
    assert min(gathered[2:]) > 0.8, gathered


def test_bounded_lloyd_runs_the_same_iterations_as_plain_lloyd_and_scikit_learn():
    x = _mixture(6000, 8, 12, seed=1, spread=0.3)
    xj, mass, init, first, d2 = _first_pass(x, 40, seed=1)
    # The rule sorts this measure, so the bounded passes are what runs (not plain passes under another name).
    predicted = block_bounds.predicted_gatherable(first.assignment, d2, mass, first.points, block_bounds.candidate_caps(40))
    assert float(predicted) >= lloyd_module.BOUNDED_MIN_GATHERED
    plain = q.lloyd(xj, mass, init, max_iter=60, tol=1e-4, bounds=False)
    bounded = q.lloyd(xj, mass, init, max_iter=60, tol=1e-4, bounds=True)
    assert int(plain.iterations) > 5
    assert int(bounded.iterations) == int(plain.iterations)
    assert bool(bounded.converged) == bool(plain.converged)
    np.testing.assert_array_equal(np.asarray(bounded.assignment), np.asarray(plain.assignment))
    np.testing.assert_allclose(np.asarray(bounded.points), np.asarray(plain.points), atol=1e-5)
    np.testing.assert_allclose(np.asarray(bounded.weights), np.asarray(plain.weights), atol=1e-6)
    np.testing.assert_allclose(float(bounded.distortion), float(plain.distortion), rtol=1e-5)
    # An independent implementation from the same init: scikit-learn's KMeans in float64.
    ref = KMeans(40, init=np.asarray(init), n_init=1, max_iter=60, tol=1e-4, algorithm="lloyd").fit(x.astype(np.float64))
    assert int(bounded.iterations) == ref.n_iter_
    np.testing.assert_allclose(float(bounded.distortion) * len(x), ref.inertia_, rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(bounded.assignment), ref.labels_)


def test_bounded_lloyd_on_padded_blocks_of_long_rows_equals_plain_lloyd():
    """1,031 samples (prime: the sorted blocks are padded, 2 x 520) of d = 1,024 (cell sums by the row loop)."""
    count, rows = lloyd_module._blocks(1031, lloyd_module.BOUNDED_BLOCK_ROWS)
    assert count * rows > 1031
    x = _mixture(1031, 1024, 12, seed=2, spread=0.3)
    xj, mass, init, first, d2 = _first_pass(x, 40, seed=2)
    # The rule sorts this measure, so the sorted (padded) blocks and their bounds are what runs.
    predicted = block_bounds.predicted_gatherable(first.assignment, d2, mass, first.points, block_bounds.candidate_caps(40))
    assert float(predicted) >= lloyd_module.BOUNDED_MIN_GATHERED
    plain = q.lloyd(xj, mass, init, max_iter=30, tol=0.0, bounds=False)
    bounded = q.lloyd(xj, mass, init, max_iter=30, tol=0.0, bounds=True)
    assert int(bounded.iterations) == int(plain.iterations) > 1
    np.testing.assert_array_equal(np.asarray(bounded.assignment), np.asarray(plain.assignment))
    np.testing.assert_allclose(np.asarray(bounded.points), np.asarray(plain.points), atol=1e-5)
    np.testing.assert_allclose(float(bounded.distortion), float(plain.distortion), rtol=1e-5)


def test_candidate_caps_and_when_bounds_are_used():
    assert block_bounds.candidate_caps(100) == (8, 16, 32)
    assert block_bounds.candidate_caps(8) == ()  # nothing to gather below K = 8: always the full path
    assert all(cap % 8 == 0 and cap < 1000 for cap in block_bounds.candidate_caps(1000))
    big, few = lloyd_module.BOUNDED_MIN_ROWS, lloyd_module.BOUNDED_MIN_POINTS
    assert lloyd_module.uses_block_bounds(big, few, 100)
    assert not lloyd_module.uses_block_bounds(big - 1, few, 100)
    assert not lloyd_module.uses_block_bounds(big, few - 1, 100)
    assert not lloyd_module.uses_block_bounds(big, few, 100, bounds=False)
    assert lloyd_module.uses_block_bounds(10, 2, 100, bounds=True)
    with pytest.raises(ValueError, match="static max_iter"):
        lloyd_module.uses_block_bounds(10, 2, jnp.int32(5), bounds=True)


def _first_pass(x, k, seed):
    xj, mass = jnp.asarray(x), _uniform(len(x))
    init = q.kmeans_plus_plus(xj, mass, k, jax.random.key(seed))
    first = q.lloyd(xj, mass, init, max_iter=1, tol=0.0, bounds=False)
    d2 = np.sum((x - np.asarray(init)[np.asarray(first.assignment)]) ** 2, axis=1)
    return xj, mass, init, first, jnp.asarray(d2)


def test_the_rule_sorts_clustered_data_and_leaves_unclustered_data_plain():
    """The first pass's prediction (block_bounds.predicted_gatherable): on clusters split by several points each
    most cells keep few candidates; on standard normal samples (distances concentrate) none does."""
    k, caps = 48, block_bounds.candidate_caps(48)
    clustered = _mixture(9000, 64, 8, seed=0, spread=0.5)
    unclustered = np.random.default_rng(3).normal(size=(9000, 64)).astype(np.float32)
    predicted = {}
    for name, x in (("clustered", clustered), ("unclustered", unclustered)):
        xj, mass, init, first, d2 = _first_pass(x, k, seed=0)
        predicted[name] = float(block_bounds.predicted_gatherable(first.assignment, d2, mass, first.points, caps))
        # Whatever the rule decides, the iterates are plain Lloyd's.
        plain = q.lloyd(xj, mass, init, max_iter=30, tol=1e-4, bounds=False)
        bounded = q.lloyd(xj, mass, init, max_iter=30, tol=1e-4, bounds=True)
        assert int(bounded.iterations) == int(plain.iterations)
        np.testing.assert_array_equal(np.asarray(bounded.assignment), np.asarray(plain.assignment))
        np.testing.assert_allclose(np.asarray(bounded.points), np.asarray(plain.points), atol=1e-5)
    assert predicted["clustered"] >= 0.9 and predicted["unclustered"] <= 0.1, predicted
    assert lloyd_module.BOUNDED_MIN_GATHERED == 0.5


def test_predicted_gatherable_counts_points_within_twice_the_mean_radius():
    """A closed case: two cells of mean radius 1 whose points are 3 apart; a third point 1.5 from the first."""
    points = jnp.asarray([[0.0, 0.0], [3.0, 0.0], [0.0, 1.5]])
    assignment = jnp.asarray([0, 0, 1, 1, 2])
    d2 = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.25])  # radii: cell 0 -> 1, cell 1 -> 1, cell 2 -> 0.5
    mass = jnp.full((5,), 0.2)
    # within 2 r: cell 0 sees {0, 2} (3 > 2), cell 1 sees {1}, cell 2 sees {2} (1.5 > 1)
    assert float(block_bounds.predicted_gatherable(assignment, d2, mass, points, (1,))) == pytest.approx(0.6)
    assert float(block_bounds.predicted_gatherable(assignment, d2, mass, points, (2,))) == pytest.approx(1.0)
