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


@pytest.mark.parametrize("fields, message", [
    (dict(num_processes=2, process_id=0), r"sets \['num_processes', 'process_id'\] but not \['coordinator_address'\]"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0), "num_processes must be a positive integer"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), r"process_id must be in \[0, num_processes=2\), got 2"),
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=1), "must be HOST:PORT"),
])
def test_explicit_distributed_fields_that_cannot_start_a_run_are_one_line_errors(fields, message):
    with pytest.raises(ValueError, match=message) as error:
        parallel.initialize_distributed(ml_collections.ConfigDict(dict(enabled=True, **fields)))
    assert "\n" not in str(error.value)
    assert jax.process_count() == 1  # refused before jax.distributed started


def test_a_coordinator_port_in_use_is_a_one_line_error():
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = ml_collections.ConfigDict(dict(enabled="True", coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=0))
        with pytest.raises(ValueError, match=f"port {port} is in use on this machine; choose a free port"):
            parallel.initialize_distributed(config)
    assert jax.process_count() == 1


def test_write_once_writes_and_names_an_unshared_workdir(tmp_path, monkeypatch):
    from pqdjax import artifacts

    store = artifacts.ArtifactStore(str(tmp_path))
    parallel.write_once(store, "a.json", "fp", lambda: store.save_record("a.json", {"x": 1}, "fp"))
    assert store.load_record("a.json") == {"x": 1}
    parallel.write_once(store, "a.json", "fp", lambda: pytest.fail("written twice"))  # complete: not rewritten
    # a process other than 0 whose workdir is not process 0's sees nothing after the barrier, however long it waits
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    waited = []
    monkeypatch.setattr(parallel.time, "sleep", waited.append)
    with pytest.raises(ValueError, match="does not see .*b.json, which process 0 wrote: the workdir must be one folder"):
        parallel.write_once(store, "b.json", "fp", lambda: store.save_record("b.json", {}, "fp"))
    assert waited == list(parallel.SHARED_FS_WAITS) and sum(waited) > 60  # a minute for NFS's cached lookups


def test_class_latents_do_not_depend_on_how_many_processes_encoded(tmp_path):
    """A class's latents read across the processes' files are those of one process's file, in order."""
    from pqdjax.stages.encode import Latents, class_file

    rows = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
    layouts = {1: [rows], 2: [rows[:3], rows[3:]], 3: [rows[:1], rows[1:5], rows[5:]]}
    for processes, parts in layouts.items():
        folders = []
        for p, part in enumerate(parts):
            folder = tmp_path / f"{processes}_{p}"
            folder.mkdir()
            part.tofile(folder / class_file(0))
            folders.append(str(folder))
        latents = Latents(tuple(folders), np.array([[len(part)] for part in parts]), (3, 1, 1), 1, "fp")
        np.testing.assert_array_equal(latents.load(0), rows, err_msg=f"{processes} processes")
