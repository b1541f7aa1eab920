"""No loader in pqdjax unpickles a file: weights and artifacts come from npz (without pickle), orbax,
safetensors or msgpack. This scans the source for the calls that would unpickle."""

import ast
import os

import numpy as np
import pytest

from pqdjax import artifacts

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pqdjax")


def _imported_names(tree) -> dict[str, str]:
    """{name as used in the module: the dotted name it stands for} of its imports ("pk" -> "pickle" for
    `import pickle as pk`, "loads" -> "pickle.loads" for `from pickle import loads`)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _calls(tree):
    """(call node, the called name with the module's import aliases resolved: np.load -> numpy.load)."""
    names = _imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            head, _, rest = ast.unparse(node.func).partition(".")
            resolved = names.get(head, head)
            yield node, f"{resolved}.{rest}" if rest else resolved


# Modules that may import an unpickling library: convert_torchvision reads torch's data.pkl with an unpickler
# that refuses every global beyond a state dict's (tests/test_resnet_torch.py).
UNPICKLING_MODULES = {"pickle", "dill", "joblib", "cloudpickle", "torch"}
ALLOWED_TO_IMPORT_PICKLE = {os.path.join("models", "convert_torchvision.py")}


def test_only_the_restricted_reader_imports_an_unpickling_library():
    importing = sorted(path for path, tree in _sources()
                       if any(name.split(".")[0] in UNPICKLING_MODULES for name in _imported_names(tree).values()))
    assert set(importing) <= ALLOWED_TO_IMPORT_PICKLE, importing


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    yield os.path.relpath(path, PACKAGE), ast.parse(f.read())


def test_no_call_unpickles():
    forbidden = {"pickle.load", "pickle.loads", "torch.load", "joblib.load", "dill.load", "dill.loads", "cloudpickle.load",
                 "cloudpickle.loads", "numpy.lib.format.read_array"}
    found = []
    for path, tree in _sources():
        for node, name in _calls(tree):
            keywords = {k.arg: k.value for k in node.keywords}
            if name in forbidden:
                found.append(f"{path}:{node.lineno} {name}")
            if name == "numpy.load":
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
