"""The Mesh from config, shardings, and when jax.distributed starts."""

import jax
import ml_collections
import numpy as np
import pytest

from pqdjax import parallel


def test_mesh_from_config_and_its_errors():
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(shape=(-1, 2), axes=("data", "model"))))
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        parallel.make_mesh(ml_collections.ConfigDict(dict(shape=(3,), axes=("data",))))
    with pytest.raises(ValueError, match="include 'data'"):
        parallel.make_mesh(ml_collections.ConfigDict(dict(shape=(-1,), axes=("batch",))))
    with pytest.raises(ValueError, match="not divisible by the 8 devices"):
        parallel.check_batch_size(parallel.make_mesh(), 12)


def test_shard_host_batch_splits_rows_over_devices():
    mesh = parallel.make_mesh()
    batch = parallel.shard_host_batch(mesh, {"x": np.arange(16.0).reshape(16, 1)})
    shards = sorted(batch["x"].addressable_shards, key=lambda s: s.index[0].start)
    assert [s.data.shape for s in shards] == [(2, 1)] * 8
    np.testing.assert_array_equal(np.asarray(shards[3].data)[:, 0], [6.0, 7.0])
    assert parallel.host_batch_slice(16) == slice(0, 16)  # one process holds the whole global batch


def test_distributed_starts_only_when_asked_or_detected():
    assert parallel.initialize_distributed(None) is False
    assert parallel.initialize_distributed(ml_collections.ConfigDict(dict(enabled=False))) is False
    assert parallel.initialize_distributed(ml_collections.ConfigDict(dict(enabled="auto"))) is False  # no cluster here
    for typed in ("False", "false", "0"):  # as a command line gives them, the default being the string 'auto'
        assert parallel.initialize_distributed(ml_collections.ConfigDict(dict(enabled=typed))) is False
    with pytest.raises(ValueError, match="'auto', True or False"):
        parallel.initialize_distributed(ml_collections.ConfigDict(dict(enabled="yes")))
    assert jax.process_count() == 1
