"""Test setup: 8 fake CPU devices (before jax is imported) and shared fixtures."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# 8 device threads on 2 busy cores can wait long at a collective: XLA's CPU runtime would abort the
# process after its stuck-collective timeout, failing whichever test runs. Load must not fail a test.
os.environ["XLA_FLAGS"] += " --xla_cpu_collective_call_terminate_timeout_seconds=3600 --xla_cpu_collective_timeout_seconds=3600"
# The tests compile hundreds of small programs, and at their sizes LLVM's optimisation of the code
# XLA:CPU emits costs more time than it saves: at -O0 (XLA's HLO passes, hence the programs, unchanged)
# the fast suite took 10 min 20 s against 15 min 22 s on 2 cores, the same 396 tests passing (2026-12-04).
# pqdjax's own runs keep XLA's default level. Set the flag in XLA_FLAGS to test at another level.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the session, inherited by the pytest-xdist workers
# and by the pipeline runs and notebook kernels the tests start as subprocesses: most of a
# tiny run's time is compiling, and the same programs recur (a killed run and its rerun, the
# shared runlocal runs). The process that made it removes it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="pqdjax-test-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Cache every program (a time threshold would make what is cached depend on the machine's load).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pqdjax.data import idx  # noqa: E402
from pqdjax.models import silence_diffusers_deprecation  # noqa: E402

silence_diffusers_deprecation()


def write_idx_dataset(folder, num_classes=10, train_per_class=30, test_per_class=10, size=28, seed=0):
    """Writes a small Fashion-MNIST-like IDX dataset: class c is a bright bar at angle c plus noise.

    Returns (train_images, train_labels, test_images, test_labels) as written.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2

    def images_of(labels):
        angle = labels[:, None, None] * np.pi / num_classes
        distance = np.abs(np.cos(angle) * yy - np.sin(angle) * xx)
        clean = 220 * np.exp(-distance**2 / 6.0)
        return np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)

    arrays = {}
    for split, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.uint8)
        images = images_of(labels)
        idx.write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images)
        idx.write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels)
        arrays[split] = (images, labels)
    return arrays["train"] + arrays["t10k"]


@pytest.fixture(scope="session")
def runlocal_run(tmp_path_factory):
    """One finished pipeline run of configs/default.py:runlocal on a small IDX dataset, shared by test modules.

    Returns dict(data_dir, workdir, results: what pipeline.run returned,
    results_json: results.json as this run wrote it; later tests may rerun in workdir).
    """
    import json

    from configs import default
    from pqdjax import pipeline

    root = tmp_path_factory.mktemp("runlocal")
    data_dir = str(root / "data")
    os.makedirs(data_dir)
    write_idx_dataset(data_dir)
    workdir = str(root / "run")
    config = default.get_config("runlocal")
    config.data.data_dir = data_dir
    results = pipeline.run(config, workdir)
    with open(os.path.join(workdir, "results.json")) as f:
        results_json = json.load(f)
    return dict(data_dir=data_dir, workdir=workdir, results=results, results_json=results_json)


@pytest.fixture
def idx_dataset_dir(tmp_path):
    folder = tmp_path / "fmnist"
    folder.mkdir()
    write_idx_dataset(str(folder))
    return str(folder)
