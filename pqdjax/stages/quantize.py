"""Stage quantize: per class, K = IPC points by config.quantize.method, their Voronoi weights, W2 per method.

config.quantize.method picks the quantizer: "lloyd" (k-means++ then Lloyd),
"clvq" (mini-batch competitive learning) or "barycenter" (free-support W2
barycenter with uniform weights). The classes are quantized in one call, the
class axis sharded over this process's devices; in a run of several processes
each takes its contiguous part of the classes and all get every class's result.

For every IPC the artifact quantize/ipc{K}.npz holds, per class c:
  points [C, K, d]           the quantization points (D4M and DDOQ share them)
  weights [C, K]             their Voronoi cell masses (DDOQ's weights)
  random_indices [C, K]      indices into the training set of K random real images:
                             draw 0 of random_draw (students of other seeds draw anew,
                             pqdjax.stages.decode.set_for_seed)
  medoid_indices [C, K]      the training image whose latent is nearest each point
  medoid_weights [C, K]      the Voronoi cell masses of those latents
  herding_indices [C, K]     K training images chosen by herding toward the class's
                             latent mean (pqdjax.quantize.selection)
  distortion, iterations, converged [C]
  w2_{method} [C]            W2 from the class's latent measure to each base method's
                             weighted latent set (method_set; real-image methods: their
                             images' latents). ddoq's is sqrt(distortion), exact because
                             Voronoi weights make the nearest-point map optimal; the
                             others solve the transport problem exactly where
                             n x K <= config.quantize.w2_exact_max_size, else by
                             Sinkhorn (ott-jax).
  w2_exact [C]               whether every W2 of that class is exact
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.data.grouping import class_indices, pad_classes, select_random
from pqdjax.config_checks import W2_METHODS
from pqdjax.errors import ConfigError
from pqdjax.quantize import class_mesh, quantize_classes, selection, solver, wasserstein2_classes
from pqdjax.quantize.voronoi import voronoi_weights


@dataclasses.dataclass(frozen=True)
class Quantized:
    """The arrays of quantize/ipc{K}.npz (see the module docstring) and their fingerprint."""

    ipc: int
    arrays: dict[str, np.ndarray]
    fingerprint: str

    def distortions(self, store) -> np.ndarray:
        """Each class's distortion [C] (store unused)."""
        return self.arrays["distortion"]

    def iterations(self) -> np.ndarray:
        """Lloyd's iterations per class [C]."""
        return self.arrays["iterations"]

    def stored_w2(self) -> dict[str, np.ndarray]:
        """{base method: W2 per class [C]} for every base method of W2_METHODS, as this stage measured them."""
        return {base: self.arrays[f"w2_{base}"] for base in W2_METHODS}

    def class_weights(self, store, first: int) -> np.ndarray:
        """The Voronoi weights [first, K] of the first `first` classes (store unused)."""
        return self.arrays["weights"][:first]

    def class_set(self, run, latents, base: str, c: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """A base method of W2_METHODS on class c: its latent points [K, d] (real-image methods: their images'
        latents), their weights [K] and the W2 [] from the class's latent measure this stage computed
        (method_set; run and x, the class's latents, unused)."""
        del run, x
        points, weights, _ = method_set({k: v[c : c + 1] for k, v in self.arrays.items()}, base, latents.latents)  # [C, ...] each
        return points[0], weights[0], float(self.arrays[f"w2_{base}"][c])


def class_w2(x: np.ndarray, points: np.ndarray, weights: np.ndarray, config) -> float:
    """W2 from the uniform measure on one class's latents x [n, d] to points [K, d] with weights [K], exact or by
    Sinkhorn as config.quantize's w2_* settings say (pqdjax.quantize.wasserstein2_classes)."""
    mass = np.full((1, len(x)), 1.0 / len(x), np.float32)
    return float(wasserstein2_classes(x[None], mass, points[None], weights[None], *w2_settings(config.quantize))[0][0])


def w2_settings(config) -> tuple[int, float, int]:
    """(exact_max_size, relative_epsilon, max_iterations) of wasserstein2_classes from config.quantize."""
    return (config.get("w2_exact_max_size", 10_000_000), config.get("w2_relative_epsilon", 3e-3),
            config.get("w2_max_iterations", 20000))


def solver_from_config(config):
    """The quantization solver that config.quantize describes."""
    n_init = config.get("n_init", 1)
    if config.method == "lloyd":
        return solver("lloyd", n_init, max_iter=config.max_iter, tol=config.tol)
    if config.method == "clvq":
        return solver("clvq", n_init, batch_size=config.clvq_batch_size, max_steps=config.max_iter, tol=config.tol)
    return solver(
        "barycenter", n_init, max_iter=config.max_iter, tol=config.tol, relative_epsilon=config.barycenter_relative_epsilon,
        sinkhorn_max_iterations=config.w2_max_iterations,  # also bounds the barycenter's Sinkhorn solves
    )


def method_set(arrays: dict[str, np.ndarray], base: str, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(latent points [C, K, d], weights [C, K], training indices [C, K] or None) of a base method (config_checks).

    arrays: a quantize/ipc{K}.npz; latents: the encoded training set [N, d].
    The indices are the real images of a real-image method (None for d4m, ddoq, generated).
    """
    points = arrays["points"]
    uniform = np.full(points.shape[:2], 1.0 / points.shape[1], np.float32)
    if base in ("d4m", "ddoq", "generated"):
        return points, (arrays["weights"].astype(np.float32) if base == "ddoq" else uniform), None
    indices = arrays[{"random": "random_indices", "herding": "herding_indices"}.get(base, "medoid_indices")]
    weights = arrays["medoid_weights"].astype(np.float32) if base == "medoid_weighted" else uniform
    return latents[indices], weights, indices


def random_draw(run, labels: np.ndarray, num_classes: int, ipc: int, draw: int) -> np.ndarray:
    """Draw `draw` of the random baseline: indices [C, K] of K random training images per class, key rng('random', K, draw)."""
    return select_random(class_indices(labels, num_classes), ipc, run.rng("random", ipc, draw))  # also checks IPC <= class sizes


def quantize_ipc(run, latents, ipc: int) -> dict[str, np.ndarray]:
    """The arrays of quantize/ipc{K}.npz. Each process quantizes its part of the classes (pqdjax.parallel.process_shard;
    a class's result depends only on its rows and its key) and every process gets every class's."""
    groups = class_indices(latents.labels, latents.num_classes)
    random_indices = random_draw(run, latents.labels, latents.num_classes, ipc, 0)
    keys = jax.random.split(run.rng("quantize", ipc), len(groups))
    mine = parallel.process_shard(len(groups))
    if not len(mine):
        raise ConfigError(f"quantize: {jax.process_count()} processes for {len(groups)} classes; start at most {len(groups)} processes.")
    # padded to the size of the largest class of all, as one process pads them
    n_max = max(len(g) for g in groups)
    arrays = _quantize_some(run, latents, ipc, [groups[c] for c in mine], keys[mine], random_indices[mine], n_max)
    return parallel.gather_processes(arrays)


def _quantize_some(run, latents, ipc: int, groups: list[np.ndarray], keys: jax.Array, random_indices: np.ndarray,
                   n_max: int) -> dict[str, np.ndarray]:
    """quantize_ipc's arrays for the classes whose training indices are `groups`, on this process's devices."""
    config = run.config.quantize
    padded, mass = pad_classes(latents.latents, groups, n_max)
    num_classes = len(groups)
    mesh = class_mesh(jax.local_devices())
    q = quantize_classes(jnp.asarray(padded), jnp.asarray(mass), ipc, keys, solver_from_config(config), mesh=mesh)
    q = jax.device_get(q)
    # rows of the padded classes -> indices into the training set
    to_dataset = lambda rows: np.stack([groups[c][rows[c]] for c in range(num_classes)])
    medoid_indices = to_dataset(np.asarray(jax.vmap(selection.medoids)(padded, mass, q.points)))
    herding_indices = to_dataset(np.asarray(jax.vmap(selection.herding, in_axes=(0, 0, None))(padded, mass, ipc)))
    medoid_weights = np.asarray(jax.vmap(voronoi_weights)(padded, mass, latents.latents[medoid_indices]))
    arrays = {
        "points": q.points, "weights": q.weights, "random_indices": random_indices,
        "medoid_indices": medoid_indices, "medoid_weights": medoid_weights, "herding_indices": herding_indices,
        "distortion": q.distortion, "iterations": q.iterations, "converged": q.converged,
    }
    exact = np.ones(num_classes, bool)
    for base in W2_METHODS:
        if base == "ddoq":  # exact: the Voronoi weights make the nearest-point map optimal
            arrays["w2_ddoq"] = np.sqrt(np.maximum(q.distortion, 0.0)).astype(np.float32)
            continue
        points, weights, _ = method_set(arrays, base, latents.latents)
        arrays[f"w2_{base}"], base_exact = wasserstein2_classes(padded, mass, points, weights, *w2_settings(config))
        exact &= base_exact
    arrays["w2_exact"] = exact
    return arrays


def run(run, latents) -> dict[int, Quantized]:
    out = {}
    for ipc in run.config.ipcs:
        name = f"quantize/ipc{ipc}.npz"
        fp = artifacts.fingerprint("quantize", latents.fingerprint, run.config.quantize, ipc, run.config.seed, "baselines", "random_draw")
        if parallel.complete_everywhere(run.store, name, fp):
            arrays = run.store.load_arrays(name)
        else:
            arrays = quantize_ipc(run, latents, ipc)
            parallel.write_once(run.store, name, fp, lambda: run.store.save_arrays(name, arrays, fp))
        logging.info(
            "quantize IPC %d (%s): distortion %.4f, W2 (means over classes) %s, iterations %s",
            ipc, run.config.quantize.method, arrays["distortion"].mean(),
            ", ".join(f"{m} {arrays[f'w2_{m}'].mean():.4f}" for m in W2_METHODS), arrays["iterations"].tolist(),
        )
        out[ipc] = Quantized(ipc, arrays, fp)
    return out
