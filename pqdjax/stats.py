"""Statistics of student accuracies over seeds: sample spread and paired differences with intervals.

Methods evaluated on the same seeds share each student's initialisation and
batch order (pqdjax.stages.evaluate), so the difference of two methods is
measured seed by seed: a paired t interval on the per-seed differences,

    mean(d) ± t_{0.975, n-1} * std(d, ddof=1) / sqrt(n),

and the two-sided p-value of the paired t-test (mean difference 0). Student's
t distribution comes from the regularized incomplete beta function:
P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2).
"""

from __future__ import annotations

import math

import numpy as np
from jax.scipy.special import betainc


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom."""
    if not np.isfinite(t):
        return 0.0
    return float(betainc(df / 2.0, 0.5, df / (df + t * t)))


def t_quantile(q: float, df: int) -> float:
    """The q-quantile (q in (0.5, 1)) of Student's t with df degrees of freedom, by bisection on t_two_sided_p."""
    if not 0.5 < q < 1:
        raise ValueError(f"t_quantile takes q in (0.5, 1), got {q}.")
    target = 2.0 * (1.0 - q)  # the two-sided tail mass beyond the quantile
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > target:
        high *= 2.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_two_sided_p(middle, df) > target else (low, middle)
    return 0.5 * (low + high)


def sample_std(values) -> float:
    """Standard deviation with ddof = 1 (0 for a single value)."""
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def paired_difference(a, b, confidence: float = 0.95) -> dict:
    """a - b over paired values (the same seeds): {'mean', 'low', 'high', 'p', 'n'}.

    With one pair the interval and p-value are undefined (None).
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    out = {"mean": float(d.mean()), "low": None, "high": None, "p": None, "n": n}
    if n < 2:
        return out
    se = sample_std(d) / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2, n - 1) * se
    if se > 0:
        p = t_two_sided_p(d.mean() / se, n - 1)
    else:  # every seed gives the same difference: certain if it is not 0
        p = 1.0 if d.mean() == 0 else 0.0
    return {**out, "low": float(d.mean() - half), "high": float(d.mean() + half), "p": p}
