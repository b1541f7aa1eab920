"""Compute cost as XLA counts it: the floating-point operations of a compiled program.

XLA's cost analysis counts each instruction of the compiled module once, per
device. A program without loops (a training step) is counted exactly; the body
of a while loop (lax.scan, fori_loop) would be counted once whatever its trip
count, so programs with loops are not measured this way.
"""

from __future__ import annotations

from collections.abc import Callable


def compiled_flops(jitted: Callable, *args, devices: int = 1) -> float | None:
    """Floating-point operations of one call of jitted(*args), summed over the `devices` it runs on.

    jitted: a jax.jit function (lowered and compiled here; a program already compiled
    for these arguments comes from JAX's cache). None where the backend counts none.
    """
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per module
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    if flops is None or flops < 0:
        return None
    return float(flops) * devices
