"""What the quantizers' entry points check of their arguments, with errors that name the argument."""

from __future__ import annotations

import math

import jax
import numpy as np


def check_mass(mass, shape: tuple[int, ...]) -> None:
    """mass: one finite non-negative number per sample of x, each measure's summing to 1 (within 1e-4).

    A mass that sums to n would stop Lloyd early (the tolerance is relative to
    a unit mass) and return weights summing to n; refused rather than
    renormalised, since it usually means counts were passed for masses.
    Inside a caller's jit the values are unknown and only the shape is checked.
    """
    if tuple(np.shape(mass)) != tuple(shape):
        raise ValueError(f"mass has shape {tuple(np.shape(mass))}; it must be {tuple(shape)}, one mass per sample of x.")
    if isinstance(mass, jax.core.Tracer):
        return
    m = np.asarray(mass, np.float64)
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError("mass must be finite and non-negative (zeros for padding rows).")
    sums = m.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > 1e-4):
        raise ValueError(
            f"mass must sum to 1 per measure, got sums from {sums.min():.6g} to {sums.max():.6g}; "
            "pass mass / mass.sum(axis=-1, keepdims=True) (uniform: 1 / n per sample)."
        )


def check_options(solver: str, **options) -> None:
    """Each option (name=(value, lowest allowed)) a finite number at least its lowest; a traced value passes.

    E.g. check_options("Lloyd", max_iter=(max_iter, 1), tol=(tol, 0)).
    """
    for name, (value, lowest) in options.items():
        if isinstance(value, jax.core.Tracer):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or value < lowest:
            raise ValueError(f"{solver}: {name} must be a number >= {lowest:g}, got {value!r}.")
