"""Applying a jitted function to a large array in fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def map_batches(fn: Callable[[np.ndarray], object], values: np.ndarray, batch_size: int) -> np.ndarray:
    """fn over values[i:i+batch_size], concatenated on the host.

    The last batch is padded (with copies of the last row) to batch_size, so
    that every call has the same shape and a jitted fn compiles once.
    values: [N, ...]; fn maps [B, ...] -> [B, ...].
    """
    batch_size = min(batch_size, len(values))
    out = []
    for start in range(0, len(values), batch_size):
        batch = np.asarray(values[start : start + batch_size])
        short = batch_size - len(batch)
        if short:
            batch = np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)])
        out.append(np.asarray(fn(batch))[: batch_size - short])
    return np.concatenate(out)
