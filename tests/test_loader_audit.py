"""No loader in pqdjax unpickles a file: weights and artifacts come from npz (without pickle), orbax,
safetensors or msgpack. This scans the source for the calls that would unpickle."""

import ast
import os

import numpy as np
import pytest

from pqdjax import artifacts

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pqdjax")


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    yield os.path.relpath(path, PACKAGE), ast.parse(f.read())


def test_no_call_unpickles():
    forbidden = {"pickle.load", "pickle.loads", "torch.load", "joblib.load", "dill.load", "cloudpickle.load", "np.lib.format.read_array"}
    found = []
    for path, tree in _sources():
        for node, name in _calls(tree):
            keywords = {k.arg: k.value for k in node.keywords}
            if name in forbidden:
                found.append(f"{path}:{node.lineno} {name}")
            if name in ("np.load", "numpy.load"):
                flag = keywords.get("allow_pickle")
                if not (isinstance(flag, ast.Constant) and flag.value is False):
                    found.append(f"{path}:{node.lineno} np.load without allow_pickle=False")
            if isinstance(keywords.get("allow_pickle"), ast.Constant) and keywords["allow_pickle"].value is True:
                found.append(f"{path}:{node.lineno} allow_pickle=True")
            if isinstance(keywords.get("from_pt"), ast.Constant) and keywords["from_pt"].value is True:
                found.append(f"{path}:{node.lineno} from_pt=True (diffusers/transformers unpickle PyTorch .bin files)")
    assert found == []


def test_a_pickled_npz_is_refused(tmp_path):
    """An artifact replaced by an npz holding a pickled object is an error, not code execution."""
    store = artifacts.ArtifactStore(str(tmp_path))
    store.save_arrays("a.npz", {"x": np.arange(3)}, "fp")
    with open(store.path("a.npz"), "wb") as f:
        np.savez(f, x=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(artifacts.ArtifactError, match="corrupt.*rerun"):
        store.load_arrays("a.npz")
