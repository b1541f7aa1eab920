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

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from pqdjax.errors import ConfigError, InputError

PyTree = Any
DATA_AXIS = "data"


def initialize_distributed(config: ml_collections.ConfigDict | None) -> bool:
    """Starts jax.distributed when config.enabled is True, or 'auto' and a cluster is detected; returns whether it did.

    config fields: enabled ('auto' | True | False, also as typed on the command line:
    'True', 'false') and optional coordinator_address, num_processes, process_id
    (needed only where JAX cannot detect the cluster; checked by
    check_distributed_fields), initialization_timeout (s to wait for all
    processes to join) and heartbeat_timeout_seconds (s after which a silent
    process counts as dead and the others stop). Must run before anything
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
    check_distributed_fields(explicit)
    timeouts = {k: int(config[k]) for k in ("initialization_timeout", "heartbeat_timeout_seconds") if config.get(k)}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        # JAX aborts the process (no Python exception) when the processes do not all join in time: say what it waits for.
        logging.info("distributed: process %s of %s joining %s (timeout %s s)", explicit.get("process_id"), explicit.get("num_processes"),
                     explicit.get("coordinator_address"), timeouts.get("initialization_timeout", 300))
    jax.distributed.initialize(**explicit, **timeouts)
    return True


def check_distributed_fields(explicit: dict) -> None:
    """One-line errors for explicit coordinator_address / num_processes / process_id that cannot start a run, and for a
    coordinator port already in use on this machine (process 0 would abort inside JAX instead)."""
    if not explicit:
        return
    missing = [k for k in ("coordinator_address", "num_processes", "process_id") if k not in explicit]
    if missing:
        raise ConfigError(f"config.distributed sets {sorted(explicit)} but not {missing}: set all three, or none on a cluster JAX detects.")
    num, pid, address = explicit["num_processes"], explicit["process_id"], str(explicit["coordinator_address"])
    if not isinstance(num, int) or num < 1:
        raise ConfigError(f"config.distributed.num_processes must be a positive integer (the number of processes started), got {num!r}.")
    if not isinstance(pid, int) or not 0 <= pid < num:
        raise ConfigError(f"config.distributed.process_id must be in [0, num_processes={num}), got {pid!r}: number the processes 0 .. {num - 1}.")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"config.distributed.coordinator_address must be HOST:PORT (process 0's address), got {address!r}.")
    if pid == 0 and host in ("127.0.0.1", "localhost", "0.0.0.0", socket.gethostname()):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a restart's TIME_WAIT is no conflict
            try:
                probe.bind(("" if host == "0.0.0.0" else "127.0.0.1", int(port)))
            except OSError:
                raise ConfigError(f"config.distributed.coordinator_address {address}: port {port} is in use on this machine; "
                                  "choose a free port for the coordinator (process 0).") from None


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


def process_shard(num_items: int, process_index: int | None = None, process_count: int | None = None) -> np.ndarray:
    """The item indices this process takes of [0, num_items): its contiguous part (parts differ by at most 1), so that
    concatenating the parts in process order gives [0, num_items) in order."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    return np.array_split(np.arange(num_items), count)[index]


def gather_processes(local: PyTree) -> PyTree:
    """Every process's rows of each leaf (numpy [n_p, ...], the same n_p for every leaf of one process), concatenated
    in process order, on every process: with process_shard's parts, the whole in order. One process: `local` itself.

    The parts may differ in length (padded for the collective, then trimmed). Rows travel as their bytes, so every
    dtype comes back bit for bit (a collective on the values would narrow int64 and float64 without x64).
    """
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(jax.tree.map(np.asarray, local))
    lengths = {len(leaf) for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(f"gather_processes: every leaf needs the same number of rows, got {sorted(lengths)}.")
    counts = np.asarray(multihost_utils.process_allgather(np.int32(lengths.pop()))).reshape(-1)
    longest = int(counts.max())
    out = []
    for leaf in leaves:
        rows = np.zeros((longest,) + leaf.shape[1:], leaf.dtype)
        rows[: len(leaf)] = leaf
        as_bytes = rows.reshape(longest, -1).view(np.uint8)  # [longest, bytes per row]
        gathered = np.asarray(multihost_utils.process_allgather(as_bytes))  # [processes, longest, bytes per row]
        parts = [gathered[p, : counts[p]].copy().view(leaf.dtype).reshape((counts[p],) + leaf.shape[1:]) for p in range(len(counts))]
        out.append(np.concatenate(parts))
    gathered = jax.tree.unflatten(treedef, out)
    return {k: gathered[k] for k in local} if isinstance(local, dict) else gathered  # a dict keeps its key order


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-host run (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def complete_everywhere(store, name: str, fp: str) -> bool:
    """store.is_complete(name, fp), as every process sees it before any process goes on (and may write it).

    What a multi-process run checks before it decides to compute an artifact together: without the barrier,
    process 0 might write it (write_once) before another process looks, which would then skip the collectives
    and the barrier that process 0 waits in.
    """
    complete = store.is_complete(name, fp)
    sync_processes(f"checked {name}")
    return complete


# Seconds write_once waits, one after another, for a shared filesystem to show process 0's write (about a minute).
SHARED_FS_WAITS = (0.5, 1, 2, 4, 8, 16, 30)


def visible(store, name: str, fp: str) -> bool:
    """store.is_complete(name, fp), asked again for about a minute (SHARED_FS_WAITS) while it is not: another process
    wrote it, and network filesystems (NFS, gcsfuse) may answer from a cache of the lookup before the write."""
    for wait in SHARED_FS_WAITS:
        if store.is_complete(name, fp):
            return True
        time.sleep(wait)
        os.listdir(os.path.dirname(store.path(name)) or ".")  # a fresh listing of the folder refreshes NFS's view
    return store.is_complete(name, fp)


def write_once(store, name: str, fp: str, write: Callable[[], None]) -> None:
    """One writer for an artifact every process needs: process 0 calls write() (which must mark `name` complete
    with `fp` in the ArtifactStore `store`) unless it is complete already; then every process waits for it.

    A process that does not see it complete after the barrier does not share process 0's workdir: a clear error.
    """
    if jax.process_index() == 0 and not store.is_complete(name, fp):
        write()
    sync_processes(f"write_once {name}")
    if not visible(store, name, fp):
        raise InputError(
            f"process {jax.process_index()} does not see {store.path(name)}, which process 0 wrote: the workdir must be "
            "one folder on a filesystem that all processes share (e.g. NFS, a GCS fuse mount)."
        )
