"""Pretrained components shipped with the repository: safetensors files and their manifest.

The embedded default's VAE, teacher and latent denoiser are trained once by

    python -m pqdjax.main --config=configs/default.py:pretrain --workdir=runs/pretrain

which runs the prior, teacher, encode and denoiser stages with long trainings
and then `export`s them into one folder (pretrained/fashion_mnist/): one
safetensors file per component (a flat dict of float32 tensors named by
their '/'-joined parameter path, no pickle) and manifest.json, which gives for
each file its sha256, size, the config that trained it, its training time on
the machine that trained it and its measured quality. A config loads one by
naming the file (config.prior.weights, config.teacher.weights,
config.denoiser.weights); `load_params` checks the file against the manifest
(present, same sha256, the same architecture config as the run's, the
tensors the model needs with their shapes) and raises `PretrainedError`,
one line naming the file and the retrain command, on any mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from pqdjax import artifacts
from pqdjax.errors import InputError

MANIFEST = "manifest.json"
RETRAIN_COMMAND = "python -m pqdjax.main --config=configs/default.py:pretrain --workdir=runs/pretrain"
# The repository root: relative weight paths in configs are resolved against it when they
# do not exist relative to the working directory.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PretrainedError(InputError):
    """A shipped weight file is missing, corrupt or does not fit the config."""


def resolve(path: str) -> str:
    """An existing path as given, else the same path under the repository root (which may not exist)."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    return os.path.join(REPO_ROOT, path)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _error(path: str, problem: str) -> PretrainedError:
    relative = os.path.relpath(path, REPO_ROOT)
    restore = "" if relative.startswith("..") else f"restore the file (git checkout -- {relative}) or "
    return PretrainedError(
        f"pretrained weights {path}: {problem}; {restore}retrain it with `{RETRAIN_COMMAND}`, "
        "or set the config's weights field to '' to train it in the run."
    )


def read_manifest(folder: str) -> dict[str, Any]:
    """The manifest of a folder of shipped weights ({} when it has none)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def manifest_entry(path: str) -> dict[str, Any]:
    """The manifest's entry for the weight file `path` (resolved); PretrainedError if it is not listed."""
    path = resolve(path)
    entries = read_manifest(os.path.dirname(path)).get("components", {})
    for entry in entries.values():
        if entry["file"] == os.path.basename(path):
            return entry
    raise _error(path, f"not listed in {os.path.join(os.path.dirname(path), MANIFEST)}")


def _flat(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(params)).items()}


def save_params(path: str, params: Mapping[str, Any]) -> None:
    """Writes a parameter tree as safetensors (tensors named by '/'-joined paths), atomically."""
    from safetensors.numpy import save

    artifacts.write_bytes(path, save(_flat(params)))


def load_params(
    path: str, target: Mapping[str, Any], model_config: Mapping[str, Any] | None = None, dataset: str | None = None,
) -> tuple[dict, dict]:
    """The parameters in the shipped file `path`, checked; returns (params, manifest entry).

    target: a tree of arrays or ShapeDtypeStructs (jax.eval_shape of the model's
    init) giving every tensor's name and shape. model_config: the run's
    architecture config, which must equal the one the manifest records;
    dataset: the run's config.data.name, which must be the one it was trained on.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    path = resolve(path)
    if not os.path.isfile(path):
        raise _error(path, "no such file")
    entry = manifest_entry(path)
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise _error(path, f"sha256 {digest[:12]}... differs from the manifest's {entry['sha256'][:12]}... (corrupt or replaced)")
    if dataset is not None and entry.get("data", {}).get("name") != dataset:
        raise _error(path, f"trained on {entry.get('data', {}).get('name')!r}, the run's data is {dataset!r}")
    if model_config is not None:
        as_dict = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
        wanted = json.loads(json.dumps(as_dict, default=list))
        if wanted != entry["model_config"]:
            raise _error(path, f"trained with model config {entry['model_config']}, the run asks for {wanted}")
    with open(path, "rb") as f:
        try:
            tensors = load(f.read())
        except SafetensorError as e:
            raise _error(path, f"not a readable safetensors file ({e})") from e
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(target).items()}
    for name, spec in flat.items():
        if name not in tensors:
            raise _error(path, f"tensor {name!r} is missing")
        if tuple(tensors[name].shape) != tuple(spec.shape):
            raise _error(path, f"tensor {name!r} has shape {tuple(tensors[name].shape)}, the model needs {tuple(spec.shape)}")
    extra = sorted(set(tensors) - set(flat))
    if extra:
        raise _error(path, f"unexpected tensor(s) {extra[:3]}")
    params = traverse_util.unflatten_dict({tuple(k.split("/")): tensors[k].astype(getattr(spec, "dtype", np.float32)) for k, spec in flat.items()})
    return params, entry


def write_manifest(folder: str, components: Mapping[str, Mapping[str, Any]]) -> str:
    """Writes folder/manifest.json for the weight files already in `folder`; returns its path.

    components: name -> {'file', 'model_config', 'train_config', 'train_seconds', 'quality', ...};
    the sha256 and size of each file are added here.
    """
    entries = {}
    for name, entry in components.items():
        path = os.path.join(folder, entry["file"])
        entries[name] = {**entry, "sha256": sha256_of(path), "bytes": os.path.getsize(path)}
    manifest = {"retrain_command": RETRAIN_COMMAND, "components": entries}
    path = os.path.join(folder, MANIFEST)
    artifacts.write_json(path, manifest)
    return path
