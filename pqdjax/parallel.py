"""Devices: multi-host start-up, the one Mesh of a run, and shardings over it.

Every stage of a run uses the same `jax.sharding.Mesh`, built from
config.mesh: a tuple of axis sizes and names, by default one axis 'data' over
all devices of all processes (-1 = whatever the other axes leave). Batches are
sharded over 'data' (`batch_sharding`), parameters and optimizer state are
replicated (`replicated`), and under `jax.jit` XLA inserts the collectives:
a mean over a sharded batch is a global mean, so BatchNorm's batch statistics
and the loss are those of the whole global batch, as on one device.

Multi-host (a TPU pod slice, several GPU nodes): every process runs the same
program; `initialize_distributed` calls `jax.distributed.initialize()`, which
finds the coordinator from the TPU or SLURM/MPI environment (or from
config.distributed.coordinator_address / num_processes / process_id). Each
process loads only its own part of every global batch
(`host_batch_slice`) and `shard_host_batch` assembles the global array.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from pqdjax.errors import ConfigError

PyTree = Any
DATA_AXIS = "data"


def initialize_distributed(config: ml_collections.ConfigDict | None) -> bool:
    """Starts jax.distributed when config.enabled is True, or 'auto' and a cluster is detected; returns whether it did.

    config fields: enabled ('auto' | True | False, also as typed on the command line:
    'True', 'false') and optional coordinator_address, num_processes, process_id
    (needed only where JAX cannot detect the cluster). Must run before anything
    touches the devices. CPU processes exchange collectives over gloo (the CPU
    client's setting; accelerators keep their own collectives).
    """
    from pqdjax.config_fields import as_switch

    enabled = as_switch(config.get("enabled", "auto")) if config is not None else False
    if enabled is None:
        raise ConfigError(f"config.distributed.enabled must be 'auto', True or False, got {config.enabled!r}.")
    if enabled is False:
        return False
    explicit = {k: config.get(k) for k in ("coordinator_address", "num_processes", "process_id") if config.get(k) not in (None, "", -1)}
    if enabled == "auto" and not explicit and not _cluster_detected():
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**explicit)
    return True


def _cluster_detected() -> bool:
    """Whether jax.distributed would find a cluster (TPU pod, SLURM, Open MPI, Kubernetes) by itself."""
    try:  # the detection jax.distributed.initialize() itself runs; private, so guarded
        from jax._src.clusters import ClusterEnv

        return any(env.is_env_present() for env in ClusterEnv._cluster_types)
    except (ImportError, AttributeError):
        return False


def make_mesh(config: ml_collections.ConfigDict | None = None, devices=None) -> Mesh:
    """The run's Mesh: config.shape (axis sizes, one -1 allowed) over config.axes (names; one must be 'data').

    Default (config None): one 'data' axis over every device of every process
    (or over `devices`). The axes are of type Auto: jit's sharding propagation
    decides intermediate shardings, as in a plain single-device program.
    """
    shape = tuple(config.shape) if config is not None else (-1,)
    axes = tuple(config.axes) if config is not None else (DATA_AXIS,)
    if len(shape) != len(axes) or DATA_AXIS not in axes:
        raise ConfigError(f"config.mesh: shape {shape} and axes {axes} must have equal length and include {DATA_AXIS!r}.")
    count = len(devices) if devices is not None else jax.device_count()
    known = int(np.prod([s for s in shape if s != -1]))
    if shape.count(-1) > 1 or count % known:
        raise ConfigError(f"config.mesh.shape {shape} does not fit {count} devices (at most one -1, sizes dividing {count}).")
    shape = tuple(count // known if s == -1 else s for s in shape)
    if int(np.prod(shape)) != count:
        raise ConfigError(f"config.mesh.shape {shape} uses {int(np.prod(shape))} of the {count} devices; use -1 for the data axis.")
    return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, small inputs)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis split over the mesh's data axis; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape[DATA_AXIS]


def check_batch_size(mesh: Mesh, batch_size: int) -> None:
    """A global batch must split evenly over the data axis."""
    if batch_size % data_parallel_size(mesh):
        raise ConfigError(
            f"batch size {batch_size} is not divisible by the {data_parallel_size(mesh)} devices of the mesh's "
            f"'{DATA_AXIS}' axis; choose a multiple of {data_parallel_size(mesh)}."
        )


def host_batch_slice(batch_size: int) -> slice:
    """This process's rows of a global batch of `batch_size` (process p holds the p-th equal part)."""
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return slice(start, start + per_process)


def shard_host_batch(mesh: Mesh, local_batch: PyTree) -> PyTree:
    """This process's part of a global batch (numpy arrays, leading axis) -> global arrays sharded over 'data'."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(mesh: Mesh, tree: PyTree) -> PyTree:
    """Places a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def process_local_rows(array: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over 'data' on its leading axis, in global order, on the host.

    With shard_host_batch, these are exactly the rows this process put in.
    """
    parts = {}
    for shard in array.addressable_shards:
        start = (shard.index[0].start or 0) if shard.index else 0
        parts.setdefault(start, shard.data)  # replicas of a row block (other mesh axes) are read once
    return np.concatenate([np.asarray(parts[start]) for start in sorted(parts)])


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
