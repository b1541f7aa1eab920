"""Reading a finished run's workdir, for notebooks and analysis.

    workdir = find_or_make_run()         # $PQDJAX_RUN_WORKDIR, else runs/default, else a fresh runlocal run
    finished = load_run(workdir)          # results, latents, quantizations and synthetic sets

A workdir is finished when its results.json exists (the report stage writes it
last). Arrays are read with pqdjax.artifacts (no pickle).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import tempfile

import numpy as np

from pqdjax import artifacts
from pqdjax.data import image_folder
from pqdjax.stages.encode import stored_latents
from pqdjax.stages.quantize import Quantized

WORKDIR_ENV = "PQDJAX_RUN_WORKDIR"
DEFAULT_WORKDIR = "runs/default"


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """The artifacts of a finished run.

    Attributes:
      workdir: its absolute path.
      results: results.json (config, accuracy summary, W2 and distortion per IPC, timings).
      latents: float32 [N, d] training latents; labels: int32 [N]; latent_shape: (h, w, c).
      quantized: {ipc: every class's quantize/ipc{K}/class{c:04d}.npz stacked} (points [C, K, d], weights [C, K],
        w2_* [C], ...; pqdjax.stages.quantize).
      synthetic: {(method, ipc): {"images": uint8 [C, K, H, W, ch], "weights": [C, K]}}, read from the manifests
        (synthetic/ipc{K}/manifest_{method}.csv) and PNGs the decode stage wrote.
    """

    workdir: str
    results: dict
    latents: np.ndarray
    labels: np.ndarray
    latent_shape: tuple[int, ...]
    quantized: dict[int, dict[str, np.ndarray]]
    synthetic: dict[tuple[str, int], dict[str, np.ndarray]]

    @property
    def ipcs(self) -> list[int]:
        return sorted(self.quantized)

    @property
    def methods(self) -> list[str]:
        return list(self.results["config"]["methods"])


def is_finished(workdir: str) -> bool:
    return os.path.isfile(os.path.join(workdir, "results.json"))


def make_runlocal_run(workdir: str | None = None) -> str:
    """Runs `configs/default.py:runlocal` (about a minute on a CPU) into `workdir` (default: a new temporary folder)."""
    from configs import default  # the repository root is on sys.path when run from it
    from pqdjax import pipeline

    workdir = workdir or tempfile.mkdtemp(prefix="pqdjax-runlocal-")
    pipeline.run(default.get_config("runlocal"), workdir)
    return workdir


def find_or_make_run(workdir: str | None = None) -> str:
    """The workdir of a finished run: `workdir`, else $PQDJAX_RUN_WORKDIR, else runs/default.

    When that folder holds no finished run, the runlocal config is run into a
    temporary folder, so that a notebook works on a fresh clone.
    """
    workdir = workdir or os.environ.get(WORKDIR_ENV) or DEFAULT_WORKDIR
    if is_finished(workdir):
        return os.path.abspath(workdir)
    print(f"{workdir} holds no finished run (no results.json); running configs/default.py:runlocal into a temporary folder.")
    return make_runlocal_run()


def load_run(workdir: str) -> FinishedRun:
    """Reads the artifacts of the finished run in `workdir`."""
    if not is_finished(workdir):
        raise FileNotFoundError(f"{workdir} holds no finished run (no results.json); run pqdjax.main with --workdir={workdir} first.")
    store = artifacts.ArtifactStore(workdir)
    with open(store.path("results.json")) as f:
        results = json.load(f)
    latents = stored_latents(store)
    flat, labels = latents.all()
    quantized = {}
    for path in glob.glob(store.path("quantize/ipc*")):
        match = re.fullmatch(r"ipc(\d+)", os.path.basename(path))
        if match:
            quantized[int(match.group(1))] = Quantized(int(match.group(1)), latents.num_classes, store, "").arrays
    synthetic = {}
    for key, manifest in results["synthetic"].items():  # {method}_ipc{K}: its manifest (stages.decode)
        method, ipc = re.fullmatch(r"(\w+?)_ipc(\d+)", key).groups()
        images, weights = image_folder.read_class_major(store.path(manifest), int(ipc))
        synthetic[method, int(ipc)] = {"images": images, "weights": weights}
    return FinishedRun(
        workdir=store.workdir,
        results=results,
        latents=flat,
        labels=labels,
        latent_shape=latents.shape,
        quantized=quantized,
        synthetic=synthetic,
    )
