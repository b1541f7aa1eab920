"""Stage quantize: per class, K = IPC points by Lloyd and their Voronoi weights; W2 per method.

For every IPC the artifact quantize/ipc{K}.npz holds, per class c:
  points [C, K, d]           the quantization points (D4M and DDOQ share them)
  weights [C, K]             their Voronoi cell masses (DDOQ's weights)
  random_indices [C, K]      indices into the training set of K random real images
                             (grouping.select_random with the key rng('random', K))
  distortion, iterations, converged [C]
  w2_random, w2_d4m, w2_ddoq [C]   W2 from the class's latent measure to each method's
                                   weighted point set (random: the real latents, uniform)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts
from pqdjax.data.grouping import class_indices, pad_classes, select_random
from pqdjax.quantize import quantize_classes, wasserstein2


@dataclasses.dataclass(frozen=True)
class Quantized:
    """The arrays of quantize/ipc{K}.npz (see the module docstring) and their fingerprint."""

    ipc: int
    arrays: dict[str, np.ndarray]
    fingerprint: str


def _w2_per_class(x, mass, points, weights, config) -> tuple[np.ndarray, np.ndarray]:
    w2 = lambda a, b, c, d: wasserstein2(a, b, c, d, config.w2_relative_epsilon, config.w2_max_iterations)
    fn = jax.jit(jax.vmap(w2))
    w2, converged = fn(jnp.asarray(x), jnp.asarray(mass), jnp.asarray(points), jnp.asarray(weights))
    return np.asarray(w2), np.asarray(converged)


def quantize_ipc(run, latents, ipc: int) -> dict[str, np.ndarray]:
    config = run.config.quantize
    groups = class_indices(latents.labels, latents.num_classes)
    random_indices = select_random(groups, ipc, run.rng("random", ipc))  # also checks IPC <= class sizes
    padded, mass = pad_classes(latents.latents, groups)
    num_classes = len(groups)
    keys = jax.random.split(run.rng("quantize", ipc), num_classes)
    q = quantize_classes(jnp.asarray(padded), jnp.asarray(mass), ipc, keys, max_iter=config.max_iter, tol=config.tol)
    q = jax.device_get(q)
    uniform = np.full((num_classes, ipc), 1.0 / ipc, np.float32)
    w2 = {
        "ddoq": _w2_per_class(padded, mass, q.points, q.weights, config),
        "d4m": _w2_per_class(padded, mass, q.points, uniform, config),
        "random": _w2_per_class(padded, mass, latents.latents[random_indices], uniform, config),
    }
    for method, (_, converged) in w2.items():
        if not converged.all():
            logging.warning("quantize: Sinkhorn did not converge for W2 (%s, IPC %d) in classes %s", method, ipc, np.flatnonzero(~converged))
    return {
        "points": q.points, "weights": q.weights, "random_indices": random_indices,
        "distortion": q.distortion, "iterations": q.iterations, "converged": q.converged,
        **{f"w2_{method}": values for method, (values, _) in w2.items()},
    }


def run(run, latents) -> dict[int, Quantized]:
    out = {}
    for ipc in run.config.ipcs:
        name = f"quantize/ipc{ipc}.npz"
        fp = artifacts.fingerprint("quantize", latents.fingerprint, run.config.quantize, ipc, run.config.seed)
        if run.store.is_complete(name, fp):
            arrays = run.store.load_arrays(name)
        else:
            arrays = quantize_ipc(run, latents, ipc)
            run.store.save_arrays(name, arrays, fp)
        logging.info(
            "quantize IPC %d: distortion %.4f, W2 random %.4f / d4m %.4f / ddoq %.4f (means over classes), Lloyd iterations %s",
            ipc, arrays["distortion"].mean(), arrays["w2_random"].mean(), arrays["w2_d4m"].mean(),
            arrays["w2_ddoq"].mean(), arrays["iterations"].tolist(),
        )
        out[ipc] = Quantized(ipc, arrays, fp)
    return out
