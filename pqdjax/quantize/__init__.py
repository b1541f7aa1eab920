"""Optimal quantization of (class-wise) latent measures.

One functional entry point, in the style of ott-jax solvers (a frozen
dataclass of static options; pytree outputs; bounded loops, so everything
jits, vmaps and shards):

    quantize(x, mass, k, rng, method) -> Quantization            # one measure
    quantize_classes(x, mass, k, rngs, method, mesh) -> Quantization  # [C, n, d] padded classes

method: "lloyd" | "clvq" | "barycenter", or a solver instance (Lloyd(...),
CLVQ(...), Barycenter(...), or Restarts(solver, n_init): the best of n_init
seeds) carrying its options. The pieces: k-means++,
Lloyd, CLVQ (also streamed: clvq_stream), the free-support W2 barycenter,
Voronoi weights, distortion and W2 (exact or Sinkhorn).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pqdjax.quantize.barycenter import Barycenter, free_support_barycenter
from pqdjax.quantize.checks import check_mass
from pqdjax.quantize.clvq import CLVQ, CLVQState, StreamResult, clvq, clvq_step, clvq_stream
from pqdjax.quantize.lloyd import Lloyd, Quantization, kmeans_plus_plus, lloyd
from pqdjax.quantize.restarts import Restarts
from pqdjax.quantize.metrics import distortion, wasserstein2, wasserstein2_classes, wasserstein2_exact
from pqdjax.quantize.voronoi import assign, cell_masses, squared_distances, voronoi_weights

__all__ = [
    "Barycenter", "CLVQ", "CLVQState", "Lloyd", "METHODS", "Quantization", "StreamResult", "assign",
    "cell_masses", "class_mesh", "clvq", "clvq_step", "clvq_stream", "distortion", "free_support_barycenter",
    "Restarts", "kmeans_plus_plus", "lloyd", "quantize", "quantize_classes", "solver", "squared_distances",
    "voronoi_weights", "wasserstein2", "wasserstein2_classes", "wasserstein2_exact",
]

METHODS = {"lloyd": Lloyd, "clvq": CLVQ, "barycenter": Barycenter}
CLASS_AXIS = "classes"


def solver(method: str | Lloyd | CLVQ | Barycenter | Restarts = "lloyd", n_init: int = 1, **options):
    """The solver for a method name with its options (e.g. solver("clvq", batch_size=512)), or `method` itself;
    with n_init > 1, the best of that many starts (Restarts)."""
    if not isinstance(method, str):
        if options:
            raise ValueError("pass options either in the solver instance or as keywords, not both.")
        return Restarts(method, n_init) if n_init > 1 else method
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; known: {sorted(METHODS)}.")
    base = METHODS[method](**options)
    return Restarts(base, n_init) if n_init > 1 else base


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(
            f"K = {k} quantization points for a measure of {n} samples; K must be between 1 and the number of samples. "
            "(K above the number of distinct samples is allowed: the extra points repeat samples and get zero weight.)"
        )


def quantize(x: jax.Array, mass: jax.Array, k: int, rng: jax.Array, method="lloyd") -> Quantization:
    """K-point quantizer of mu = sum_i mass_i delta_{x_i}.

    Args:
      x: [n, d] samples; mass: [n] summing to 1 (zeros for padding; else a ValueError); k: K <= n.
      rng: PRNG key (seeding, mini-batches). method: a name in METHODS or a solver.
    Returns:
      Quantization: points [K, d], Voronoi weights [K], assignment [n], distortion,
      iterations, converged.
    """
    _check_k(k, x.shape[0])
    check_mass(mass, x.shape[:1])
    return solver(method)(x, mass, k, rng)


@functools.partial(jax.jit, static_argnames=("k", "method", "mesh"))
def _quantize_batched(x, mass, rngs, k, method, mesh=None):
    per_class = jax.vmap(lambda xc, mc, rc: method(xc, mc, k, rc))
    if mesh is None:
        return per_class(x, mass, rngs)
    # Each device quantizes its own classes (Lloyd runs them one after another, which a
    # partitioner could not split over the class axis without gathering it).
    spec = PartitionSpec(CLASS_AXIS)
    # check_vma=False: the solvers build their loop carries from constants, which shard_map
    # would otherwise type as replicated rather than per-device.
    return jax.shard_map(per_class, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)(x, mass, rngs)


def class_mesh(devices=None) -> Mesh:
    """A 1-D Mesh over `devices` (default: all) whose axis "classes" shards the class axis."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (CLASS_AXIS,))


def quantize_classes(x, mass, k: int, rngs: jax.Array, method="lloyd", mesh: Mesh | None = None) -> Quantization:
    """`quantize` for every class at once: vmap over classes, class axis sharded over `mesh`.

    Classes of unequal size are padded to a common n with zero-mass rows
    (pqdjax.data.grouping.stack_padded), which changes no result. With a mesh
    of D devices, the C classes are padded to a multiple of D (by repeating
    the last class; the copies are dropped) and split over the devices;
    results equal the unsharded ones to float tolerance.

    Args:
      x: [C, n, d]; mass: [C, n]; k: K; rngs: [C] keys; method: name or solver;
      mesh: a Mesh with a "classes" axis (class_mesh()), or None for the default device.
    Returns:
      Quantization whose fields have a leading [C] axis.
    """
    _check_k(k, x.shape[1])
    check_mass(mass, x.shape[:2])
    method = solver(method)
    if mesh is None:
        return _quantize_batched(x, mass, rngs, k, method)
    num_classes, devices = x.shape[0], mesh.shape[CLASS_AXIS]
    extra = -num_classes % devices
    pad = lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], extra, axis=0)]) if extra else a
    sharding = NamedSharding(mesh, PartitionSpec(CLASS_AXIS))
    x, mass, rngs = (jax.device_put(pad(jnp.asarray(a)), sharding) for a in (x, mass, rngs))
    out = _quantize_batched(x, mass, rngs, k, method, mesh)
    return jax.tree.map(lambda a: a[:num_classes], out)
