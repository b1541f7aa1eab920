"""A continuous-time variance-preserving diffusion with an exact score: noising and reverse SDE/ODE.

Forward (Song et al. 2021, VP SDE): dx = -beta(t)/2 x dt + sqrt(beta(t)) dW on
t in [0, 1], beta(t) = beta_min + t (beta_max - beta_min), so that

    x_t = alpha(t) x_0 + sigma(t) eps,   alpha(t) = exp(-int_0^t beta / 2),  sigma^2 = 1 - alpha^2.

Reverse, from time T down to delta, given the score s(x, t) = grad log p_t(x):

    SDE  dx = [-beta/2 x - beta s(x, t)] dt + sqrt(beta) dW_bar
    ODE  dx/dt = -beta/2 (x + s(x, t))        (probability flow: same marginals p_t)

Both integrators take a fixed number of steps under lax.scan and jit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from pqdjax.theory import mixture as mixture_lib

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x [n, d], t scalar) -> [n, d]


@struct.dataclass
class VPSchedule:
    """Linear beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1]."""

    beta_min: float = struct.field(pytree_node=False, default=0.1)
    beta_max: float = struct.field(pytree_node=False, default=20.0)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t):
        """Signal scale exp(-1/2 int_0^t beta)."""
        return jnp.exp(-0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2))

    def sigma(self, t):
        """Noise scale sqrt(1 - alpha^2)."""
        return jnp.sqrt(-jnp.expm1(-(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)))


def noised_mixture(mixture: mixture_lib.GaussianMixture, schedule: VPSchedule, t) -> mixture_lib.GaussianMixture:
    """The time-t marginal of the forward process started from `mixture` (exact)."""
    return mixture_lib.noised(mixture, schedule.alpha(t), schedule.sigma(t))


def mixture_score_fn(mixture: mixture_lib.GaussianMixture, schedule: VPSchedule) -> ScoreFn:
    """The exact score (x, t) -> grad log p_t(x) of the noised `mixture`, for t > 0."""
    return lambda x, t: mixture_lib.score(noised_mixture(mixture, schedule, t), x)


def _times(t_start: float, t_end: float, steps: int) -> jax.Array:
    return jnp.linspace(t_start, t_end, steps + 1)


def reverse_ode(score_fn: ScoreFn, schedule: VPSchedule, x: jax.Array, t_start: float, t_end: float, steps: int) -> jax.Array:
    """Integrates the probability-flow ODE from t_start down to t_end (Heun's method). x: [n, d] -> [n, d]."""
    times = _times(t_start, t_end, steps)

    def drift(y, t):
        return -0.5 * schedule.beta(t) * (y + score_fn(y, t))

    def step(y, ts):
        t, t_next = ts
        h = t_next - t  # negative: backwards in time
        k1 = drift(y, t)
        k2 = drift(y + h * k1, t_next)
        return y + 0.5 * h * (k1 + k2), None

    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
    return x


def reverse_sde(score_fn: ScoreFn, schedule: VPSchedule, x: jax.Array, t_start: float, t_end: float, steps: int, rng: jax.Array) -> jax.Array:
    """Euler-Maruyama on the reverse SDE from t_start down to t_end. x: [n, d] -> [n, d].

    Two calls with the same rng use the same Brownian increments (a
    synchronous coupling of the two outputs).
    """
    times = _times(t_start, t_end, steps)
    noise = jax.random.normal(rng, (steps,) + x.shape)

    def step(y, inputs):
        t, t_next, z = inputs
        dt = t - t_next  # positive step size, going backwards
        beta = schedule.beta(t)
        y = y + (0.5 * beta * y + beta * score_fn(y, t)) * dt + jnp.sqrt(beta * dt) * z
        return y, None

    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:], noise))
    return x
