"""The three quantizers (Lloyd, CLVQ, barycenter) through the entry point: closed forms,
fixed points, padding, jit vs eager, sharding over 8 fake devices, degenerate inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from pqdjax import quantize as q

METHODS = ("lloyd", "clvq", "barycenter")


def _normal_quantiles(n=2001):
    """The 1-D standard normal as n equal-mass quantile points: [n, 1]."""
    return norm.ppf((np.arange(n) + 0.5) / n).astype(np.float32)[:, None]


def _blobs(n=400, d=3, k=4, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = 5.0 * np.eye(k, d) if k <= d else rng.normal(0, 5, (k, d))
    labels = np.arange(n) % k
    return (centers[labels] + rng.normal(0, spread, (n, d))).astype(np.float32)


def _uniform(n):
    return jnp.full((n,), 1.0 / n, jnp.float32)


@pytest.mark.parametrize("method", METHODS)
def test_optimal_two_point_quantizer_of_the_standard_normal(method):
    # Closed form: the optimal 2-point quantizer of N(0, 1) is +-sqrt(2/pi), each with mass 1/2,
    # distortion 1 - 2/pi. Every method must find it (the barycenter too: the cells have equal mass).
    x = _normal_quantiles()
    # Tight tolerances: in 1-D the fixed-point iterations creep towards the optimum.
    solver = {"lloyd": q.Lloyd(max_iter=300, tol=0.0), "clvq": q.CLVQ(), "barycenter": q.Barycenter(max_iter=200, tol=1e-10)}
    out = q.quantize(jnp.asarray(x), _uniform(len(x)), 2, jax.random.key(0), solver[method])
    # CLVQ's 1/count steps keep the early, misassigned samples in its means: looser on the points.
    tol = 6e-2 if method == "clvq" else 5e-3
    np.testing.assert_allclose(np.sort(np.asarray(out.points)[:, 0]), [-np.sqrt(2 / np.pi), np.sqrt(2 / np.pi)], atol=tol)
    np.testing.assert_allclose(np.asarray(out.weights), [0.5, 0.5], atol=tol)
    np.testing.assert_allclose(float(out.distortion), 1 - 2 / np.pi, rtol=1e-2 if method == "clvq" else 3e-3)  # the grid's tails differ slightly


def test_lloyd_three_point_quantizer_of_the_standard_normal():
    # Max (1960): the optimal 3-point quantizer of N(0, 1) is {-1.2240, 0, 1.2240}, distortion 0.1902.
    x = _normal_quantiles(4001)
    out = q.quantize(jnp.asarray(x), _uniform(len(x)), 3, jax.random.key(1), q.Lloyd(max_iter=300, tol=0.0))
    np.testing.assert_allclose(np.sort(np.asarray(out.points)[:, 0]), [-1.2240, 0.0, 1.2240], atol=2e-3)
    np.testing.assert_allclose(float(out.distortion), 0.1902, rtol=5e-3)


def test_clvq_reaches_a_lloyd_fixed_point_on_separated_blobs():
    x = jnp.asarray(_blobs(n=2000, d=4, k=4))
    mass = _uniform(2000)
    online = q.quantize(x, mass, 4, jax.random.key(3), q.CLVQ(batch_size=128, max_steps=200))
    # Lloyd started at CLVQ's points stops at once and barely moves them: they are (almost) a fixed point.
    polished = q.lloyd(x, mass, online.points)
    assert int(polished.iterations) <= 2
    np.testing.assert_array_equal(np.asarray(polished.assignment), np.asarray(online.assignment))
    np.testing.assert_allclose(np.asarray(online.points), np.asarray(polished.points), atol=0.03)
    np.testing.assert_allclose(float(online.distortion), float(polished.distortion), rtol=1e-2)


def test_clvq_stream_reads_batches_and_estimates_cell_masses():
    x = _blobs(n=4096, d=4, k=4, seed=5)
    x = x[np.random.default_rng(0).permutation(len(x))]
    calls = []

    def batches():
        calls.append(1)
        return (x[i : i + 256] for i in range(0, len(x), 256))

    init = x[[np.flatnonzero(np.argmax(x, 1) == j)[0] for j in range(4)]]  # one sample per blob
    out = q.clvq_stream(batches, init, epochs=2)
    assert len(calls) == 3 and out.steps == 32  # 2 learning passes + 1 measuring pass, 16 batches each
    exact = q.quantize(jnp.asarray(x), _uniform(len(x)), 4, jax.random.key(0))
    order = np.argsort(np.asarray(exact.points)[:, 0])
    mine = np.argsort(np.asarray(out.points)[:, 0])
    np.testing.assert_allclose(np.asarray(out.points)[mine], np.asarray(exact.points)[order], atol=0.05)
    np.testing.assert_allclose(np.asarray(out.weights)[mine], np.asarray(exact.weights)[order], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.mass_estimate)[mine], np.asarray(exact.weights)[order], atol=1e-6)
    np.testing.assert_allclose(float(out.distortion), float(exact.distortion), rtol=1e-2)


def test_barycenter_with_k_equal_n_reproduces_the_measure():
    x = np.random.default_rng(2).normal(size=(24, 3)).astype(np.float32)
    sharp = q.Barycenter(relative_epsilon=1e-3, sinkhorn_max_iterations=20000)
    out = q.quantize(jnp.asarray(x), _uniform(24), 24, jax.random.key(0), sharp)
    assert bool(out.converged)
    order = np.lexsort(np.asarray(out.points).T)
    np.testing.assert_allclose(np.asarray(out.points)[order], x[np.lexsort(x.T)], atol=1e-3)
    assert float(out.distortion) < 1e-6
    np.testing.assert_allclose(np.asarray(out.weights), np.full(24, 1 / 24), atol=1e-6)


def test_barycenter_improves_lloyd_points_under_uniform_weights():
    # Unbalanced blobs: with uniform weights (D4M's), moving Lloyd's points by the barycenter
    # fixed point brings them W2-closer to mu; Lloyd's points keep the lower distortion.
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1.0, (300, 2)), rng.normal(6, 0.3, (60, 2))]).astype(np.float32)
    mass = _uniform(len(x))
    uniform = np.full(4, 0.25)
    lloyd = q.quantize(jnp.asarray(x), mass, 4, jax.random.key(0), "lloyd")
    bary = q.free_support_barycenter(jnp.asarray(x), mass, lloyd.points)
    assert bool(bary.converged)
    assert q.wasserstein2_exact(x, mass, bary.points, uniform) < 0.98 * q.wasserstein2_exact(x, mass, lloyd.points, uniform)
    assert float(lloyd.distortion) <= float(bary.distortion)


@pytest.mark.parametrize("method", METHODS)
def test_zero_mass_padding_changes_nothing(method):
    x = _blobs(n=100, seed=1)
    padded = np.concatenate([x, np.random.default_rng(3).normal(0, 50, (30, x.shape[1])).astype(np.float32)])
    mass = np.concatenate([np.full(100, 1 / 100), np.zeros(30)]).astype(np.float32)
    solver = q.solver(method, max_steps=30, batch_size=64) if method == "clvq" else q.solver(method, max_iter=20)
    a = q.quantize(jnp.asarray(x), _uniform(100), 3, jax.random.key(0), solver)
    b = q.quantize(jnp.asarray(padded), jnp.asarray(mass), 3, jax.random.key(0), solver)
    np.testing.assert_allclose(a.points, b.points, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.weights, b.weights, atol=1e-6)
    np.testing.assert_allclose(a.distortion, b.distortion, rtol=1e-5)
    np.testing.assert_array_equal(a.assignment, b.assignment[:100])
    assert int(a.iterations) == int(b.iterations)


def test_jit_equals_eager():
    x = jnp.asarray(_blobs(n=60, seed=2))
    jitted = jax.jit(lambda x, m, r: q.quantize(x, m, 3, r))(x, _uniform(60), jax.random.key(1))
    with jax.disable_jit():
        eager = q.quantize(x, _uniform(60), 3, jax.random.key(1))
    np.testing.assert_allclose(jitted.points, eager.points, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(jitted.assignment, eager.assignment)
    assert int(jitted.iterations) == int(eager.iterations)


@pytest.mark.parametrize("method", METHODS)
def test_sharded_over_8_devices_equals_unsharded(method):
    assert jax.device_count() == 8
    # 5 classes of unequal size, padded: the class axis is padded to 8 for the mesh.
    sizes = [60, 40, 60, 30, 50]
    xs = np.zeros((5, 60, 3), np.float32)
    mass = np.zeros((5, 60), np.float32)
    for c, n in enumerate(sizes):
        xs[c, :n] = _blobs(n=n, seed=c)
        mass[c, :n] = 1 / n
    keys = jax.random.split(jax.random.key(0), 5)
    solver = q.solver(method, max_steps=20, batch_size=64) if method == "clvq" else q.solver(method, max_iter=10)
    single = q.quantize_classes(xs, mass, 3, keys, solver)
    sharded = q.quantize_classes(xs, mass, 3, keys, solver, mesh=q.class_mesh())
    np.testing.assert_allclose(sharded.points, single.points, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sharded.weights, single.weights, atol=1e-6)
    np.testing.assert_allclose(sharded.distortion, single.distortion, rtol=1e-4)
    np.testing.assert_array_equal(sharded.iterations, single.iterations)
    # The padded classes are separate problems: a class with padding equals itself alone.
    alone = q.quantize(jnp.asarray(xs[3, :30]), _uniform(30), 3, keys[3], solver)
    np.testing.assert_allclose(sharded.points[3], alone.points, rtol=1e-4, atol=1e-4)


def test_duplicates_and_k_at_or_above_the_number_of_distinct_points():
    base = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    x = jnp.asarray(np.repeat(base, 4, axis=0))  # 20 samples, 5 distinct
    mass = _uniform(20)
    for k in (5, 8, 20):  # K = distinct, above it, K = n
        out = q.quantize(x, mass, k, jax.random.key(0))
        points, weights = np.asarray(out.points), np.asarray(out.weights)
        assert np.all(np.isfinite(points)) and np.all(np.isfinite(weights))
        np.testing.assert_allclose(float(out.distortion), 0.0, atol=1e-6)
        np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
        # Every distinct sample is a point with mass 1/5; the surplus points repeat samples with zero weight.
        for b in base:
            on = np.all(np.isclose(points, b, atol=1e-6), axis=1)
            np.testing.assert_allclose(weights[on].sum(), 0.2, atol=1e-6)
        assert np.sum(weights > 0) == 5
    with pytest.raises(ValueError, match="K = 21 .* 20 samples"):
        q.quantize(x, mass, 21, jax.random.key(0))


def test_voronoi_weights_of_any_points_match_brute_force():
    rng = np.random.default_rng(7)
    x, points = rng.normal(size=(300, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    mass = rng.dirichlet(np.ones(300)).astype(np.float32)
    nearest = ((x[:, None].astype(np.float64) - points[None]) ** 2).sum(-1).argmin(1)
    expected = np.bincount(nearest, weights=mass, minlength=6)
    np.testing.assert_allclose(q.voronoi_weights(x, mass, points), expected, atol=1e-6)
    np.testing.assert_allclose(q.voronoi_weights(x, mass, points, block_size=64), expected, atol=1e-6)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown quantization method 'kmeans'"):
        q.quantize(jnp.zeros((4, 2)), _uniform(4), 2, jax.random.key(0), "kmeans")


def test_config_selects_each_method():
    from configs import default
    from pqdjax.config_checks import KNOWN_QUANTIZERS, ConfigError, validate_config
    from pqdjax.stages.quantize import solver_from_config

    assert set(KNOWN_QUANTIZERS) == set(q.METHODS)
    config = default.get_config()
    default_n_init = config.quantize.n_init
    for method in KNOWN_QUANTIZERS:
        config.quantize.method, config.quantize.n_init = method, default_n_init
        validate_config(config)
        chosen = solver_from_config(config.quantize)
        assert isinstance(chosen, q.Restarts) and chosen.n_init == config.quantize.n_init > 1
        assert isinstance(chosen.solver, q.METHODS[method])
        config.quantize.n_init = 1  # one start: the solver itself, no Restarts around it
        assert type(solver_from_config(config.quantize)) is q.METHODS[method]
    config.quantize.n_init = 0
    with pytest.raises(ConfigError, match="config.quantize.n_init"):
        validate_config(config)
    config.quantize.n_init = 1
    config.quantize.method = "kmeans"
    with pytest.raises(ConfigError, match="config.quantize.method"):
        validate_config(config)
