"""Mid-training checkpoints, so that a killed training run resumes where it stopped.

`train` (pqdjax.train.loop) takes any `CheckpointSaver`; every trainer of
every pipeline uses `Checkpoints`, in the run's artifact store. Its states are
replicated (parameters and optimizer state on every device, the data split),
so in a multi-process run process 0 writes and every process reads.

`Checkpoints`: `train` saves its whole TrainState (params, optimizer
state, step) every `every` steps as an orbax checkpoint

    {folder}/step_{n:08d}        the state after n steps
    {folder}/step_{n:08d}.done   its marker: the training fingerprint and n

through pqdjax.artifacts, so a checkpoint is written under a temporary name,
renamed into place and marked complete last: a kill at any moment leaves
either a complete checkpoint or none. Only the newest is kept. A checkpoint
whose fingerprint differs (another config, other data) is never resumed
from and is deleted. Because the batches and step keys of `train` are pure
functions of (rng, step), resuming from step n gives bit for bit the state
of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from typing import Any, Protocol

import jax
from absl import logging

from pqdjax import parallel
from pqdjax.artifacts import ArtifactStore

_STEP_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointSaver(Protocol):
    """What pqdjax.train.loop.train needs of mid-training checkpoints."""

    every: int  # steps between saves (0: never)

    def latest_step(self) -> int | None:
        """The step of the newest checkpoint a run would resume from, or None."""

    def restore(self, template: Any) -> Any | None:
        """The newest checkpoint restored into `template`'s structure (and shardings), or None."""

    def save(self, state: Any, step: int) -> None:
        """Saves the state after `step` steps."""

    def close(self) -> None:
        """Waits for saves still being written; called once when training ends or fails."""


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often one training run checkpoints.

    store: the run's artifacts; folder: a folder name in the store (e.g.
    'checkpoints/teacher'); fingerprint: of everything that determines the
    training (a checkpoint with another one is stale); every: steps between
    checkpoints (0: never).
    """

    store: ArtifactStore
    folder: str
    fingerprint: str
    every: int

    def _name(self, step: int) -> str:
        return f"{self.folder}/step_{step:08d}"

    def _steps_on_disk(self) -> list[int]:
        path = self.store.path(self.folder)
        if not os.path.isdir(path):
            return []
        return sorted(int(m.group(1)) for m in map(_STEP_NAME.match, os.listdir(path)) if m)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint with this fingerprint; deletes stale ones."""
        latest = None
        for step in self._steps_on_disk():
            if self.store.is_complete(self._name(step), self.fingerprint):
                latest = step
            elif jax.process_index() == 0:  # incomplete (killed mid-write) or from another config
                self.store.remove(self._name(step))
        return latest

    def restore(self, template: Any) -> Any | None:
        """The newest matching checkpoint restored into `template`'s structure, or None.

        Raises ArtifactError (and unmarks the checkpoint) when it is corrupt or
        does not match the template; a rerun then starts from scratch.
        """
        step = self.latest_step()
        state = None if step is None else _placed_like(self.store.load_params(self._name(step), template), template)
        # every process resumes from the same step: none saves a newer one before all have read
        parallel.sync_processes(f"restored {self.folder}")
        if state is not None:
            logging.info("resuming from %s (step %d)", self.store.path(self._name(step)), step)
        return state

    def save(self, state: Any, step: int) -> None:
        """Saves the state after `step` steps, then deletes the older checkpoints (process 0; the others' state is the same)."""
        if jax.process_index() != 0:
            return
        self.store.save_params(self._name(step), state, self.fingerprint, {"step": step})
        for old in self._steps_on_disk():
            if old != step:
                self.store.remove(self._name(old))

    def close(self) -> None:
        """Nothing to wait for: save writes synchronously."""

    def discard(self) -> None:
        """Deletes the folder, and its parents left empty: call once the trained artifact itself is saved (process 0)."""
        if jax.process_index() != 0:
            return
        folder = self.store.path(self.folder)
        shutil.rmtree(folder, ignore_errors=True)
        parent = os.path.dirname(folder)
        while parent.startswith(self.store.workdir + os.sep):
            try:
                os.rmdir(parent)  # only when empty
            except OSError:
                break
            parent = os.path.dirname(parent)


def _placed_like(state: Any, template: Any) -> Any:
    """The restored host arrays placed as the template's arrays are (on the run's Mesh, replicated), leaf by leaf."""
    return jax.tree.map(lambda x, t: jax.device_put(x, t.sharding) if isinstance(t, jax.Array) else x, state, template)
