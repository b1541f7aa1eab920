import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from pqdjax import quantize as q


def _blobs(n=600, d=5, k=4, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    labels = rng.integers(0, k, n)
    return (centers[labels] + rng.normal(0, spread, (n, d))).astype(np.float32)


def _uniform(n):
    return jnp.full((n,), 1.0 / n, jnp.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lloyd_matches_sklearn_with_same_init(seed):
    x = np.random.default_rng(seed).normal(size=(800, 6)).astype(np.float32)  # no clear clusters: many iterations
    init = np.asarray(q.kmeans_plus_plus(jnp.asarray(x), _uniform(len(x)), 7, jax.random.key(seed)))
    ours = q.lloyd(jnp.asarray(x), _uniform(len(x)), jnp.asarray(init), max_iter=300, tol=1e-4)
    ref = KMeans(7, init=init, n_init=1, max_iter=300, tol=1e-4, algorithm="lloyd").fit(x.astype(np.float64))
    # sklearn's inertia is a sum; ours the mean (the measure has mass 1/n per sample).
    np.testing.assert_allclose(float(ours.distortion) * len(x), ref.inertia_, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.points), ref.cluster_centers_, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.assignment), ref.labels_)
    assert bool(ours.converged)


@pytest.mark.parametrize("n", [50_000, 9_000, 8_209, 4_096, 1_300])
def test_blocks_divide_the_samples_exactly_where_they_can(n):
    """Lloyd's blocks: exact (no padded copy) where a count in [ceil(n / rows), 2 ceil(n / rows)] divides n
    (50,000 -> 16 x 3,125; 9,000 -> 3 x 3,000), else padded by fewer than 8 rows per block (8,209 is prime)."""
    lloyd_module = importlib.import_module("pqdjax.quantize.lloyd")
    count, rows = lloyd_module._blocks(n, 4096)
    least = -(-n // 4096)
    divisors = [c for c in range(least, 2 * least + 1) if n % c == 0]
    assert rows <= 4096 and count * rows >= n
    if divisors:
        assert (count, rows) == (divisors[0], n // divisors[0])
    else:
        assert count == least and count * rows - n < 8 * count and rows % 8 == 0
    assert (n == 8_209) == (not divisors)


def test_lloyd_on_padded_blocks_matches_sklearn():
    """8,209 samples (prime: padded blocks, 3 x 2,744) in plain passes against scikit-learn from the same init."""
    x = np.random.default_rng(5).normal(size=(8_209, 8)).astype(np.float32)
    init = np.asarray(q.kmeans_plus_plus(jnp.asarray(x), _uniform(len(x)), 5, jax.random.key(5)))
    ours = q.lloyd(jnp.asarray(x), _uniform(len(x)), jnp.asarray(init), max_iter=50, tol=0.0, bounds=False)
    ref = KMeans(5, init=init, n_init=1, max_iter=50, tol=0.0, algorithm="lloyd").fit(x.astype(np.float64))
    np.testing.assert_allclose(float(ours.distortion) * len(x), ref.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(ours.assignment), ref.labels_)


@pytest.mark.parametrize("k", [10, 50])
def test_lloyd_matches_sklearn_at_stable_diffusion_latent_width(k):
    """The benchmark's Stable Diffusion shape (1,300 x 16,384) at reduced size: 260 latents of 4 x 32 x 32, a
    mixture like the benchmark's, K = 10 and 50, against scikit-learn from the same init in float64."""
    rng = np.random.default_rng(k)
    centers = rng.normal(size=(20, 4096))
    x = (centers[rng.integers(0, 20, 260)] + rng.normal(0, 0.5, (260, 4096))).astype(np.float32)
    init = np.asarray(q.kmeans_plus_plus(jnp.asarray(x), _uniform(len(x)), k, jax.random.key(k)))
    ours = q.lloyd(jnp.asarray(x), _uniform(len(x)), jnp.asarray(init), max_iter=100, tol=1e-4)
    ref = KMeans(k, init=init, n_init=1, max_iter=100, tol=1e-4, algorithm="lloyd").fit(x.astype(np.float64))
    np.testing.assert_allclose(float(ours.distortion) * len(x), ref.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(ours.assignment), ref.labels_)
    assert int(ours.iterations) == ref.n_iter_


@pytest.mark.parametrize("shape", [(300, 196), (300, 256), (30, 1024), (30, 1100), (3, 50, 2048), (40, 16_384)])
def test_squared_norms_of_short_and_long_rows_against_float64(shape):
    """Short rows in one matrix-vector product, long rows (d >= 1,024, a multiple of 128: 1,024 the first; 1,100 is
    not) summed in pieces of 128."""
    from pqdjax.quantize.voronoi import squared_norms

    x = np.random.default_rng(len(shape)).normal(1.0, 2.0, shape).astype(np.float32)
    expected = np.einsum("...d,...d->...", x.astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(np.asarray(jax.jit(squared_norms)(jnp.asarray(x))), expected, rtol=2e-6)


@pytest.mark.parametrize("shape", [(300, 196, 20), (300, 256, 2), (60, 1024, 5), (40, 8192, 50), (13, 16_384, 3)])
def test_cell_sums_of_every_kind_against_float64(shape):
    """Scatter (short rows), one-hot matmul (d >= 128 K), and the row loop of long rows (d >= 1,024; unrolled from
    8,192), added into a running sum, with mass zero on padding rows and an empty cell, against np.add.at in
    float64; the row loop forced on short rows too."""
    from pqdjax.quantize.voronoi import cell_sums, row_loop_sums

    r, d, k = shape
    rng = np.random.default_rng(d)
    x = rng.normal(1.0, 2.0, (r, d)).astype(np.float32)
    mass = rng.dirichlet(np.ones(r)).astype(np.float32)
    mass[-3:] = 0.0
    assignment = rng.integers(0, k - 1, r).astype(np.int32)  # cell k - 1 stays empty
    running = rng.normal(size=(k, d)).astype(np.float32)
    running[k - 1] = 0.0
    expected = running.astype(np.float64)
    np.add.at(expected, assignment, mass[:, None].astype(np.float64) * x)
    args = (jnp.asarray(x), jnp.asarray(mass), jnp.asarray(assignment), jnp.asarray(running))
    for fn in (cell_sums, row_loop_sums):
        got = np.asarray(jax.jit(fn)(*args))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert np.all(got[k - 1] == 0.0)


def test_kmeans_plus_plus_picks_distinct_weighted_samples():
    x = jnp.asarray(_blobs(n=300, k=5))
    mass = _uniform(300).at[:100].set(0.0)
    mass = mass / mass.sum()
    centers = np.asarray(q.kmeans_plus_plus(x, mass, 5, jax.random.key(0)))
    rows = [np.flatnonzero(np.all(np.asarray(x) == c, axis=1)) for c in centers]
    assert all(len(r) == 1 and r[0] >= 100 for r in rows)  # real samples, never zero-mass ones
    assert len({r[0] for r in rows}) == 5


def test_weights_are_cell_masses():
    x = jnp.asarray(_blobs())
    mass = jax.random.dirichlet(jax.random.key(1), jnp.ones(len(x)))
    out = q.quantize(x, mass, 4, jax.random.key(0))
    weights = np.asarray(out.weights)
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-5)
    # Independent oracle: brute-force nearest point in float64.
    d2 = ((np.asarray(x, np.float64)[:, None] - np.asarray(out.points, np.float64)[None]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    expected = np.bincount(nearest, weights=np.asarray(mass, np.float64), minlength=4)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    np.testing.assert_allclose(float(out.distortion), (np.asarray(mass) * d2.min(1)).sum(), rtol=1e-4)


def test_padding_changes_nothing():
    x = _blobs(n=200)
    padded = np.concatenate([x, np.random.default_rng(3).normal(0, 50, (57, x.shape[1])).astype(np.float32)])
    mass = np.concatenate([np.full(200, 1 / 200), np.zeros(57)]).astype(np.float32)
    init = q.kmeans_plus_plus(jnp.asarray(x), _uniform(200), 4, jax.random.key(0))
    a = q.lloyd(jnp.asarray(x), _uniform(200), init)
    b = q.lloyd(jnp.asarray(padded), jnp.asarray(mass), init)
    np.testing.assert_allclose(a.points, b.points, rtol=1e-6)
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-6)
    np.testing.assert_allclose(a.distortion, b.distortion, rtol=1e-6)


def test_batched_classes_equal_one_by_one():
    xs = np.stack([_blobs(n=150, seed=s) for s in range(3)])
    mass = np.full((3, 150), 1 / 150, np.float32)
    keys = jax.random.split(jax.random.key(0), 3)
    batched = q.quantize_classes(jnp.asarray(xs), jnp.asarray(mass), 4, keys)
    for c in range(3):
        single = q.quantize(jnp.asarray(xs[c]), jnp.asarray(mass[c]), 4, keys[c])
        np.testing.assert_allclose(batched.points[c], single.points, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched.weights[c], single.weights, rtol=1e-5)


def test_empty_cell_is_reseeded_not_nan():
    x = jnp.asarray(_blobs(n=100, k=2))
    far = jnp.full((1, x.shape[1]), 1e3)  # a centre no sample is closest to
    init = jnp.concatenate([x[:2], far])
    out = q.lloyd(x, _uniform(100), init, max_iter=50)
    assert np.all(np.isfinite(out.points))
    assert np.all(np.asarray(out.weights) > 0)


def test_voronoi_weights_minimise_w2():
    # Unbalanced clusters: uniform weights misrepresent them, Voronoi weights do not.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.3, (270, 2)), rng.normal(4, 0.3, (30, 2))]).astype(np.float32)
    mass = _uniform(len(x))
    out = q.quantize(jnp.asarray(x), mass, 3, jax.random.key(0))
    w2_voronoi = q.wasserstein2_exact(x, mass, out.points, out.weights)
    w2_uniform = q.wasserstein2_exact(x, mass, out.points, np.full(3, 1 / 3))
    assert w2_voronoi < w2_uniform
    # With Voronoi weights the nearest-point map is optimal: W2^2 = distortion, exactly.
    np.testing.assert_allclose(w2_voronoi**2, float(out.distortion), rtol=1e-5)
    # Sinkhorn at a small epsilon agrees with the exact LP.
    for weights, exact in ((out.weights, w2_voronoi), (jnp.full(3, 1 / 3), w2_uniform)):
        w2, ok = q.wasserstein2(jnp.asarray(x), mass, out.points, weights)
        assert bool(ok)
        np.testing.assert_allclose(float(w2), exact, rtol=2e-2)


def test_exact_w2_matches_an_lp_oracle():
    from scipy.optimize import linprog

    rng = np.random.default_rng(4)
    x, points = rng.normal(size=(12, 3)), rng.normal(size=(4, 3))
    mass, weights = rng.dirichlet(np.ones(12)), rng.dirichlet(np.ones(4))
    cost = ((x[:, None] - points[None]) ** 2).sum(-1)
    rows = np.kron(np.eye(12), np.ones((1, 4)))
    cols = np.kron(np.ones((1, 12)), np.eye(4))
    lp = linprog(cost.ravel(), A_eq=np.vstack([rows, cols[:-1]]), b_eq=np.concatenate([mass, weights[:-1]]), method="highs")
    np.testing.assert_allclose(q.wasserstein2_exact(x, mass, points, weights), np.sqrt(lp.fun), rtol=1e-9)
    # Zero-mass padding rows are ignored.
    padded = np.concatenate([x, 100 + x[:3]])
    np.testing.assert_allclose(
        q.wasserstein2_exact(padded, np.concatenate([mass, np.zeros(3)]), points, weights), np.sqrt(lp.fun), rtol=1e-9
    )


def test_w2_classes_is_exact_when_small_and_sinkhorn_when_large():
    xs = np.stack([_blobs(n=120, seed=s) for s in range(2)])
    mass = np.full((2, 120), 1 / 120, np.float32)
    points = xs[:, :5]
    weights = np.full((2, 5), 0.2, np.float32)
    exact, is_exact = q.wasserstein2_classes(xs, mass, points, weights)
    assert is_exact.all()
    np.testing.assert_allclose(exact[1], q.wasserstein2_exact(xs[1], mass[1], points[1], weights[1]), rtol=1e-6)
    approx, is_exact = q.wasserstein2_classes(xs, mass, points, weights, exact_max_size=100)
    assert not is_exact.any()
    np.testing.assert_allclose(approx, exact, rtol=2e-2)


def test_w2_of_a_measure_to_itself_is_small():
    x = jnp.asarray(_blobs(n=50))
    w2, _ = q.wasserstein2(x, _uniform(50), x, _uniform(50))
    spread = float(jnp.sqrt(jnp.mean(jnp.sum((x - x.mean(0)) ** 2, 1))))
    assert float(w2) < 0.05 * spread
    assert q.wasserstein2_exact(x, _uniform(50), x, _uniform(50)) < 1e-6


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_tolerance_threshold_is_tol_times_the_mean_feature_variance(offset):
    # offset 1e3: E|x|^2 - |E x|^2 would cancel to noise in float32, so the two-pass form is used.
    rng = np.random.default_rng(4)
    x = rng.normal(0, 1, (700, 9)) * rng.uniform(0.1, 3, 9) + offset
    mass = rng.dirichlet(np.ones(len(x)))
    mean = mass @ x
    expected = 1e-4 * np.mean(mass @ (x - mean) ** 2)  # float64 oracle
    tolerance_threshold = importlib.import_module("pqdjax.quantize.lloyd").tolerance_threshold
    threshold = tolerance_threshold(jnp.asarray(x, jnp.float32), jnp.asarray(mass, jnp.float32), 1e-4)
    np.testing.assert_allclose(float(threshold), expected, rtol=1e-3)


def test_restarts_keep_the_best_start_and_never_lose_to_the_first():
    from pqdjax.quantize.restarts import start_keys

    x, mass = jnp.asarray(_blobs(n=500, d=4, k=8, seed=4, spread=1.5)), _uniform(500)
    rng = jax.random.key(7)
    for base in (q.Lloyd(), q.CLVQ(batch_size=64, max_steps=50)):
        best = q.solver(base, n_init=6)(x, mass, 8, rng)
        alone = [base(x, mass, 8, key) for key in start_keys(rng, 6)]  # oracle: each start run alone
        distortions = np.asarray([float(a.distortion) for a in alone])
        assert distortions.max() > distortions.min() * 1.001  # the starts do differ here
        np.testing.assert_allclose(float(best.distortion), distortions.min(), rtol=1e-5)
        np.testing.assert_allclose(best.points, alone[int(np.argmin(distortions))].points, rtol=1e-5, atol=1e-5)
        # start 0 is the single start (CLVQ vmapped rounds differently in the last float digit)
        assert float(best.distortion) <= float(base(x, mass, 8, rng).distortion) * (1 + 1e-5)
    assert q.solver("lloyd", n_init=1) == q.Lloyd()  # one start: the plain solver, today's results exactly


def test_restarts_reach_sklearn_n_init_inertia_on_digits():
    """scikit-learn's digits, K = 10 per class: ten starts close most of the gap of one start to scikit-learn's best of 10."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ratios_one, ratios_ten = [], []
    for c in (2, 3):
        x = digits.data[digits.target == c].astype(np.float32)
        mass = _uniform(len(x))
        ref = KMeans(10, n_init=10, random_state=0, algorithm="lloyd").fit(x.astype(np.float64)).inertia_ / len(x)
        for n_init, ratios in ((1, ratios_one), (10, ratios_ten)):
            ours = q.quantize_classes(jnp.asarray(x)[None], mass[None], 10, jax.random.split(jax.random.key(c), 1),
                                      q.solver("lloyd", n_init=n_init))
            ratios.append(float(ours.distortion[0]) / ref)
    # measured: one start 1.9% above scikit-learn's best of 10 (its greedy k-means++ seeds better), ten 0.3%
    assert np.mean(ratios_ten) < min(np.mean(ratios_one) - 0.005, 1.01), (ratios_one, ratios_ten)


@pytest.mark.parametrize("mass, message", [
    (np.ones(20), r"mass must sum to 1 per measure, got sums from 20 to 20"),
    (np.full(19, 1 / 19), r"mass has shape \((1, )?19,?\); it must be \((1, )?20,?\)"),
    (np.r_[np.full(19, 1 / 18), -1 / 18], "mass must be finite and non-negative"),
    (np.r_[np.full(19, 1 / 19), np.nan], "mass must be finite and non-negative"),
])
def test_quantize_refuses_a_mass_that_is_not_a_probability(mass, message):
    x = jax.random.normal(jax.random.key(0), (20, 3))
    with pytest.raises(ValueError, match=message):
        q.quantize(x, jnp.asarray(mass, jnp.float32), 4, jax.random.key(1))
    with pytest.raises(ValueError, match=message):
        q.quantize_classes(x[None], jnp.asarray(mass, jnp.float32)[None], 4, jax.random.split(jax.random.key(1), 1))
    # the exported algorithms check it too
    with pytest.raises(ValueError, match=message):
        q.lloyd(x, jnp.asarray(mass, jnp.float32), x[:4])
    with pytest.raises(ValueError, match=message):
        q.clvq(x, jnp.asarray(mass, jnp.float32), x[:4], jax.random.key(2), batch_size=8)


@pytest.mark.parametrize("make, message", [
    (lambda: q.Lloyd(tol=-1.0), r"Lloyd: tol must be a number >= 0, got -1.0"),
    (lambda: q.solver("lloyd", max_iter=0), r"Lloyd: max_iter must be a number >= 1, got 0"),
    (lambda: q.CLVQ(batch_size=0), r"CLVQ: batch_size must be a number >= 1, got 0"),
    (lambda: q.solver("clvq", tol=float("nan")), r"CLVQ: tol must be a number >= 0, got nan"),
    (lambda: q.Barycenter(relative_epsilon=0.0), r"Barycenter: relative_epsilon must be a number >= 1e-12, got 0.0"),
    (lambda: q.lloyd(jnp.zeros((5, 2)), jnp.full(5, 0.2), jnp.zeros((2, 2)), max_iter=0), r"lloyd: max_iter must be a number >= 1, got 0"),
])
def test_solver_options_out_of_range_are_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()
