"""Applying a jitted function to a large array in fixed-size batches."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pqdjax.progress import Progress


def map_batches(fn: Callable[[np.ndarray], object], values: np.ndarray, batch_size: int, progress: str | None = None) -> np.ndarray:
    """fn over values[i:i+batch_size], concatenated on the host.

    The last batch is padded (with copies of the last row) to batch_size, so
    that every call has the same shape and a jitted fn compiles once.
    values: [N, ...]; fn maps [B, ...] -> [B, ...]. With a `progress` name,
    shows the progress (rate, ETA) and logs it every tenth of the values.
    """
    batch_size = min(batch_size, len(values))
    bar = Progress(progress, len(values), unit="items", log_every=max(1, len(values) // 10)) if progress else None
    out = []
    for start in range(0, len(values), batch_size):
        batch = np.asarray(values[start : start + batch_size])
        short = batch_size - len(batch)
        if short:
            batch = np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)])
        out.append(np.asarray(fn(batch))[: batch_size - short])
        if bar:
            bar.update(start + len(out[-1]))
    return np.concatenate(out)
