"""Timing shared by the benchmarks: functions taking turns, so that the machine's drift hits them alike."""

from __future__ import annotations

import time


def interleaved_times(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Wall times (s) of each fn over `repeats` rounds, the fns taking turns within a round, after one warm-up
    call each (which compiles). Each fn must block until its result is ready.

    The machine's speed drifts by 10-30% over minutes (shared cores); taking turns
    exposes every function to the same drift, and per-round ratios cancel most of it.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
