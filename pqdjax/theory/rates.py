"""Rates of convergence read off log-log plots."""

from __future__ import annotations

import numpy as np


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y against log x (y ~ C x^slope). x, y: [n] positive, n >= 2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"need two equally long series of at least 2 values, got shapes {x.shape} and {y.shape}.")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a log-log slope needs positive values.")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])
