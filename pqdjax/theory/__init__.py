"""Closed forms and exact toy models behind DDOQ, for the notebooks and the tests.

    normal     optimal quantizers of N(0, 1) (Lloyd-Max), Zador's asymptotic distortion
    mixture    isotropic Gaussian mixtures: sampling, exact score, noised marginals, 1-D quantiles and W_p
    diffusion  a VP diffusion with its reverse SDE and probability-flow ODE
    rates      log-log slopes of rate curves
"""

from pqdjax.theory import diffusion, mixture, normal, rates

__all__ = ["diffusion", "mixture", "normal", "rates"]
