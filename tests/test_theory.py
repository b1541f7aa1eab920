"""pqdjax.theory against published tables, closed forms, scipy and Monte Carlo."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from pqdjax.quantize import Lloyd, quantize
from pqdjax.theory import diffusion, mixture, normal, rates


# Max (1960), Table I: optimal quantizers of N(0, 1) (positive half) and their mean squared error.
MAX_1960 = {
    1: ([0.0], 1.0),
    2: ([0.7980], 0.3634),
    3: ([0.0, 1.2240], 0.1902),
    4: ([0.4528, 1.5104], 0.1175),
    8: ([0.2451, 0.7560, 1.3440, 2.1520], 0.03454),
}


@pytest.mark.parametrize("k", sorted(MAX_1960))
def test_normal_optimal_quantizer_matches_max_table(k):
    points, weights, dist = normal.normal_optimal_quantizer(k)
    half, mse = MAX_1960[k]
    np.testing.assert_allclose(np.asarray(points)[k // 2:], half, atol=6e-4)
    np.testing.assert_allclose(points, -points[::-1], atol=1e-5)  # symmetric
    assert float(dist) == pytest.approx(mse, rel=2e-3)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


def test_normal_closed_forms_agree_with_scipy_and_with_lloyd_on_samples():
    points, weights, dist = normal.normal_optimal_quantizer(5)
    # the cell masses and the distortion by scipy's cdf and numerical integration
    edges = np.concatenate([[-np.inf], 0.5 * (points[1:] + points[:-1]), [np.inf]])
    np.testing.assert_allclose(weights, np.diff(stats.norm.cdf(edges)), atol=1e-6)
    grid = np.linspace(-9, 9, 200001)
    d2 = np.min((grid[:, None] - np.asarray(points)[None]) ** 2, axis=1)
    assert float(dist) == pytest.approx(np.trapezoid(d2 * stats.norm.pdf(grid), grid), rel=1e-4)
    # the library's Lloyd on a large sample finds the same quantizer
    x = jax.random.normal(jax.random.key(0), (10000, 1))
    q = quantize(x, jnp.full(10000, 1 / 10000), 5, jax.random.key(1), Lloyd(max_iter=200, tol=0.0))
    np.testing.assert_allclose(np.sort(q.points[:, 0]), points, atol=0.05)


def test_zador_normal_distortion_is_the_panter_dite_limit():
    assert float(normal.zador_normal_distortion(1, 1)) == pytest.approx(math.sqrt(3) * math.pi / 2, rel=1e-6)
    # the optimal distortion of N(0, 1) approaches it: K^2 e_K^2 -> sqrt(3) pi / 2
    ratio = float(normal.normal_optimal_quantizer(32)[2] / normal.zador_normal_distortion(32, 1))
    assert 0.9 < ratio < 1.0
    with pytest.raises(ValueError, match="known exactly"):
        normal.zador_normal_distortion(8, 3)


def _mixture_2d():
    return mixture.gaussian_mixture([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.0, 1.0], [0.5, -2.0]], [0.5, 0.8, 0.3])


def test_score_is_the_gradient_of_the_log_density():
    mix = _mixture_2d()
    x = jax.random.normal(jax.random.key(0), (16, 2)) * 2
    expected = jax.vmap(jax.grad(lambda y: mixture.log_density(mix, y[None])[0]))(x)
    np.testing.assert_allclose(mixture.score(mix, x), expected, rtol=1e-4, atol=1e-4)
    # log density against scipy
    scipy_density = sum(
        w * stats.multivariate_normal(m, v * np.eye(2)).pdf(np.asarray(x))
        for w, m, v in zip(np.asarray(mix.weights), np.asarray(mix.means), np.asarray(mix.variances))
    )
    np.testing.assert_allclose(np.exp(mixture.log_density(mix, x)), scipy_density, rtol=1e-4)


def test_noised_mixture_matches_monte_carlo_noising():
    mix = _mixture_2d()
    points = mixture.point_mixture(jnp.array([[0.0, 1.0], [2.0, -1.0]]), jnp.array([0.25, 0.75]))
    for measure in (mix, points):
        x0 = mixture.sample(measure, jax.random.key(1), 50000)
        xt = 0.6 * x0 + 0.8 * jax.random.normal(jax.random.key(2), x0.shape)
        mean, cov = mixture.mean_and_covariance(mixture.noised(measure, 0.6, 0.8))
        np.testing.assert_allclose(jnp.mean(xt, 0), mean, atol=0.02)
        np.testing.assert_allclose(jnp.cov(xt.T), cov, atol=0.04)


def test_wasserstein_1d_closed_forms():
    a = mixture.gaussian_mixture([1.0], [0.3], [1.5])
    b = mixture.gaussian_mixture([1.0], [-0.4], [0.7])
    # W2^2 between Gaussians: (m1 - m2)^2 + (s1 - s2)^2
    assert float(mixture.wasserstein_1d(a, b, n_levels=4000)) == pytest.approx(math.sqrt(0.7**2 + 0.8**2), rel=1e-3)
    # two atoms: W1 is the mass moved times the distance
    p = mixture.point_mixture(jnp.array([[0.0], [1.0]]), jnp.array([0.5, 0.5]))
    q = mixture.point_mixture(jnp.array([[0.0], [1.0]]), jnp.array([0.2, 0.8]))
    assert float(mixture.wasserstein_1d(p, q, p=1.0, n_levels=4000)) == pytest.approx(0.3, abs=1e-3)
    # a quantizer with Voronoi weights: W2^2 = its distortion (N(0, 1) as a one-component mixture)
    points, weights, dist = normal.normal_optimal_quantizer(4)
    w2 = mixture.wasserstein_1d(mixture.gaussian_mixture([1.0], [0.0], [1.0]), mixture.point_mixture(points[:, None], weights), n_levels=4000)
    assert float(w2) ** 2 == pytest.approx(float(dist), rel=2e-3)


def test_point_mixture_weights_are_renormalised():
    """Weights a little short of 1 (float32 sums) still give every quantile level a finite quantile."""
    atoms = mixture.point_mixture(jnp.array([[0.0], [1.0]]), jnp.array([0.49998, 0.49998]))
    assert float(atoms.weights.sum()) == pytest.approx(1.0, abs=1e-6)
    top = mixture.quantiles_1d(mixture.noised(atoms, 0.5, 0.1), mixture.quantile_levels(20000))[-1]
    assert 0.5 < float(top) < 1.0


def test_quantiles_invert_the_cdf():
    mix = mixture.gaussian_mixture([0.3, 0.7], [-1.0, 2.0], [0.5, 1.0])
    levels = mixture.quantile_levels(101)
    np.testing.assert_allclose(mixture.cdf_1d(mix, mixture.quantiles_1d(mix, levels)), levels, atol=1e-5)
    with pytest.raises(ValueError, match="1-D"):
        mixture.cdf_1d(_mixture_2d(), levels)


def test_vp_schedule():
    schedule = diffusion.VPSchedule()
    t = jnp.array([0.0, 0.3, 1.0])
    np.testing.assert_allclose(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, 1.0, atol=1e-6)
    # d log alpha / dt = -beta / 2
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda s: jnp.log(schedule.alpha(s))))(t), -0.5 * schedule.beta(t), rtol=1e-5)


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_reverse_process_recovers_the_marginal(sampler):
    """Started from the exact time-T marginal, the reverse process lands on the time-delta marginal."""
    schedule = diffusion.VPSchedule()
    mix = mixture.gaussian_mixture([0.3, 0.7], [[-1.5], [1.0]], [0.3, 0.5])
    score_fn = diffusion.mixture_score_fn(mix, schedule)
    t_start, t_end = 0.8, 1e-3
    x_t = mixture.sample(diffusion.noised_mixture(mix, schedule, t_start), jax.random.key(0), 5000)
    if sampler == "ode":
        out = diffusion.reverse_ode(score_fn, schedule, x_t, t_start, t_end, 200)
    else:
        out = diffusion.reverse_sde(score_fn, schedule, x_t, t_start, t_end, 400, jax.random.key(1))
    target = diffusion.noised_mixture(mix, schedule, t_end)
    levels = mixture.quantile_levels(5000)
    w1 = mixture.wasserstein_from_quantiles(jnp.sort(out[:, 0]), mixture.quantiles_1d(target, levels), p=1.0)
    assert float(w1) < 0.05
    # without the score the ODE would only rescale: far from the target
    lazy = x_t / schedule.alpha(t_start) * schedule.alpha(t_end)
    assert float(mixture.wasserstein_from_quantiles(jnp.sort(lazy[:, 0]), mixture.quantiles_1d(target, levels), p=1.0)) > 0.3


def test_loglog_slope():
    k = np.array([2, 4, 8, 16])
    assert rates.loglog_slope(k, 3.0 * k**-0.5) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="positive"):
        rates.loglog_slope(k, -k)
