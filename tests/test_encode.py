"""The encode stage on in-memory images: a killed encode resumes to the same files, parts of other process counts."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from configs import default
from pqdjax import artifacts, pipeline
from pqdjax.stages import encode, prior as prior_stage


def _run(runlocal_run, **encode_settings):
    config = default.get_config("runlocal")
    config.data.data_dir = runlocal_run["data_dir"]
    config.encode.update(encode_settings)
    return pipeline.Run(config=config, store=artifacts.ArtifactStore(runlocal_run["workdir"]))


def test_a_killed_in_memory_encode_resumes_to_the_same_files(runlocal_run, monkeypatch):
    """Killed after two batches (progress recorded every batch), a rerun truncates, continues with batch 2 and
    writes the files of an uninterrupted encode byte for byte; so does a rerun killed after the rename."""
    run = _run(runlocal_run, batch_size=64, flush_every=1)  # 300 images: 5 batches, the last one padded
    the_prior = prior_stage.run(run)
    encode.encode_process_part(run, the_prior, "encode/whole", "fp")
    calls = {"n": 0}
    original = encode.ClassFiles.append

    def append_then_die(self, latents, labels, indices):
        calls["n"] += 1
        original(self, latents, labels, indices)
        if calls["n"] == 3:
            raise KeyboardInterrupt  # batch 2 written, its progress not: the rerun truncates it away

    monkeypatch.setattr(encode.ClassFiles, "append", append_then_die)
    with pytest.raises(KeyboardInterrupt):
        encode.encode_process_part(run, the_prior, "encode/resumed", "fp")
    assert run.store.info("encode/resumed") is None
    with open(run.store.path("encode/resumed.partial/progress.json")) as f:
        assert json.load(f)["batches"] == 2
    monkeypatch.setattr(encode.ClassFiles, "append", original)
    firsts = []
    real = encode.training_batches

    def recording(run_):
        batches = real(run_)
        return dataclasses.replace(batches, batches=lambda first: firsts.append(first) or batches.batches(first))

    monkeypatch.setattr(encode, "training_batches", recording)
    encode.encode_process_part(run, the_prior, "encode/resumed", "fp")
    assert firsts == [2]
    for c in range(10):
        for file in (encode.class_file(c), encode.index_file(c)):
            with open(run.store.path(f"encode/whole/{file}"), "rb") as a, open(run.store.path(f"encode/resumed/{file}"), "rb") as b:
                assert a.read() == b.read(), file
    # renamed into place, then killed before the marker: the rerun marks it without encoding a batch
    os.remove(run.store.path("encode/resumed.done"))
    with open(run.store.path("encode/resumed/progress.json"), "w") as f:  # as the last progress record left it
        json.dump({"fingerprint": "fp", "batches": 5, "counts": run.store.info("encode/whole")["counts"],
                   "batch_shape": list(real(run).batch_shape), "seconds": 1.0}, f)
    firsts.clear()
    encode.encode_process_part(run, the_prior, "encode/resumed", "fp")
    assert firsts == [5] and run.store.info("encode/resumed")["counts"] == run.store.info("encode/whole")["counts"]
    for name in ("encode/whole", "encode/resumed"):
        run.store.remove(name)


def test_parts_of_a_run_with_more_processes_are_dropped(runlocal_run):
    """A part left by a run with more processes (process1 here) is removed by the next run's encode, and the
    notebooks' reader reads as many parts as the run that wrote them had processes."""
    run = _run(runlocal_run)
    store = run.store
    whole = encode.stored_latents(store)
    shutil.copytree(store.path("encode/latents/process0"), store.path("encode/latents/process1"))
    shutil.copy(store.path("encode/latents/process0.done"), store.path("encode/latents/process1.done"))
    assert encode.stored_latents(store).counts.shape == whole.counts.shape == (1, 10)
    latents = encode.run(run, prior_stage.run(run))  # reuses process0, the part of this one-process run
    assert not os.path.exists(store.path("encode/latents/process1")) and store.info("encode/latents/process1") is None
    np.testing.assert_array_equal(latents.counts, whole.counts)
    flat, labels = latents.all()
    assert len(flat) == len(labels) == whole.counts.sum()
