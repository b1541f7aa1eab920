"""kill -9 at any point of a run, rerun the same command: the results equal an uninterrupted run's.

Each run is `python -m pqdjax.main` on the runlocal config in a subprocess.
A small driver wraps pqdjax.artifacts so that the process SIGKILLs itself at
a chosen point: right after a given artifact or checkpoint is marked
complete, right before its marker is written (the artifact in place but not
marked), or in the middle of writing it (before the rename). Killing at a
named point instead of after a delay makes the test exact and repeatable.
"""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs pqdjax.main, SIGKILLing itself at $KILL_AT = '<when>:<artifact name>', when is
# 'written' (inside the atomic write, before the rename), 'unmarked' (after the rename,
# before the marker) or 'marked' (after the marker).
_DRIVER = r"""
import os, signal, sys
from absl import app
from pqdjax import artifacts, main

when, target = os.environ["KILL_AT"].split(":", 1)
store_cls = artifacts.ArtifactStore

def kill():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

real_mark = store_cls._mark
def mark(self, name, fp, info):
    if name == target and when == "unmarked":
        kill()
    real_mark(self, name, fp, info)
    if name == target and when == "marked":
        kill()
store_cls._mark = mark

real_atomic = artifacts._atomic_path
class atomic:
    def __init__(self, path):
        self.path, self.inner = path, real_atomic(path)
    def __enter__(self):
        return self.inner.__enter__()
    def __exit__(self, *exc):
        if when == "written" and self.path.endswith(os.sep + target.replace("/", os.sep)) and exc[0] is None:
            kill()
        return self.inner.__exit__(*exc)
artifacts._atomic_path = atomic

sys.argv[0] = "pqdjax.main"
app.run(main.main, flags_parser=main.parse_flags)
"""

# Kill points through every stage, in the order a run reaches them.
KILL_POINTS = [
    "marked:checkpoints/prior/step_00000002",  # prior training, after its first checkpoint
    "written:prior/vae",  # the trained prior being written
    "marked:checkpoints/teacher/step_00000002",  # teacher training
    "unmarked:teacher/params",  # the teacher saved, its marker not yet
    "unmarked:encode/latents/process0",  # the latents encoded, their marker not yet written
    "marked:checkpoints/denoiser/step_00000002",  # denoiser training
    "unmarked:prior/denoiser",  # the denoiser saved, its marker not yet
    "unmarked:quantize/ipc2/class0004.npz",  # quantizing: classes 0-3 done, the others in a smaller group
    "unmarked:synthetic/ipc2/groups/kmeans_diffusion/0004.json",  # decoding: a group's PNGs written, its record not yet
    "written:synthetic/ipc2/manifest_d4m.csv",  # a manifest being written
    "marked:checkpoints/evaluate/d4m_ipc2_seed0/step_00000002",  # a student's training
    "unmarked:evaluate/ddoq_ipc2_seed0.json",  # a student's result
]
# Fields of results.json that hold wall times (see README.md, "Determinism").
TIMING_FIELDS = ("timing",)


def _run(data_dir, workdir, kill_at=None):
    command = [
        sys.executable, "-c", _DRIVER if kill_at else "from absl import app; from pqdjax import main; app.run(main.main, flags_parser=main.parse_flags)",
        "--config=configs/default.py:runlocal", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
    ]
    env = dict(os.environ, KILL_AT=kill_at or "")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)


def _results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    for field in TIMING_FIELDS:
        results.pop(field)
    return results


@pytest.fixture(scope="module")
def data_and_baseline(runlocal_run, tmp_path_factory):
    """The uninterrupted run (in-process, see conftest) is the baseline."""
    baseline = {k: v for k, v in runlocal_run["results_json"].items() if k not in TIMING_FIELDS}
    return runlocal_run["data_dir"], baseline, tmp_path_factory.mktemp("kill")


def _kill_then_finish(data_dir, workdir, kill_points):
    for kill_at in kill_points:
        killed = _run(data_dir, workdir, kill_at)
        assert killed.returncode == -9, f"{kill_at} was never reached:\n{killed.stderr[-3000:]}"
        assert not os.path.exists(os.path.join(workdir, "results.json"))
    finished = _run(data_dir, workdir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    return finished


def test_killed_during_teacher_training_resumes_to_the_same_results(data_and_baseline):
    data_dir, baseline, root = data_and_baseline
    workdir = str(root / "teacher")
    finished = _kill_then_finish(data_dir, workdir, ["marked:checkpoints/teacher/step_00000002"])
    assert "resuming from" in finished.stderr and "step 2" in finished.stderr
    assert _results(workdir) == baseline
    assert not os.path.exists(os.path.join(workdir, "checkpoints", "teacher"))  # removed once the teacher is saved


@pytest.mark.slow
def test_killed_at_every_stage_resumes_to_the_same_results(data_and_baseline):
    data_dir, baseline, root = data_and_baseline
    workdir = str(root / "every")
    _kill_then_finish(data_dir, workdir, KILL_POINTS)
    assert _results(workdir) == baseline
    leftovers = [os.path.join(d, n) for d, dirs, files in os.walk(workdir) for n in dirs + files if ".tmp-" in n]
    assert leftovers == []
