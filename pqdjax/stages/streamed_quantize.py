"""Streamed stage quantize: per class, K = IPC latent points and their Voronoi weights.

config.quantize.method:
    clvq    clvq_stream: competitive learning over the class's latent file read in
            mini-batches of config.quantize.batch_size (config.quantize.epochs passes,
            k-means++ seeds on the first mini-batch), then one more pass for the exact
            Voronoi weights and distortion; a class never has to fit in memory
    lloyd   k-means++ then Lloyd on the class in memory; config.quantize.classes_per_call
            classes at a time, padded to a common size with zero mass and sharded
            over this process's devices (pqdjax.quantize.quantize_classes)

Artifacts, one per class (a rerun skips finished classes): quantize/ipc{K}/class{c:04d}.npz
with points [K, d], weights [K] (summing to 1), distortion []. Each process
quantizes its part of the classes (process_shard over classes).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.config_checks import point_source
from pqdjax.data.grouping import EmptyClassError, stack_padded
from pqdjax.progress import Progress
from pqdjax.quantize import class_mesh, clvq_stream, kmeans_plus_plus, quantize_classes, solver


@dataclasses.dataclass(frozen=True)
class ClassQuantization:
    """The per-class results of one IPC: names of their artifacts in the store, and the fingerprint."""

    ipc: int
    names: tuple[str, ...]
    fingerprint: str

    def load(self, store, c: int) -> dict[str, np.ndarray]:
        """points [K, d], weights [K], distortion [] of class c."""
        return store.load_arrays(self.names[c])

    def distortions(self, store) -> np.ndarray:
        """Each class's distortion [C], read from its file."""
        return np.asarray([float(self.load(store, c)["distortion"]) for c in range(len(self.names))])

    def iterations(self) -> None:
        """None: the per-class files keep no iteration counts."""
        return None

    def stored_w2(self) -> dict[str, np.ndarray]:
        """{}: this stage measures no W2 (the fidelity stage does, for the run's sets)."""
        return {}

    def class_weights(self, store, first: int) -> np.ndarray:
        """The Voronoi weights [first, K] of the first `first` classes, read from their files."""
        return np.stack([self.load(store, c)["weights"] for c in range(first)])

    def class_set(self, run, latents, base: str, c: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        """A base method's latent points [K, d] of class c (d4m, ddoq, generated: the k-means points; real-image
        methods: their images' latents) and its weights [K] (streamed_decode.method_weights), from the class's
        latents x [n_c, d]; no stored W2 (None: the caller measures it)."""
        from pqdjax.stages.streamed_decode import class_points, method_weights  # decode owns the choice of images

        points = class_points(run, latents, self, self.ipc, c, point_source(base), x)
        # for medoid_weighted the points are the medoids' latents, which its weights need
        return points, method_weights(run, latents, self, self.ipc, c, base, x, medoids=points), None


def class_name(ipc: int, c: int) -> str:
    return f"quantize/ipc{ipc}/class{c:04d}.npz"


def _check_sizes(latents, ipc: int, classes) -> None:
    small = [c for c in classes if latents.class_size(c) < ipc]
    if small:
        c = small[0]
        raise EmptyClassError(
            f"quantize: class {c} has {latents.class_size(c)} training latents, fewer than IPC = {ipc} "
            f"({len(small)} such classes); lower the IPC or encode more of the training split (config.data.train_limit)."
        )


def quantize_streaming(latents, c: int, ipc: int, rng: jax.Array, config) -> dict[str, np.ndarray]:
    """CLVQ over class c's latent file in mini-batches (memory: one batch and the K points)."""
    batch_size = config.batch_size
    first = latents.head(c, max(batch_size, ipc))
    init = kmeans_plus_plus(jnp.asarray(first), jnp.full(len(first), 1.0 / len(first)), ipc, rng)
    result = clvq_stream(lambda: latents.batches(c, batch_size), np.asarray(init), epochs=config.epochs)
    return {"points": np.asarray(result.points), "weights": np.asarray(result.weights, np.float32), "distortion": np.asarray(result.distortion, np.float32)}


def quantize_in_memory(latents, classes: list[int], ipc: int, keys: jax.Array, config, mesh) -> list[dict[str, np.ndarray]]:
    """Lloyd on a few classes at once: padded to a common size with zero mass, class axis sharded over `mesh`."""
    x, mass = stack_padded([latents.load(c) for c in classes])
    method = solver("lloyd", config.get("n_init", 1), max_iter=config.max_iter, tol=config.tol)
    q = jax.device_get(quantize_classes(jnp.asarray(x), jnp.asarray(mass), ipc, keys, method, mesh=mesh))
    return [{"points": q.points[i], "weights": q.weights[i], "distortion": q.distortion[i]} for i in range(len(classes))]


def quantize_ipc(run, latents, ipc: int, fp: str) -> ClassQuantization:
    config = run.config.quantize
    num_classes = latents.num_classes
    names = tuple(class_name(ipc, c) for c in range(num_classes))
    mine = [int(c) for c in parallel.process_shard(num_classes)]
    _check_sizes(latents, ipc, mine)
    todo = [c for c in mine if not run.store.is_complete(names[c], fp)]
    keys = {c: run.rng("quantize", ipc, c) for c in todo}
    bar = Progress(f"quantize IPC {ipc}", len(todo), unit="classes", log_every=max(1, len(todo) // 10))
    if config.method == "clvq":
        for i, c in enumerate(todo, 1):
            run.store.save_arrays(names[c], quantize_streaming(latents, c, ipc, keys[c], config), fp)
            bar.update(i)
    else:
        mesh = class_mesh(jax.local_devices())
        group = config.get("classes_per_call", 8)
        for start in range(0, len(todo), group):
            classes = todo[start : start + group]
            results = quantize_in_memory(latents, classes, ipc, jnp.stack([keys[c] for c in classes]), config, mesh)
            for c, arrays in zip(classes, results):
                run.store.save_arrays(names[c], arrays, fp)
            bar.update(start + len(classes))
    parallel.sync_processes(f"quantize_ipc{ipc}")
    missing = [n for n in names if not run.store.is_complete(n, fp)]
    if missing:
        raise artifacts.ArtifactError(f"quantize: {len(missing)} classes have no result (e.g. {missing[0]}); is the workdir shared by all hosts?")
    return ClassQuantization(ipc, names, fp)


def run(run, latents) -> dict[int, ClassQuantization]:
    out = {}
    for ipc in run.config.ipcs:
        fp = artifacts.fingerprint("imagenet_quantize", latents.fingerprint, run.config.quantize, ipc, run.config.seed)
        out[ipc] = quantize_ipc(run, latents, ipc, fp)
        distortions = [float(out[ipc].load(run.store, c)["distortion"]) for c in range(latents.num_classes)]
        logging.info("quantize IPC %d (%s): mean distortion %.4f over %d classes", ipc, run.config.quantize.method,
                     float(np.mean(distortions)), len(distortions))
    return out
