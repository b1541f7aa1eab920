"""Training curves: every trainer's scalars as JSON lines and TensorBoard event files.

A trainer named e.g. 'student ddoq IPC 10 seed 0' writes under the run's
workdir, from process 0 only:

    metrics/{slug}.jsonl     one JSON object per logged step:
                             {"step": 100, "loss": 0.52, "learning_rate": 0.0019,
                              "steps_per_second": 12.3, ...}
    metrics/tensorboard/{slug}/events.out.tfevents.*
                             the same scalars (tensorboardX, no TensorFlow needed):
                             tensorboard --logdir runs/default/metrics/tensorboard

A resumed trainer first drops the JSON lines past the step it resumes from,
so the file holds one curve; TensorBoard shows the overlap of the two
writers and keeps the later values.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import jax


def slug(name: str) -> str:
    """'student ddoq IPC 10 seed 0' -> 'student_ddoq_IPC_10_seed_0' (safe as a file name)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "trainer"


class MetricsWriter:
    """Appends a trainer's scalars to its JSON lines file and TensorBoard log (a no-op on processes other than 0)."""

    def __init__(self, folder: str, name: str, first_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(folder, slug(name) + ".jsonl")
        self._tensorboard = None
        if not self.enabled:
            return
        os.makedirs(folder, exist_ok=True)
        self._truncate_after(first_step)
        from tensorboardX import SummaryWriter

        self._tensorboard = SummaryWriter(os.path.join(folder, "tensorboard", slug(name)), flush_secs=30)

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self._tensorboard.add_scalar(key, value, int(step))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()


def read(path: str) -> list[dict]:
    """The records of a metrics/*.jsonl file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
