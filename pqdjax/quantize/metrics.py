"""How well a weighted point set represents a measure: distortion and W2.

For points c_1..c_K and a measure mu, the Voronoi weights w_k = mu(cell_k)
make nu = sum_k w_k delta_{c_k} the W2-closest measure supported on those
points, and W2^2(mu, nu) = distortion = E_mu[min_k |x - c_k|^2] exactly (the
nearest-point map is an optimal transport map). For any other weights (D4M's
uniform ones, or K real samples) W2 needs a transport problem:

  wasserstein2_exact      the exact LP (POT's network simplex, on the host),
                          seconds-fast for n x K up to ~10^7 entries;
  wasserstein2            ott-jax Sinkhorn at a small relative epsilon,
                          jittable, sqrt(<P, C>) of its plan: for large cases;
  wasserstein2_classes    per class, exact where n x K is small enough,
                          Sinkhorn otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import ot
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from pqdjax.quantize.voronoi import assign, squared_distances


def distortion(x: jax.Array, mass: jax.Array, points: jax.Array) -> jax.Array:
    """E_mu[min_k |x - c_k|^2] for mu = sum_i mass_i delta_{x_i}. [n, d], [n], [K, d] -> scalar."""
    _, d2_min = assign(x.astype(jnp.float32), points.astype(jnp.float32))
    return jnp.sum(mass * d2_min)


def sinkhorn_plan(x, mass, points, weights, relative_epsilon: float, max_iterations: int, threshold: float = 1e-4):
    """ott-jax Sinkhorn between (x [n, d], mass [n]) and (points [K, d], weights [K]).

    epsilon = relative_epsilon * mean squared distance under mass x weights
    (so zero-mass padding changes nothing). Returns (plan [n, K], cost
    matrix [n, K], converged bool).
    """
    x, points = x.astype(jnp.float32), points.astype(jnp.float32)
    mass, weights = mass.astype(jnp.float32), weights.astype(jnp.float32)
    mean_cost = mass @ squared_distances(x, points) @ weights
    epsilon = relative_epsilon * jnp.maximum(mean_cost, jnp.finfo(jnp.float32).tiny)
    geom = pointcloud.PointCloud(x, points, epsilon=epsilon)
    problem = linear_problem.LinearProblem(geom, a=mass, b=weights)
    out = sinkhorn.Sinkhorn(max_iterations=max_iterations, threshold=threshold)(problem)
    return out.matrix, geom.cost_matrix, out.converged


def wasserstein2(
    x: jax.Array,
    mass: jax.Array,
    points: jax.Array,
    weights: jax.Array,
    relative_epsilon: float = 3e-3,
    max_iterations: int = 20000,
) -> tuple[jax.Array, jax.Array]:
    """W2 between mu = sum_i mass_i delta_{x_i} and nu = sum_k weights_k delta_{c_k}, by Sinkhorn.

    The value is sqrt(<P, C>) for Sinkhorn's plan P, which tends to W2 as
    epsilon -> 0 (slightly above it: P is a feasible, blurred plan).

    Args:
      x: [n, d]; mass: [n] (zeros allowed for padding); points: [K, d]; weights: [K].
    Returns:
      (w2 scalar, converged bool scalar).
    """
    plan, cost, converged = sinkhorn_plan(x, mass, points, weights, relative_epsilon, max_iterations)
    return jnp.sqrt(jnp.maximum(jnp.sum(plan * cost), 0.0)), converged


def wasserstein2_exact(x: np.ndarray, mass: np.ndarray, points: np.ndarray, weights: np.ndarray) -> float:
    """Exact W2 between (x [n, d], mass [n]) and (points [K, d], weights [K]), on the host.

    Solves the transport LP in float64 with POT's network simplex (ot.emd).
    Zero-mass rows and points are dropped first; both masses are renormalised
    to 1 (they are float32 sums of 1).
    """
    x, mass = np.asarray(x, np.float64), np.asarray(mass, np.float64)
    points, weights = np.asarray(points, np.float64), np.asarray(weights, np.float64)
    if mass.sum() <= 0 or weights.sum() <= 0:
        raise ValueError("wasserstein2_exact: both measures need positive total mass.")
    x, mass = x[mass > 0], mass[mass > 0]
    points, weights = points[weights > 0], weights[weights > 0]
    cost = ot.dist(x, points, metric="sqeuclidean")
    plan, log = ot.emd(mass / mass.sum(), weights / weights.sum(), cost, numItermax=10_000_000, log=True)
    if log["result_code"] != 1:
        raise RuntimeError(f"wasserstein2_exact: the network simplex did not reach an optimum ({log['warning']}).")
    return float(np.sqrt(max(np.sum(plan * cost), 0.0)))


def wasserstein2_classes(
    x: np.ndarray,
    mass: np.ndarray,
    points: np.ndarray,
    weights: np.ndarray,
    exact_max_size: int = 10_000_000,
    relative_epsilon: float = 3e-3,
    max_iterations: int = 20000,
) -> tuple[np.ndarray, np.ndarray]:
    """W2 per class: exact where (samples with mass) x K <= exact_max_size, Sinkhorn otherwise.

    Args:
      x: [C, n, d]; mass: [C, n] (zeros for padding); points: [C, K, d]; weights: [C, K].
    Returns:
      (w2 float32 [C], exact bool [C]: True where the value is the exact LP's).
    Raises:
      RuntimeError: Sinkhorn did not converge for some class (raise max_iterations or epsilon).
    """
    x, mass, points, weights = (np.asarray(a) for a in (x, mass, points, weights))
    sizes = (mass > 0).sum(1) * points.shape[1]
    exact = sizes <= exact_max_size
    w2 = np.zeros(len(x), np.float32)
    for c in np.flatnonzero(exact):
        w2[c] = wasserstein2_exact(x[c], mass[c], points[c], weights[c])
    large = np.flatnonzero(~exact)
    if large.size:
        fn = jax.jit(jax.vmap(lambda a, b, c, d: wasserstein2(a, b, c, d, relative_epsilon, max_iterations)))
        values, converged = jax.device_get(fn(x[large], mass[large], points[large], weights[large]))
        if not np.all(converged):
            raise RuntimeError(
                f"W2: Sinkhorn did not converge in {max_iterations} iterations for classes {large[~converged].tolist()}; "
                "raise config.quantize.w2_max_iterations or w2_relative_epsilon."
            )
        w2[large] = values
    return w2, exact
