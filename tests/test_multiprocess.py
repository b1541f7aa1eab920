"""configs/in1k.py:runlocal and configs/default.py:runlocal as 2 JAX processes x 2 CPU devices (jax.distributed on 127.0.0.1, gloo collectives) against
1 process x 4 devices: the same latents, points, images and accuracies; a killed process stops the other with a one-line
error, and a rerun resumes to the uninterrupted result. Slow (about 8 minutes on 2 cores): `pytest -m slow`, run by .ci/run."""

import glob
import io
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from pqdjax import launch_local

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore")]
pytest.importorskip("tensorflow_datasets")

CONFIG = "--config=configs/in1k.py:runlocal"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(args: list[str], devices_per_process: int, **kwargs) -> tuple[int, list[str]]:
    """launch_local.launch of `python -m pqdjax.main *args` as 2 processes, from the repository root."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return launch_local.launch(args, 2, devices_per_process=devices_per_process, **kwargs)
    finally:
        os.chdir(cwd)


def _one_and_two_processes(root, args: list[str]) -> tuple[str, str]:
    """Workdirs of `args` run as 1 process x 4 devices and as 2 processes x 2 devices."""
    one, two = str(root / "one"), str(root / "two")
    subprocess.run([sys.executable, "-m", "pqdjax.main", *args, f"--workdir={one}"], cwd=ROOT, env=launch_local.process_env(4),
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    status, failures = _launch([*args, f"--workdir={two}"], 2, grace_seconds=30)
    assert status == 0, failures
    return one, two


def _results_without_times(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    results.pop("timing")
    results["config"].pop("distributed")  # how the processes were started
    for record in results["evaluations"]:
        record.pop("seconds", None)
    return results


def _files(workdir: str, pattern: str) -> dict[str, bytes]:
    out = {}
    for path in sorted(glob.glob(os.path.join(workdir, pattern), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, workdir)] = f.read()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _one_and_two_processes(tmp_path_factory.mktemp("multiprocess"), [CONFIG])


def _same_class_latents(one: str, two: str, num_classes: int) -> None:
    """Each class's latents and indices, concatenated over the processes' files, are byte-equal in two workdirs."""
    for c in range(num_classes):
        cat = lambda w, ext: b"".join(_files(w, f"encode/latents/process*/class{c:04d}.{ext}").values())
        assert cat(one, "f32") == cat(two, "f32") and len(cat(one, "f32")) > 0, c
        assert cat(one, "idx") == cat(two, "idx"), c


def test_two_processes_give_the_one_process_run(runs):
    one, two = runs
    _same_class_latents(one, two, 4)
    # the quantization outputs and the manifests: byte-equal
    for pattern in ("quantize/**/*.npz", "synthetic/**/*.csv"):
        a, b = _files(one, pattern), _files(two, pattern)
        assert a.keys() == b.keys() and a, pattern
        assert [k for k in a if a[k] != b[k]] == [], pattern
    # the images: within one 8-bit level. One process decodes 4 classes per call over 4 devices, each of two processes
    # 2 classes over 2: other shapes, so XLA's CPU kernels may round in other places, and a float near a rounding
    # boundary lands on the next level (seen: 1 level in under 0.01% of pixels).
    a, b = _files(one, "synthetic/**/*.png"), _files(two, "synthetic/**/*.png")
    assert a.keys() == b.keys() and a
    pixels = lambda data: np.asarray(Image.open(io.BytesIO(data)), np.int16)
    diffs = np.concatenate([np.abs(pixels(a[k]) - pixels(b[k])).ravel() for k in a])
    assert diffs.max() <= 1 and np.mean(diffs > 0) < 1e-3
    # accuracies, fidelity and quantization records equal
    assert _results_without_times(one) == _results_without_times(two)


def test_each_process_encodes_only_its_share_and_process_0_reports(runs):
    _, two = runs
    shares = []
    for p in range(2):
        indices = np.concatenate([np.fromfile(f, np.int64) for f in sorted(glob.glob(f"{two}/encode/latents/process{p}/*.idx"))])
        shares.append(set(indices.tolist()))
    assert shares[0] and shares[1] and not shares[0] & shares[1]
    assert max(shares[0]) < min(shares[1])  # contiguous halves of the split (pqdjax.parallel.process_shard)
    logs = [open(f"{two}/launch/process{p}.log").read() for p in range(2)]
    assert "report: wrote results.json" in logs[0] and "report: wrote results.json" not in logs[1]
    assert "process 0 of 2 joining 127.0.0.1:" in logs[0] and "JAX backend cpu with 4 device(s)" in logs[1]


def _kill_one_then_rerun(args: list[str], workdir: str, uninterrupted: str) -> None:
    """Starts 2 processes, kills process 1 once it starts quantizing (encode done), checks that process 0 stops within
    a bounded time with one line and no results; then reruns both, which reuse the finished stages and give the
    uninterrupted run's results."""
    os.makedirs(workdir)
    port, env = launch_local.free_port(), launch_local.process_env(2)
    logs = [os.path.join(workdir, f"p{i}.log") for i in range(2)]
    procs = []
    for i in range(2):
        with open(logs[i], "w") as log:
            procs.append(subprocess.Popen(launch_local.process_command([*args, f"--workdir={workdir}"], i, 2, port), cwd=ROOT,
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 600
    while "stage quantize" not in open(logs[1]).read():  # encode done: kill process 1 in the middle of the run
        assert time.monotonic() < deadline and procs[1].poll() is None, open(logs[1]).read()[-2000:]
        time.sleep(0.2)
    procs[1].kill()
    killed_at = time.monotonic()
    assert procs[0].wait(timeout=150) == 1
    stopped_after = time.monotonic() - killed_at
    print(f"process 0 stopped {stopped_after:.1f} s after process 1 was killed")
    assert stopped_after < 60  # README: within seconds, not after JAX's 100 s heartbeat and its 300 s shutdown barrier
    last = [line for line in open(logs[0]).read().splitlines() if line.strip()][-1]
    assert re.match(r"pqdjax: error: process 0 of 2 lost contact with another process \(.+\); see the other processes' logs", last), last
    assert not os.path.exists(os.path.join(workdir, "results.json"))

    status, failures = _launch([*args, f"--workdir={workdir}"], 2)
    assert status == 0, failures
    assert "encode: reusing" in open(os.path.join(workdir, "launch", "process0.log")).read()
    assert _results_without_times(workdir) == _results_without_times(uninterrupted)


def test_a_killed_process_stops_the_other_with_one_line_and_a_rerun_resumes(runs, tmp_path):
    _kill_one_then_rerun([CONFIG], str(tmp_path / "killed"), runs[1])


def test_launcher_reports_a_bad_run_in_one_line_per_process(tmp_path):
    status, failures = _launch([CONFIG, f"--workdir={tmp_path}", "--config.quantize.method=kmeans"], 1, grace_seconds=5)
    assert status == 1 and len(failures) == 2
    assert all("pqdjax: error: config.quantize.method must be 'clvq' or 'lloyd'" in line for line in failures), failures


# configs/default.py:runlocal, the in-memory pipeline: every process holds the data; encode splits its batches over the
# processes (64-image encode batches: 5 of them, 3 for process 0 and 2 for process 1), quantize and decode their classes.
DEFAULT = ["--config=configs/default.py:runlocal", "--config.encode.batch_size=64"]


@pytest.fixture(scope="module")
def default_runs(tmp_path_factory):
    return _one_and_two_processes(tmp_path_factory.mktemp("multiprocess_default"), DEFAULT)


def test_the_in_memory_pipeline_as_two_processes_gives_the_one_process_run(default_runs):
    one, two = default_runs
    # latents, quantization outputs, synthetic sets and their exported PNGs and manifests: byte-equal
    _same_class_latents(one, two, 10)
    for pattern in ("quantize/*/*.npz", "synthetic/**/*.csv", "synthetic/**/*.png"):
        a, b = _files(one, pattern), _files(two, pattern)
        assert a.keys() == b.keys() and a, pattern
        assert [k for k in a if a[k] != b[k]] == [], pattern
    assert _results_without_times(one) == _results_without_times(two)  # teacher, students, W2, fidelity


def test_in_memory_processes_encode_their_own_rows_and_process_0_writes(default_runs):
    _, two = default_runs
    logs = [open(f"{two}/launch/process{p}.log").read() for p in range(2)]
    assert "encode: process 0 of 2 encodes training images [0, 192) of 300" in logs[0]
    assert "encode: process 1 of 2 encodes training images [192, 300) of 300" in logs[1]
    assert "report: wrote results.json" in logs[0] and "report: wrote results.json" not in logs[1]


def test_in_memory_run_a_killed_process_stops_the_other_and_a_rerun_resumes(default_runs, tmp_path):
    _kill_one_then_rerun(DEFAULT, str(tmp_path / "killed"), default_runs[1])
