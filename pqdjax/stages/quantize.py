"""Stage quantize: per class, K = IPC points by config.quantize.method, their Voronoi weights, W2 per method.

config.quantize.method picks the quantizer: "lloyd" (k-means++ then Lloyd),
"clvq" (mini-batch competitive learning) or "barycenter" (free-support W2
barycenter with uniform weights). All classes are quantized in one call, the
class axis sharded over the available devices.

For every IPC the artifact quantize/ipc{K}.npz holds, per class c:
  points [C, K, d]           the quantization points (D4M and DDOQ share them)
  weights [C, K]             their Voronoi cell masses (DDOQ's weights)
  random_indices [C, K]      indices into the training set of K random real images
                             (grouping.select_random with the key rng('random', K))
  distortion, iterations, converged [C]
  w2_random, w2_d4m, w2_ddoq [C]   W2 from the class's latent measure to each method's
                                   weighted point set (random: the real latents, uniform).
                                   ddoq's is sqrt(distortion), exact because Voronoi
                                   weights make the nearest-point map optimal; the
                                   others solve the transport problem exactly where
                                   n x K <= config.quantize.w2_exact_max_size, else
                                   by Sinkhorn (ott-jax).
  w2_exact [C]               whether d4m's and random's W2 are exact for that class
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts
from pqdjax.data.grouping import class_indices, pad_classes, select_random
from pqdjax.quantize import class_mesh, quantize_classes, solver, wasserstein2_classes


@dataclasses.dataclass(frozen=True)
class Quantized:
    """The arrays of quantize/ipc{K}.npz (see the module docstring) and their fingerprint."""

    ipc: int
    arrays: dict[str, np.ndarray]
    fingerprint: str


def solver_from_config(config):
    """The quantization solver that config.quantize describes."""
    if config.method == "lloyd":
        return solver("lloyd", max_iter=config.max_iter, tol=config.tol)
    if config.method == "clvq":
        return solver("clvq", batch_size=config.clvq_batch_size, max_steps=config.max_iter, tol=config.tol)
    return solver(
        "barycenter", max_iter=config.max_iter, tol=config.tol, relative_epsilon=config.barycenter_relative_epsilon,
        sinkhorn_max_iterations=config.w2_max_iterations,  # also bounds the barycenter's Sinkhorn solves
    )


def quantize_ipc(run, latents, ipc: int) -> dict[str, np.ndarray]:
    config = run.config.quantize
    groups = class_indices(latents.labels, latents.num_classes)
    random_indices = select_random(groups, ipc, run.rng("random", ipc))  # also checks IPC <= class sizes
    padded, mass = pad_classes(latents.latents, groups)
    num_classes = len(groups)
    keys = jax.random.split(run.rng("quantize", ipc), num_classes)
    q = quantize_classes(jnp.asarray(padded), jnp.asarray(mass), ipc, keys, solver_from_config(config), mesh=class_mesh())
    q = jax.device_get(q)
    uniform = np.full((num_classes, ipc), 1.0 / ipc, np.float32)
    w2 = lambda points: wasserstein2_classes(
        padded, mass, points, uniform, config.w2_exact_max_size, config.w2_relative_epsilon, config.w2_max_iterations,
    )
    w2_d4m, exact_d4m = w2(q.points)
    w2_random, exact_random = w2(latents.latents[random_indices])
    return {
        "points": q.points, "weights": q.weights, "random_indices": random_indices,
        "distortion": q.distortion, "iterations": q.iterations, "converged": q.converged,
        "w2_random": w2_random, "w2_d4m": w2_d4m, "w2_ddoq": np.sqrt(np.maximum(q.distortion, 0.0)).astype(np.float32),
        "w2_exact": exact_d4m & exact_random,
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
            "quantize IPC %d (%s): distortion %.4f, W2 random %.4f / d4m %.4f / ddoq %.4f (means over classes), iterations %s",
            ipc, run.config.quantize.method, arrays["distortion"].mean(), arrays["w2_random"].mean(),
            arrays["w2_d4m"].mean(), arrays["w2_ddoq"].mean(), arrays["iterations"].tolist(),
        )
        out[ipc] = Quantized(ipc, arrays, fp)
    return out
