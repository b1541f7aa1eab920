"""Applying a jitted function to a large array in fixed-size batches, in one process or split over the processes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pqdjax import parallel
from pqdjax.progress import Progress


def process_rows(num_values: int, batch_size: int) -> tuple[int, int]:
    """[start, stop) of the rows this process maps in map_batches(..., across_processes=True): its contiguous part of
    the batches (pqdjax.parallel.process_shard over batch numbers), so every batch is the one a single process makes."""
    batch_size = min(batch_size, num_values)
    batches = parallel.process_shard(-(-num_values // batch_size))
    if not len(batches):
        return 0, 0
    return int(batches[0]) * batch_size, min(num_values, (int(batches[-1]) + 1) * batch_size)


def map_batches(fn: Callable[[np.ndarray], object], values: np.ndarray, batch_size: int, progress: str | None = None,
                across_processes: bool = False) -> np.ndarray:
    """fn over values[i:i+batch_size], concatenated on the host.

    The last batch is padded (with copies of the last row) to batch_size, so
    that every call has the same shape and a jitted fn compiles once.
    values: [N, ...]; fn maps [B, ...] -> [B, ...]. With a `progress` name,
    shows the progress (rate, ETA) and logs it every tenth of the values.

    across_processes: in a multi-process run, each process maps only its part
    of the batches (process_rows) and every process gets the whole result
    (pqdjax.parallel.gather_processes); every process must call it. The
    batches are those of one process, so the result is the same. fn must be a
    process-local computation (jitted on this process's devices).
    """
    batch_size = min(batch_size, len(values))
    start, stop = process_rows(len(values), batch_size) if across_processes else (0, len(values))
    bar = Progress(progress, stop - start, unit="items", log_every=max(1, (stop - start) // 10)) if progress else None
    out = []
    for first in range(start, stop, batch_size):
        batch = np.asarray(values[first : first + batch_size])
        short = batch_size - len(batch)
        if short:
            batch = np.concatenate([batch, np.repeat(batch[-1:], short, axis=0)])
        out.append(np.asarray(fn(batch))[: batch_size - short])
        if bar:
            bar.update(first + len(out[-1]) - start)
    local = np.concatenate(out) if out else None
    if not across_processes:
        return local
    if local is None:  # a process with no batch still joins the collective, with the result's row shape
        local = np.asarray(fn(np.asarray(values[:batch_size])))[:0]
    return parallel.gather_processes(local)
