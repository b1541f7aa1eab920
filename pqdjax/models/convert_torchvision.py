"""torchvision ResNet state dicts -> flax variables of pqdjax.models.resnet.ResNet.

A state dict is read from a `.safetensors` file (safetensors.numpy) or from a
`.pth`/`.pt` file in torch's zip format (torch >= 1.6) WITHOUT torch and
without executing pickled code: the zip's `data.pkl` is read by an unpickler
that knows only the handful of globals a state dict needs (OrderedDict and
torch's tensor-rebuild functions, replaced here by numpy equivalents) and
refuses every other global.

Layout changes: conv kernels OIHW -> HWIO, linear weights [out, in] -> [in, out],
BatchNorm weight/bias -> scale/bias in 'params' and running_mean/var -> mean/var
in 'batch_stats'; `layer2.0.downsample.0` -> `layer2_0/downsample_conv`,
`.1` -> `downsample_bn`; `num_batches_tracked` is dropped.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util
from pqdjax.errors import InputError

CONVERSION_HINT = (
    "convert it with torch installed: `python -c \"import torch; from safetensors.torch import save_file; "
    "save_file(torch.load('IN.pth', weights_only=True), 'OUT.safetensors')\"` and pass the .safetensors file"
)

# torch storage class -> numpy dtype of its elements.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class CheckpointFormatError(InputError):
    """A checkpoint file cannot be read, or does not fit the model."""


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size, stride, *unused) -> np.ndarray:
    """numpy stand-in for torch._utils._rebuild_tensor_v2: a strided view of a storage, copied."""
    if not size:
        return np.array(storage[offset])
    itemsize = storage.dtype.itemsize
    needed = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if needed > storage.size:
        raise CheckpointFormatError("a tensor reaches past the end of its storage; the .pth file is corrupt.")
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles torch's data.pkl, building numpy arrays; any global beyond a state dict's is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(file)
        self._archive, self._prefix, self._byteorder = archive, prefix, byteorder

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise pickle.UnpicklingError(
            f"the checkpoint refers to {module}.{name}, which a plain state dict does not need; "
            f"it is not executed. If this is a state dict saved in an unusual way, {CONVERSION_HINT}."
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r} in the checkpoint.")
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        if len(raw) != numel * dtype.itemsize:
            raise CheckpointFormatError(f"storage {key} has {len(raw)} bytes, expected {numel * dtype.itemsize}; the file is corrupt.")
        return np.frombuffer(raw, dtype).astype(storage_type.dtype)


def _read_torch_zip(path: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise CheckpointFormatError(
            f"{path} is not a torch zip checkpoint (a legacy pre-1.6 .pth or another format); {CONVERSION_HINT}."
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise CheckpointFormatError(f"{path} has {len(pickles)} data.pkl entries, expected 1; {CONVERSION_HINT}.")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        with archive.open(pickles[0]) as f:
            state = _StateDictUnpickler(f, archive, prefix, byteorder).load()
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise CheckpointFormatError(f"{path} does not hold a state dict of tensors.")
    return dict(state)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A torch state dict as numpy arrays, from `.safetensors` or a zip `.pth`/`.pt` (no code executed)."""
    if not os.path.isfile(path):
        raise CheckpointFormatError(f"checkpoint {path} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
            raise CheckpointFormatError(f"{path} is not a readable safetensors file ({e}).") from e
    return _read_torch_zip(path)


def _flax_path(torch_key: str) -> tuple[str, ...] | None:
    """'layer1.0.downsample.1.running_var' -> ('batch_stats', 'layer1_0', 'downsample_bn', 'var'); None to drop."""
    *modules, leaf = torch_key.split(".")
    if leaf == "num_batches_tracked":
        return None
    names: list[str] = []
    i = 0
    while i < len(modules):
        part = modules[i]
        if re.fullmatch(r"layer\d+", part) and i + 1 < len(modules):
            names.append(f"{part}_{modules[i + 1]}")
            i += 2
        elif part == "downsample" and i + 1 < len(modules):
            names.append({"0": "downsample_conv", "1": "downsample_bn"}.get(modules[i + 1], f"downsample_{modules[i + 1]}"))
            i += 2
        else:
            names.append(part)
            i += 1
    is_norm = names[-1].startswith("bn") or names[-1] == "downsample_bn"
    if is_norm:
        collection, leaf = {
            "weight": ("params", "scale"), "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
        }.get(leaf, ("params", leaf))
    else:
        collection, leaf = "params", {"weight": "kernel"}.get(leaf, leaf)
    return (collection, *names, leaf)


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
    if value.ndim == 4:  # conv [O, I, kh, kw] -> [kh, kw, I, O]
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:  # linear [out, in] -> [in, out]
        return value.T
    return value


def torchvision_to_flax(state_dict: dict[str, np.ndarray], model: nn.Module, image_size: int = 224) -> dict[str, Any]:
    """Flax variables {'params', 'batch_stats'} for `model` from a torchvision ResNet state dict.

    Every variable of `model` must be in the state dict with the right shape,
    and nothing else may be (besides num_batches_tracked); a mismatch raises
    CheckpointFormatError naming the keys (e.g. a ResNet-50 checkpoint for a
    ResNet-18, or a different number of classes).
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    expected = {path: leaf.shape for path, leaf in traverse_util.flatten_dict(jax.tree.map(lambda x: x, dict(shapes))).items()}
    converted: dict[tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for key, value in state_dict.items():
        path = _flax_path(key)
        if path is None:
            continue
        if path not in expected:
            unexpected.append(key)
            continue
        value = _to_flax_layout(np.asarray(value))
        if value.shape != tuple(expected[path]):
            raise CheckpointFormatError(
                f"{key} has shape {value.shape} after conversion, the model wants {tuple(expected[path])}; "
                "is it the same architecture and number of classes?"
            )
        converted[path] = value.astype(np.float32)
    missing = ["/".join(p) for p in expected if p not in converted]
    if missing or unexpected:
        raise CheckpointFormatError(
            f"the state dict does not fit {type(model).__name__} ({getattr(model, 'depth_name', '')}): "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(converted))


def load_torchvision_resnet(path: str, model: nn.Module) -> dict[str, Any]:
    """load_state_dict + torchvision_to_flax: the flax variables of a torchvision ResNet checkpoint file."""
    return torchvision_to_flax(load_state_dict(path), model)
