"""Free-support Wasserstein barycenter of a class measure with K points.

The barycenter of a single measure mu with K free points and fixed weights b
(uniform, as D4M weighs its images) is the measure nu = sum_k b_k delta_{x_k}
closest to mu in W2 among all such measures. It is found by the fixed point
of Cuturi & Doucet (2014), as ott-jax's FreeWassersteinBarycenter does:
solve the transport plan P from mu to nu (ott-jax Sinkhorn at a small
epsilon, relative to the mean squared distance), then move each point to the
barycentric projection x_k <- sum_i P_ik x_i / b_k. The weights of mu are
used (padding has zero mass). Unlike Lloyd, where each point takes the mass
of its Voronoi cell, here each point carries mass b_k exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from pqdjax.quantize.checks import check_options
from pqdjax.quantize.lloyd import Quantization, finish, kmeans_plus_plus, tolerance_threshold
from pqdjax.quantize.metrics import sinkhorn_plan


def free_support_barycenter(
    x: jax.Array, mass: jax.Array, init: jax.Array, weights: jax.Array | None = None, max_iter: int = 50,
    tol: float = 1e-4, relative_epsilon: float = 1e-2, sinkhorn_max_iterations: int = 5000,
) -> Quantization:
    """Fixed-point iterations x_k <- sum_i P_ik x_i / b_k from `init` [K, d].

    Stops when the squared shift of the points is at most tol * mean feature
    variance of mu, or after max_iter; `converged` also requires every
    Sinkhorn solve to have converged (else raise sinkhorn_max_iterations or
    relative_epsilon: an unconverged plan's projection is closer to Lloyd's). The returned `weights` are the Voronoi
    cell masses of the points, as for every method; the barycenter's own
    weights are `weights` (default uniform).

    Args:
      x: [n, d]; mass: [n] summing to 1; init: [K, d]; weights: [K] summing to 1.
    """
    x = x.astype(jnp.float32)
    mass = mass.astype(jnp.float32)
    k = init.shape[0]
    b = jnp.full((k,), 1.0 / k, jnp.float32) if weights is None else weights.astype(jnp.float32)
    threshold = tolerance_threshold(x, mass, tol)

    def cond(carry):
        _, i, shift, _ = carry
        return (i < max_iter) & (shift > threshold)

    def body(carry):
        points, i, _, all_converged = carry
        plan, _, converged = sinkhorn_plan(x, mass, points, b, relative_epsilon, sinkhorn_max_iterations)
        # Divide by the plan's column sums (= b once Sinkhorn has converged), so points stay in the hull.
        column = jnp.sum(plan, axis=0)
        new = (plan.T @ x) / jnp.maximum(column, jnp.finfo(jnp.float32).tiny)[:, None]
        new = jnp.where(column[:, None] > 0, new, points)
        return new, i + 1, jnp.sum(jnp.square(new - points)), all_converged & converged

    init_state = (init.astype(jnp.float32), jnp.int32(0), jnp.float32(jnp.inf), jnp.bool_(True))
    points, iterations, shift, sinkhorn_converged = jax.lax.while_loop(cond, body, init_state)
    return finish(x, mass, points, iterations, (shift <= threshold) & sinkhorn_converged)


@dataclasses.dataclass(frozen=True)
class Barycenter:
    """Free-support W2 barycenter with uniform weights from k-means++ seeds (static, hashable options).

    max_iter, tol: outer fixed-point bound and tolerance. relative_epsilon:
    Sinkhorn's epsilon as a fraction of the mean squared distance.
    sinkhorn_max_iterations: bound of each inner Sinkhorn solve.
    """

    max_iter: int = 50
    tol: float = 1e-4
    relative_epsilon: float = 1e-2
    sinkhorn_max_iterations: int = 5000

    def __post_init__(self):
        check_options("Barycenter", max_iter=(self.max_iter, 1), tol=(self.tol, 0),
                      relative_epsilon=(self.relative_epsilon, 1e-12), sinkhorn_max_iterations=(self.sinkhorn_max_iterations, 1))

    def __call__(self, x: jax.Array, mass: jax.Array, k: int, rng: jax.Array) -> Quantization:
        """x: [n, d], mass: [n] -> Quantization with K = k points."""
        return free_support_barycenter(
            x, mass, kmeans_plus_plus(x, mass, k, rng), None, self.max_iter, self.tol,
            self.relative_epsilon, self.sinkhorn_max_iterations,
        )
