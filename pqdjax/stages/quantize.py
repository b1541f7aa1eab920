"""Stage quantize: per class, K = IPC points, their Voronoi weights, every baseline's images and W2 per method.

One implementation for every kind of run. It reads the latents through
stages.encode.Latents (per-class files):

    latents.num_classes, latents.counts_per_class()   int [C]
    latents.load(c)                                   class c's latents [n_c, d]
    latents.example_indices(c)                        their images' indices in the training split [n_c]

config.quantize.method picks the quantizer: "lloyd" (k-means++ then Lloyd),
"clvq" (competitive learning) or "barycenter" (free-support W2 barycenter with
uniform weights), each the best of config.quantize.n_init starts. Classes are
quantized config.quantize.classes_per_call at a time (0 or absent: all of this
process's classes in one call), padded with zero-mass rows to the largest class
and sharded over this process's devices; a class's result depends only on its
rows and its key, so not on the grouping or the number of processes. With
config.quantize.epochs set (configs/in1k.py), "clvq" is clvq_stream instead:
config.quantize.epochs passes over the class in mini-batches of
config.quantize.batch_size from k-means++ seeds on the first mini-batch, then
one more pass for the exact Voronoi weights, one class at a time (one
mini-batch on the device).

The classes of a call are in host memory while they are quantized, with a
padded copy (an ImageNet class at 512 px: 1,300 x 16,384 floats, 85 MB),
since the real-image baselines and W2 need all of a class's latents. Each
process quantizes its part of the classes
(pqdjax.parallel.process_shard) and writes, per IPC K and class c (a rerun
skips finished classes), quantize/ipc{K}/class{c:04d}.npz:

  points [K, d]             the quantization points (D4M and DDOQ share them)
  weights [K]               their Voronoi cell masses (DDOQ's weights), summing to 1
  distortion, iterations, converged []
  random_rows [K]           K random rows of the class (draw 0 of random_draw; the students
                            of other seeds draw anew, pqdjax.stages.decode.set_for_seed)
  medoid_rows [K]           the row whose latent is nearest each point
  medoid_weights [K]        the Voronoi cell masses of those latents
  herding_rows [K]          K rows chosen by herding toward the class's latent mean
                            (pqdjax.quantize.selection)
  {random,medoid,herding}_indices [K]
                            the same rows as indices of their images in the training split
  w2_{method} []            W2 from the class's latent measure to each base method's weighted
                            latent set (class_method_set; real-image methods: their images'
                            latents). ddoq's is sqrt(distortion), exact because Voronoi
                            weights make the nearest-point map optimal; the others solve the
                            transport problem exactly where n x K <=
                            config.quantize.w2_exact_max_size, else by Sinkhorn (ott-jax).
  w2_exact []               whether every W2 of the class is exact
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.config_checks import W2_METHODS, point_source
from pqdjax.data.grouping import EmptyClassError, stack_padded
from pqdjax.progress import Progress
from pqdjax.quantize import class_mesh, clvq_stream, kmeans_plus_plus, quantize_classes, selection, solver, wasserstein2_classes
from pqdjax.quantize.voronoi import voronoi_weights

SOURCES = ("random", "medoid", "herding")  # the real-image point sources, stored as {source}_rows and {source}_indices


def class_name(ipc: int, c: int) -> str:
    return f"quantize/ipc{ipc}/class{c:04d}.npz"


@dataclasses.dataclass(frozen=True)
class Quantized:
    """One IPC's per-class quantizations in the store (see the module docstring) and their fingerprint."""

    ipc: int
    num_classes: int
    store: artifacts.ArtifactStore
    fingerprint: str

    def load(self, c: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Class c's arrays (only `keys` if given: the others are not read)."""
        return self.store.load_arrays(class_name(self.ipc, c), keys)

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Every class's arrays stacked [C, ...] (points [C, K, d]: for runs whose classes fit in memory together)."""
        per_class = [self.load(c) for c in range(self.num_classes)]
        return {key: np.stack([arrays[key] for arrays in per_class]) for key in per_class[0]}

    def _stacked(self, key: str, classes: int | None = None) -> np.ndarray:
        return np.stack([self.load(c, (key,))[key] for c in range(self.num_classes if classes is None else classes)])

    def distortions(self) -> np.ndarray:
        """Each class's distortion [C]."""
        return self._stacked("distortion")

    def iterations(self) -> np.ndarray:
        """The quantizer's iterations per class [C] (streamed CLVQ: its mini-batches)."""
        return self._stacked("iterations")

    def stored_w2(self) -> dict[str, np.ndarray]:
        """{base method: W2 per class [C]} for every base method of W2_METHODS."""
        return {base: self._stacked(f"w2_{base}") for base in W2_METHODS}

    def class_weights(self, first: int) -> np.ndarray:
        """The Voronoi weights [first, K] of the first `first` classes."""
        return self._stacked("weights", first)

    def weights(self, c: int, base: str) -> np.ndarray:
        """A base method's weights [K] of class c (method_weights), reading only the array they come from."""
        key = WEIGHT_KEYS.get(base)
        return method_weights(self.load(c, (key,)) if key else {}, base, self.ipc)

    def class_set(self, base: str, c: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """A base method of W2_METHODS on class c: its latent points [K, d] (real-image methods: their images'
        latents, rows of the class's latents x [n_c, d]), their weights [K] and the W2 [] stored for it."""
        arrays = self.load(c)
        points, weights = class_method_set(arrays, base, x)
        return points, weights, float(arrays[f"w2_{base}"])

    def method_set(self, latents, base: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """class_method_set of every class, stacked: (points [C, K, d], weights [C, K], the real images' indices in
        the training split [C, K], or None for d4m, ddoq and generated). Reads every class's latents where the points
        are real images' latents."""
        source = point_source(base)
        classes = range(self.num_classes)
        xs = [None for _ in classes] if source == "kmeans" else [latents.load(c) for c in classes]  # kmeans: x unused
        points, weights = stacked_sets([self.load(c) for c in classes], base, xs)
        return points, weights, None if source == "kmeans" else self._stacked(f"{source}_indices")


WEIGHT_KEYS = {"ddoq": "weights", "medoid_weighted": "medoid_weights"}  # the base methods whose weights are not 1/K


def method_weights(arrays: dict[str, np.ndarray], base: str, ipc: int) -> np.ndarray:
    """float32 [K]: a base method's weights of one class: the Voronoi cell masses of the k-means points (ddoq) or of
    the medoids' latents (medoid_weighted) from the class's arrays, else uniform 1/K."""
    key = WEIGHT_KEYS.get(base)
    return np.full(ipc, 1.0 / ipc, np.float32) if key is None else arrays[key].astype(np.float32)


def class_method_set(arrays: dict[str, np.ndarray], base: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(latent points [K, d], weights [K]) of a base method (config_checks) on one class.

    arrays: the class's quantization (its keys as the module docstring lists them); x: the class's latents [n_c, d].
    """
    source = point_source(base)
    points = arrays["points"] if source == "kmeans" else x[arrays[f"{source}_rows"]]
    return points, method_weights(arrays, base, len(points))


def stacked_sets(per_class: list[dict[str, np.ndarray]], base: str, xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """class_method_set of several classes (their arrays and latents), stacked: (points [C, K, d], weights [C, K])."""
    sets = [class_method_set(arrays, base, x) for arrays, x in zip(per_class, xs)]
    return np.stack([p for p, _ in sets]), np.stack([w for _, w in sets])


def w2_settings(config) -> tuple[int, float, int]:
    """(exact_max_size, relative_epsilon, max_iterations) of wasserstein2_classes from config.quantize."""
    return (config.get("w2_exact_max_size", 10_000_000), config.get("w2_relative_epsilon", 3e-3),
            config.get("w2_max_iterations", 20000))


def class_w2(x: np.ndarray, points: np.ndarray, weights: np.ndarray, config) -> float:
    """W2 from the uniform measure on one class's latents x [n, d] to points [K, d] with weights [K], exact or by
    Sinkhorn as config.quantize's w2_* settings say (pqdjax.quantize.wasserstein2_classes)."""
    mass = np.full((1, len(x)), 1.0 / len(x), np.float32)
    return float(wasserstein2_classes(x[None], mass, points[None], weights[None], *w2_settings(config.quantize))[0][0])


def solver_from_config(config):
    """The quantization solver that config.quantize describes (in memory; not clvq_stream)."""
    n_init = config.get("n_init", 1)
    if config.method == "lloyd":
        return solver("lloyd", n_init, max_iter=config.max_iter, tol=config.tol)
    if config.method == "clvq":
        return solver("clvq", n_init, batch_size=config.clvq_batch_size, max_steps=config.max_iter, tol=config.tol)
    return solver(
        "barycenter", n_init, max_iter=config.max_iter, tol=config.tol, relative_epsilon=config.barycenter_relative_epsilon,
        sinkhorn_max_iterations=config.w2_max_iterations,  # also bounds the barycenter's Sinkhorn solves
    )


def random_rows(run, counts: np.ndarray, ipc: int, draw: int, classes=None) -> list[np.ndarray]:
    """Draw `draw` of the random baseline: K distinct random rows [K] of each of `classes` (default: every class),
    the classes having sizes counts [C] (class c's key: the c-th of C split from rng('random', K, draw)). Checks
    IPC <= every class's size."""
    if counts.min() < ipc:
        raise EmptyClassError(f"IPC {ipc} is larger than the smallest class ({int(counts.min())} training images: class "
                              f"{int(np.argmin(counts))}); choose IPC <= {int(counts.min())}.")
    keys = jax.random.split(run.rng("random", ipc, draw), len(counts))
    classes = range(len(counts)) if classes is None else classes
    return [np.asarray(_choice(keys[c], a=int(counts[c]), shape=(ipc,), replace=False)) for c in classes]


_choice = jax.jit(jax.random.choice, static_argnames=("a", "shape", "replace"))  # one program per class size


def random_draw(run, latents, ipc: int, draw: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw `draw` of the random baseline: (indices [C, K] of its images in the training split, their rows [K] in
    each class's latents, random_rows)."""
    rows = random_rows(run, latents.counts_per_class(), ipc, draw)
    return np.stack([latents.example_indices(c)[r] for c, r in enumerate(rows)]), rows


_seeds = jax.jit(kmeans_plus_plus, static_argnums=2)  # one program, not one per operation


@functools.partial(jax.jit, static_argnums=3)
def _real_image_rows(padded: jax.Array, mass: jax.Array, points: jax.Array, ipc: int) -> tuple[jax.Array, ...]:
    """(medoid rows [C, K], herding rows [C, K], the medoids' Voronoi weights [C, K]) of padded classes [C, n, d]
    with masses [C, n] and points [C, K, d] (pqdjax.quantize.selection)."""
    medoid_rows = jax.vmap(selection.medoids)(padded, mass, points)
    herding_rows = jax.vmap(selection.herding, in_axes=(0, 0, None))(padded, mass, ipc)
    medoids = jnp.take_along_axis(padded, medoid_rows[..., None], 1)
    return medoid_rows, herding_rows, jax.vmap(voronoi_weights)(padded, mass, medoids)


def _streams(config) -> bool:
    """Whether config.quantize asks for clvq_stream (method 'clvq' with epochs) rather than an in-memory solver."""
    return config.method == "clvq" and bool(config.get("epochs"))


def _streamed_clvq(x: np.ndarray, ipc: int, rng: jax.Array, config) -> dict[str, np.ndarray]:
    """clvq_stream over one class's latents x [n, d] in mini-batches of config.batch_size (one batch on the device)."""
    batch_size = config.batch_size
    first = x[: max(batch_size, ipc)]
    init = _seeds(jnp.asarray(first), jnp.full(len(first), 1.0 / len(first)), ipc, rng)
    result = clvq_stream(lambda: (x[i : i + batch_size] for i in range(0, len(x), batch_size)), np.asarray(init),
                         epochs=config.epochs)
    return {"points": np.asarray(result.points), "weights": np.asarray(result.weights, np.float32),
            "distortion": np.asarray(result.distortion, np.float32), "iterations": np.asarray(result.steps, np.int32),
            "converged": np.asarray(True)}


def quantize_group(run, latents, ipc: int, classes: list[int], keys: jax.Array, rows: list[np.ndarray],
                   n_max: int) -> list[dict[str, np.ndarray]]:
    """The arrays of the module docstring for `classes`, quantized together on this process's devices.

    keys: [len(classes)] the classes' quantization keys; rows: their random rows [K] each; n_max: the padded size.
    """
    config = run.config.quantize
    per_class = [latents.load(c) for c in classes]
    padded, mass = stack_padded(per_class, n_max)
    if _streams(config):
        found = [_streamed_clvq(x, ipc, key, config) for x, key in zip(per_class, keys)]
        q = {key: np.stack([f[key] for f in found]) for key in found[0]}
    else:
        result = jax.device_get(quantize_classes(jnp.asarray(padded), jnp.asarray(mass), ipc, keys, solver_from_config(config),
                                                 mesh=class_mesh(jax.local_devices())))
        q = {key: np.asarray(getattr(result, key)) for key in ("points", "weights", "distortion", "iterations", "converged")}
    medoid_rows, herding_rows, medoid_weights = jax.device_get(_real_image_rows(padded, mass, q["points"], ipc))
    arrays = {**q, "random_rows": np.stack(rows), "medoid_rows": medoid_rows, "herding_rows": herding_rows,
              "medoid_weights": medoid_weights}
    example_indices = [latents.example_indices(c) for c in classes]  # read once per class
    for source in SOURCES:
        arrays[f"{source}_indices"] = np.stack([index[r] for index, r in zip(example_indices, arrays[f"{source}_rows"])])
    exact = np.ones(len(classes), bool)
    for base in W2_METHODS:
        if base == "ddoq":  # exact: the Voronoi weights make the nearest-point map optimal
            arrays["w2_ddoq"] = np.sqrt(np.maximum(q["distortion"], 0.0)).astype(np.float32)
            continue
        points, weights = stacked_sets([{k: v[i] for k, v in arrays.items()} for i in range(len(classes))], base, per_class)
        arrays[f"w2_{base}"], base_exact = wasserstein2_classes(padded, mass, points, weights, *w2_settings(config))
        exact &= base_exact
    arrays["w2_exact"] = exact
    return [{key: value[i] for key, value in arrays.items()} for i in range(len(classes))]


def quantize_ipc(run, latents, ipc: int, fp: str) -> Quantized:
    """Quantizes this process's unfinished classes (groups of config.quantize.classes_per_call) into their files."""
    num_classes = latents.num_classes
    counts = latents.counts_per_class()
    keys = jax.random.split(run.rng("quantize", ipc), num_classes)
    mine = [int(c) for c in parallel.process_shard(num_classes)]
    todo = [c for c in mine if not run.store.is_complete(class_name(ipc, c), fp)]
    rows = dict(zip(todo, random_rows(run, counts, ipc, 0, todo)))  # also checks IPC <= every class's size
    config = run.config.quantize
    group = 1 if _streams(config) else config.get("classes_per_call", 0) or max(1, len(todo))  # clvq_stream: one class in memory
    bar = Progress(f"quantize IPC {ipc}", len(todo), unit="classes", log_every=max(1, len(todo) // 10))
    n_max = int(counts.max())  # padded to the largest class of all, whichever classes a call holds
    for start in range(0, len(todo), group):
        classes = todo[start : start + group]
        results = quantize_group(run, latents, ipc, classes, keys[np.asarray(classes)], [rows[c] for c in classes], n_max)
        for c, arrays in zip(classes, results):
            run.store.save_arrays(class_name(ipc, c), arrays, fp)
        bar.update(start + len(classes))
    parallel.sync_processes(f"quantize_ipc{ipc}")
    missing = next((c for c in range(num_classes) if not parallel.visible(run.store, class_name(ipc, c), fp)), None)
    if missing is not None:
        raise artifacts.ArtifactError(f"quantize: {run.store.path(class_name(ipc, missing))} is missing after every process "
                                      "quantized its classes; is the workdir on a filesystem all hosts share?")
    return Quantized(ipc, num_classes, run.store, fp)


def run(run, latents) -> dict[int, Quantized]:
    out = {}
    for ipc in run.config.ipcs:
        fp = artifacts.fingerprint("quantize", latents.fingerprint, run.config.quantize, ipc, run.config.seed, "baselines",
                                   "random_draw")
        out[ipc] = q = quantize_ipc(run, latents, ipc, fp)
        w2 = q.stored_w2()
        logging.info("quantize IPC %d (%s): distortion %.4f, W2 (means over classes) %s, iterations %s", ipc,
                     run.config.quantize.method, q.distortions().mean(), ", ".join(f"{m} {w2[m].mean():.4f}" for m in W2_METHODS),
                     q.iterations().tolist() if latents.num_classes <= 20 else f"{q.iterations().mean():.1f} on average")
    return out
