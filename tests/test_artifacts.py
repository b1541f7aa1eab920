import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from pqdjax import artifacts


def test_fingerprint_is_stable_and_sensitive():
    a = artifacts.fingerprint("x", {"b": 1, "a": (1, 2)})
    assert a == artifacts.fingerprint("x", {"a": [1, 2], "b": 1})
    assert a != artifacts.fingerprint("x", {"a": [1, 2], "b": 2})


def test_fingerprint_ignores_logging_and_checkpoint_intervals():
    import ml_collections

    config = ml_collections.ConfigDict({"train": {"steps": 5, "log_every": 1, "checkpoint_every": 2}})
    changed = ml_collections.ConfigDict({"train": {"steps": 5, "log_every": 7, "checkpoint_every": 9}})
    assert artifacts.fingerprint(config) == artifacts.fingerprint(changed)
    changed.train.steps = 6
    assert artifacts.fingerprint(config) != artifacts.fingerprint(changed)


def test_arrays_roundtrip_and_marker(tmp_path):
    store = artifacts.ArtifactStore(str(tmp_path))
    assert not store.is_complete("q/a.npz", "f1")
    store.save_arrays("q/a.npz", {"x": np.arange(3.0), "k": 7}, "f1", {"note": 1})
    assert store.is_complete("q/a.npz", "f1") and not store.is_complete("q/a.npz", "f2")
    assert store.info("q/a.npz")["note"] == 1
    out = store.load_arrays("q/a.npz")
    np.testing.assert_array_equal(out["x"], np.arange(3.0))
    assert int(out["k"]) == 7
    assert sorted(os.listdir(tmp_path / "q")) == ["a.npz", "a.npz.done"]  # no temporary left


def test_object_arrays_are_refused(tmp_path):
    store = artifacts.ArtifactStore(str(tmp_path))
    with pytest.raises(artifacts.ArtifactError, match="dtype object"):
        store.save_arrays("a.npz", {"x": np.array([{"a": 1}], dtype=object)}, "f")
    assert not os.path.exists(tmp_path / "a.npz")


def test_corrupt_arrays_raise_and_unmark(tmp_path):
    store = artifacts.ArtifactStore(str(tmp_path))
    store.save_arrays("a.npz", {"x": np.arange(100)}, "f")
    path = tmp_path / "a.npz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(artifacts.ArtifactError, match="corrupt.*rerun"):
        store.load_arrays("a.npz")
    assert not store.is_complete("a.npz", "f")


def test_failed_write_leaves_nothing(tmp_path):
    store = artifacts.ArtifactStore(str(tmp_path))

    class Boom(Exception):
        pass

    class Exploding:
        def __array__(self, *args, **kwargs):
            raise Boom()

    with pytest.raises(Boom):
        store.save_arrays("a.npz", {"x": np.arange(3), "y": Exploding()}, "f")
    assert os.listdir(tmp_path) == []


def test_params_roundtrip_and_mismatch(tmp_path):
    store = artifacts.ArtifactStore(str(tmp_path))
    params = {"dense": {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.zeros(3)}}
    store.save_params("model/params", params, "f", {"accuracy": 0.5})
    restored = store.load_params("model/params", params)
    np.testing.assert_array_equal(restored["dense"]["kernel"], params["dense"]["kernel"])
    wrong = {"dense": {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}}
    with pytest.raises(artifacts.ArtifactError, match="does not match the model"):
        store.load_params("model/params", wrong)


def test_write_json_is_atomic_and_readable(tmp_path):
    path = str(tmp_path / "r.json")
    artifacts.write_json(path, {"a": (1, 2), "b": np.float32(0.5)})
    assert json.load(open(path)) == {"a": [1, 2], "b": 0.5}


def test_workdir_that_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(artifacts.ArtifactError, match="cannot create workdir.*writable --workdir"):
        artifacts.ArtifactStore(str(tmp_path / "file" / "run"))


def test_unwritable_workdir():
    """A folder the user cannot write to. As root (CI) permissions bind only for another user: the check runs in a
    child process that drops its effective user id to nobody (in this process it would touch the test's threads)."""
    import pathlib
    import shutil
    import subprocess
    import sys
    import tempfile

    parent = pathlib.Path(tempfile.mkdtemp(prefix="pqdjax-ro-"))  # under /tmp: a path the dropped user can walk
    parent.chmod(0o755)
    target = parent / "ro"
    target.mkdir()
    target.chmod(0o555)
    drop = "os.setegid(65534); os.seteuid(65534); " if os.geteuid() == 0 else ""
    child = "import os; from pqdjax import artifacts; " + drop + f"artifacts.ArtifactStore({str(target)!r})"
    try:
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert out.returncode == 1
        assert re.search(r"ArtifactError: workdir .*/ro is not writable \(Permission denied\); choose a writable --workdir",
                         out.stderr), out.stderr
    finally:
        target.chmod(0o700)
    assert os.listdir(target) == []  # the check leaves nothing behind
    shutil.rmtree(parent)


def test_folder_digest_identifies_a_checkpoint_folder_without_reading_it_all(tmp_path):
    """artifacts.folder_digest (the pretrained prior's identity in fingerprints): equal for a copy, different for
    another header, another size or another file name; against sha256 of the sampled bytes written out here."""
    import hashlib
    import shutil

    folder = tmp_path / "ckpt"
    (folder / "unet").mkdir(parents=True)
    big = np.random.default_rng(0).integers(0, 256, 3 * 1024, dtype=np.uint8).tobytes()
    (folder / "unet" / "model.safetensors").write_bytes(big)
    (folder / "config.json").write_text('{"a": 1}')
    shutil.copytree(folder, tmp_path / "copy")
    assert artifacts.folder_digest(str(folder), sample=1024) == artifacts.folder_digest(str(tmp_path / "copy"), sample=1024)
    # the oracle: the files in sorted order, each its path, size, first and last 1024 bytes
    oracle = hashlib.sha256()
    for rel, data in (("config.json", b'{"a": 1}'), ("unet/model.safetensors", big)):
        oracle.update(f"{rel}\0{len(data)}\0".encode() + data[:1024] + (data[-1024:] if len(data) > 1024 else b""))
    assert artifacts.folder_digest(str(folder), sample=1024) == oracle.hexdigest()[:16]
    before = artifacts.folder_digest(str(folder), sample=1024)
    changed_header = b"\x00" + big[1:]
    (folder / "unet" / "model.safetensors").write_bytes(changed_header)
    assert artifacts.folder_digest(str(folder), sample=1024) != before
    (folder / "unet" / "model.safetensors").write_bytes(big + b"x")
    assert artifacts.folder_digest(str(folder), sample=1024) != before
    (folder / "unet" / "model.safetensors").write_bytes(big)
    (folder / "config.json").rename(folder / "other.json")
    assert artifacts.folder_digest(str(folder), sample=1024) != before
