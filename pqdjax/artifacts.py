"""Artifacts in a run's workdir, written atomically and marked complete.

Every artifact `name` (a file or a folder under the workdir) has a marker
`name.done`, a JSON file holding the fingerprint of what produced it (a hash
of the config fields it depends on and of its inputs' fingerprints) and a
few facts about it (wall time, metrics). A stage is skipped when its marker
exists with the fingerprint it would produce now; a changed config changes
the fingerprint and redoes the stage and those after it.

The artifact is written under a temporary name and renamed into place, and
the marker is written after it, so a killed run never leaves a half-written
artifact that looks complete. Arrays are stored as .npz (read without
pickle); parameters as orbax checkpoints.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from pqdjax.errors import InputError

_MARKER_SUFFIX = ".done"
_TEMP_INFIX = ".tmp-"  # in the names of the temporary folders of _atomic_path


class ArtifactError(InputError, RuntimeError):
    """An artifact cannot be read or written (the workdir: disk full, unshared between hosts, damaged)."""


# Config fields that change how a stage reports, checkpoints or groups its work, never what it computes:
# left out of fingerprints, so that changing them redoes no work.
UNFINGERPRINTED_FIELDS = frozenset({"log_every", "checkpoint_every", "flush_every", "classes_per_call"})


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (configs as dicts, other fingerprints)."""
    text = json.dumps(_without_unfingerprinted(parts), sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_digest(path: str) -> str:
    """sha256 of a file's content (a checkpoint's identity in fingerprints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def folder_digest(folder: str, sample: int = 1 << 20) -> str:
    """A cheap identity of a folder of large files (a diffusion checkpoint, several GB): every file's relative path,
    size, and sha256 of its first and last `sample` bytes (a safetensors header lists every tensor's shape and
    offset), so another checkpoint or a changed file gives another digest without reading gigabytes."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            digest.update(f"{os.path.relpath(path, folder)}\0{size}\0".encode())
            with open(path, "rb") as f:
                digest.update(f.read(sample))
                if size > sample:
                    f.seek(max(sample, size - sample))
                    digest.update(f.read(sample))
    return digest.hexdigest()[:16]


def _without_unfingerprinted(value: Any) -> Any:
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _without_unfingerprinted(v) for k, v in value.items() if k not in UNFINGERPRINTED_FIELDS}
    if isinstance(value, (list, tuple)):
        return [_without_unfingerprinted(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        return value.to_dict()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot fingerprint {type(value).__name__}")


@contextlib.contextmanager
def _atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(path) + _TEMP_INFIX, dir=folder)
    tmp_path = os.path.join(tmp, os.path.basename(path))
    try:
        yield tmp_path
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    except Exception as e:
        if _is_disk_full(e):
            raise ArtifactError(
                f"the disk is full: could not write {path}; free space on that disk or choose a --workdir on another one, then rerun."
            ) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from (orbax wraps them), is ENOSPC or EDQUOT."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def write_json(path: str, obj: Any) -> None:
    """Writes obj as indented JSON, atomically."""
    with _atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")


def write_text(path: str, text: str) -> None:
    with _atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    with _atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def _one_process_checkpointer():
    """An orbax checkpointer that involves only this process: the store has one writer (process 0, or each process
    for its own files) and every process reads alone, so orbax must not wait for the others at its barriers."""
    import orbax.checkpoint as ocp  # slow to import; only stages with parameters need it

    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me}))


class ArtifactStore:
    """The artifacts of one run, under `workdir`."""

    def __init__(self, workdir: str):
        self.workdir = os.path.abspath(workdir)
        try:
            os.makedirs(self.workdir, exist_ok=True)
        except OSError as e:
            raise ArtifactError(f"cannot create workdir {self.workdir}: {e.strerror}; choose a writable --workdir.") from e
        try:  # a real write (not os.access, which asks for the real user id and trusts what the mount reports)
            with tempfile.NamedTemporaryFile(dir=self.workdir, prefix=".write-check-"):
                pass
        except OSError as e:
            raise ArtifactError(f"workdir {self.workdir} is not writable ({e.strerror}); choose a writable --workdir.") from e

    def remove_temporaries(self) -> list[str]:
        """Deletes the temporary folders a killed run left behind (one run per workdir at a time)."""
        removed = []
        for folder, dirs, _ in os.walk(self.workdir):
            for d in list(dirs):
                if _TEMP_INFIX in d:
                    shutil.rmtree(os.path.join(folder, d), ignore_errors=True)
                    removed.append(os.path.join(folder, d))
                    dirs.remove(d)
        return removed

    def path(self, name: str) -> str:
        return os.path.join(self.workdir, name)

    def _marker(self, name: str) -> str:
        return self.path(name) + _MARKER_SUFFIX

    def info(self, name: str) -> dict[str, Any] | None:
        """The marker of a complete artifact, or None."""
        marker = self._marker(name)
        if not os.path.isfile(marker) or not os.path.exists(self.path(name)):
            return None
        try:
            with open(marker) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError):
            return None  # a marker we cannot read marks nothing

    def is_complete(self, name: str, fp: str) -> bool:
        info = self.info(name)
        return info is not None and info.get("fingerprint") == fp

    def _invalidate(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._marker(name))

    def remove(self, name: str) -> None:
        """Deletes an artifact (file or folder), its marker first."""
        self._invalidate(name)
        path = self.path(name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def _mark(self, name: str, fp: str, info: Mapping[str, Any]) -> None:
        write_json(self._marker(name), {"fingerprint": fp, **info})

    # -- files and folders made by a function ------------------------------------------------------------------

    def write_artifact(self, name: str, fill: Callable[[str], None], fp: str, info: Mapping[str, Any] = {}) -> None:
        """Calls fill(path) to create a file or folder at a temporary path, renames it onto `name`, then marks it complete."""
        self._invalidate(name)
        with _atomic_path(self.path(name)) as tmp:
            fill(tmp)
        self._mark(name, fp, info)

    def finish_folder(self, partial: str, name: str, fp: str, info: Mapping[str, Any] = {}) -> None:
        """Renames `partial`, a folder filled in place over time (streamed to, resumed), onto `name` and marks it complete.

        `partial` must not contain ".tmp-" (remove_temporaries would delete it on
        the next start), and nothing marks it complete before this rename.
        """
        self._invalidate(name)
        target = self.path(name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(self.path(partial), target)
        self._mark(name, fp, info)

    # -- arrays -----------------------------------------------------------------

    def save_arrays(self, name: str, arrays: Mapping[str, Any], fp: str, info: Mapping[str, Any] = {}) -> None:
        """Saves numeric arrays as an uncompressed .npz (no object arrays), then marks it complete."""
        self._invalidate(name)
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for key, value in arrays.items():
            if value.dtype == object:
                raise ArtifactError(f"{name}: array {key!r} has dtype object; only numeric arrays are stored.")
        with _atomic_path(self.path(name)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        self._mark(name, fp, info)

    def load_arrays(self, name: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of a .npz that save_arrays wrote; only `keys` if given (the others are not read)."""
        try:
            with np.load(self.path(name), allow_pickle=False) as data:
                return {k: data[k] for k in (data.files if keys is None else keys)}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            self._invalidate(name)
            raise ArtifactError(f"{self.path(name)} is corrupt ({e}); rerun to recreate it.") from e

    # -- parameters -------------------------------------------------------------

    def save_params(self, name: str, params: Any, fp: str, info: Mapping[str, Any] = {}) -> None:
        """Saves a parameter pytree as an orbax checkpoint folder, then marks it complete."""
        self._invalidate(name)
        # host copies: orbax saves no single-device array in a multi-process run, and a replicated array is whole here
        params = jax.tree.map(np.asarray, params)
        with _atomic_path(self.path(name)) as tmp:
            with _one_process_checkpointer() as checkpointer:
                checkpointer.save(tmp, params)
                checkpointer.wait_until_finished()
        self._mark(name, fp, info)

    def load_params(self, name: str, target: Any) -> Any:
        """Restores parameters saved by save_params; `target` gives their structure, shapes and dtypes."""
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype), target)
        try:
            with _one_process_checkpointer() as checkpointer:
                restored = checkpointer.restore(self.path(name), abstract)
            shapes = [(np.shape(a), b.shape) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract))]
            wrong = [(got, want) for got, want in shapes if got != want]
            if wrong:
                raise ValueError(f"{len(wrong)} arrays have other shapes than the model's (e.g. {wrong[0][0]}, expected {wrong[0][1]})")
            return restored
        except Exception as e:  # noqa: BLE001 - orbax raises many types for a bad checkpoint
            self._invalidate(name)
            raise ArtifactError(
                f"checkpoint {self.path(name)} is corrupt or does not match the model in the config "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); rerun to retrain it."
            ) from e

    # -- small JSON records ---------------------------------------------------------

    def save_record(self, name: str, record: Mapping[str, Any], fp: str) -> None:
        """A JSON result (e.g. one student's accuracy); the record itself is the marker's payload."""
        self._invalidate(name)
        write_json(self.path(name), record)
        self._mark(name, fp, {})

    def load_record(self, name: str) -> dict[str, Any]:
        with open(self.path(name)) as f:
            return json.load(f)
