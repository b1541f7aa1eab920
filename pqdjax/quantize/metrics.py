"""How well a weighted point set represents a measure: distortion and W2.

For points c_1..c_K and a measure mu, the Voronoi weights w_k = mu(cell_k)
make nu = sum_k w_k delta_{c_k} the W2-closest measure supported on those
points, with W2^2(mu, nu) = distortion = E_mu[min_k |x - c_k|^2]. Any other
weights (D4M's uniform ones) give a larger W2. We measure W2 between discrete
measures with ott-jax's Sinkhorn at a small entropic regularisation, and report
the transport cost <P, C> of its plan.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ott.geometry import pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import sinkhorn

from pqdjax.quantize.lloyd import assign


def distortion(x: jax.Array, mass: jax.Array, points: jax.Array) -> jax.Array:
    """E_mu[min_k |x - c_k|^2] for mu = sum_i mass_i delta_{x_i}. [n, d], [n], [K, d] -> scalar."""
    _, d2_min = assign(x.astype(jnp.float32), points.astype(jnp.float32))
    return jnp.sum(mass * d2_min)


def wasserstein2(
    x: jax.Array,
    mass: jax.Array,
    points: jax.Array,
    weights: jax.Array,
    relative_epsilon: float = 3e-3,
    max_iterations: int = 20000,
) -> tuple[jax.Array, jax.Array]:
    """W2 between mu = sum_i mass_i delta_{x_i} and nu = sum_k weights_k delta_{c_k}.

    Sinkhorn (ott-jax) with epsilon = relative_epsilon * mean squared distance;
    the returned value is sqrt(<P, C>) for Sinkhorn's plan P, which tends to
    W2 as epsilon -> 0.

    Args:
      x: [n, d]; mass: [n] (zeros allowed for padding); points: [K, d]; weights: [K].
    Returns:
      (w2 scalar, converged bool scalar).
    """
    geom = pointcloud.PointCloud(
        x.astype(jnp.float32),
        points.astype(jnp.float32),
        epsilon=relative_epsilon,
        relative_epsilon="mean",
    )
    problem = linear_problem.LinearProblem(geom, a=mass.astype(jnp.float32), b=weights.astype(jnp.float32))
    solver = sinkhorn.Sinkhorn(max_iterations=max_iterations, threshold=1e-4)
    out = solver(problem)
    cost = jnp.sum(out.matrix * geom.cost_matrix)
    return jnp.sqrt(jnp.maximum(cost, 0.0)), out.converged
