"""Stage encode: every training image to its latent by the prior's VAE, written to disk per class.

One implementation for every kind of run. What differs is where the training
images come from (training_batches) and the prior's encoder
(stages.prior: Prior.batch_encoder, DiffusionPrior.batch_encoder):

    in_memory  the dataset's training images in host memory (pqdjax.data.sources), in
               batches of config.encode.batch_size; in a run of several processes each
               takes its contiguous part of the batches (pqdjax.batching.process_rows),
               so every batch is the one a single process makes
    streamed   config.data.train_split read record by record (pqdjax.data.streamed), each
               process its shard, in batches of data.batch_size_per_device x its local
               devices, resized and center-cropped (data.encode_resize, data.encode_crop);
               the global batch is sharded over the Mesh's 'data' axis. Latents are the
               posterior mean, or a sample (config.prior.latent_sample) whose noise key is
               folded from the image's index, so a latent depends on neither batching nor
               sharding. Rows whose label is not below config.data.num_classes are dropped.

The latents (times the prior's latent scale) are appended to raw files per
class as they are produced, since 1.28M ImageNet latents (16,384 floats each
at 512 px) do not fit in host memory:

    encode/latents/process{p}/class{c:04d}.f32   rows [n_c, d] (d = h*w*c, row-major over [h, w, c])
    encode/latents/process{p}/class{c:04d}.idx   int64: each row's image's index in the training split
    encode/latents/process{p}.done               marker: rows per class, shape, seconds, FLOPs (encode_cost)

Resuming: while a process encodes, its files live in process{p}.partial/ with
progress.json (batches done, their shape, rows per class, seconds so far),
rewritten atomically every config.encode.flush_every batches after the rows
are written. A rerun truncates the class files to the recorded rows and
continues with the next batch (from the start where the batch shape changed);
at the end the folder is renamed to process{p} and marked, and a run killed
between the two marks the renamed folder without encoding again. A process's
part is fingerprinted with the number of processes, so a rerun with another
count encodes anew rather than mixing the parts (process 0 removes the parts
of processes that no longer exist).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterator

import jax
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.batching import process_rows
from pqdjax.data import streamed
from pqdjax.errors import NonFiniteError
from pqdjax.progress import Progress

FOLDER = "encode/latents"
PROGRESS = "progress.json"  # in a part's folder while it is encoded


@dataclasses.dataclass(frozen=True)
class Latents:
    """The per-class latent files of every process.

    folders: one per process, each holding class{c:04d}.f32 (the latents) and
    class{c:04d}.idx (int64: the index in the training split of each latent's image);
    counts: int [P, C] rows per process and class; shape: a latent's (h, w, c); d = h * w * c;
    cost: {'seconds', 'flops'} of encoding them (encode_cost).
    """

    folders: tuple[str, ...]
    counts: np.ndarray
    shape: tuple[int, int, int]
    num_classes: int
    fingerprint: str
    cost: dict = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def counts_per_class(self) -> np.ndarray:
        """int [C]: the latents of each class, over every process's files."""
        return self.counts.sum(0)

    def _memmaps(self, c: int, index: bool = False) -> list[np.ndarray]:
        name, dtype, dim = (index_file(c), np.int64, 1) if index else (class_file(c), np.float32, self.dim)
        return [
            np.memmap(os.path.join(folder, name), dtype, "r", shape=(int(n), dim))
            for folder, n in zip(self.folders, self.counts[:, c]) if n
        ]

    def load(self, c: int) -> np.ndarray:
        """All of class c's latents [n_c, d] in memory, in the order of the training split: every process's rows in
        process order, so they do not depend on how many processes encoded."""
        return np.concatenate([np.asarray(m) for m in self._memmaps(c)])

    def example_indices(self, c: int) -> np.ndarray:
        """int64 [n_c]: the index in the training split of each of class c's latents (the order of load)."""
        return np.concatenate([np.asarray(m)[:, 0] for m in self._memmaps(c, index=True)])

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        """(latents [N, d], labels int32 [N]) of every class, in the order of the training split (every row in host
        memory: for runs whose latents fit, e.g. to train a denoiser on them)."""
        indices = np.concatenate([self.example_indices(c) for c in range(self.num_classes)])
        order = np.argsort(indices, kind="stable")
        rows = np.concatenate([self.load(c) for c in range(self.num_classes)])
        labels = np.repeat(np.arange(self.num_classes, dtype=np.int32), self.counts_per_class())
        return rows[order], labels[order]


def class_file(c: int) -> str:
    return f"class{c:04d}.f32"


def index_file(c: int) -> str:
    return f"class{c:04d}.idx"


class ClassFiles:
    """Append-only raw files, two per class in `folder` (float32 latents, int64 example indices); `counts` rows each so far.

    A file is opened for each append (1,000 classes would exceed common open-file limits).
    """

    def __init__(self, folder: str, dim: int, counts: np.ndarray):
        os.makedirs(folder, exist_ok=True)
        self.folder, self.dim, self.counts = folder, dim, counts.copy()
        for c, n in enumerate(self.counts):
            for name, row_bytes in ((class_file(c), dim * 4), (index_file(c), 8)):
                path = os.path.join(folder, name)
                if os.path.exists(path):
                    os.truncate(path, int(n) * row_bytes)  # drop rows written after the last recorded progress

    def append(self, latents: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        for c in np.unique(labels):
            rows = np.ascontiguousarray(latents[labels == c], np.float32)
            with open(os.path.join(self.folder, class_file(int(c))), "ab") as f:
                f.write(rows.tobytes())
            with open(os.path.join(self.folder, index_file(int(c))), "ab") as f:
                f.write(np.ascontiguousarray(indices[labels == c], np.int64).tobytes())
            self.counts[c] += len(rows)


@dataclasses.dataclass(frozen=True)
class TrainingBatches:
    """This process's batches of the training split: `batches(first)` yields, from batch `first` on, dicts of
    images uint8 [B, H, W, C], labels [B], index int [B] (in the training split) and mask bool [B] (False: padding);
    total: batches per process; batch_shape: (B, H, W, C); examples: images in the split; num_classes: labels kept."""

    batches: object
    total: int
    batch_shape: tuple[int, ...]
    examples: int
    num_classes: int


def training_batches(run) -> TrainingBatches:
    """The training images of the run's kind (module docstring)."""
    if run.kind == "streamed":
        data = run.config.data
        source = streamed.open_configured_split(data, data.train_split)
        limit = data.get("train_limit") or 0
        examples = min(len(source), limit) if limit else len(source)
        spec = streamed.BatchSpec(data.batch_size_per_device * jax.local_device_count(), data.encode_resize, data.encode_crop)
        return TrainingBatches(lambda first: streamed.equal_host_batches(source, examples, spec, first_batch=first),
                               streamed.steps_per_process(examples, spec.batch_size), (spec.batch_size, spec.crop, spec.crop, 3),
                               examples, data.num_classes)
    dataset = run.dataset
    images, labels = dataset.train_images, dataset.train_labels
    batch_size = min(run.config.encode.batch_size, len(images))
    start, stop = process_rows(len(images), batch_size)
    if jax.process_count() > 1:
        logging.info("encode: process %d of %d encodes training images [%d, %d) of %d", jax.process_index(),
                     jax.process_count(), start, stop, len(images))

    def batches(first: int) -> Iterator[dict[str, np.ndarray]]:
        for begin in range(start + first * batch_size, stop, batch_size):
            index = np.arange(begin, min(begin + batch_size, stop))
            mask = np.arange(batch_size) < len(index)
            index = np.concatenate([index, np.repeat(index[-1:], batch_size - len(index))])  # the last row again
            yield {"images": images[index], "labels": labels[index], "index": index, "mask": mask}

    return TrainingBatches(batches, -(-(stop - start) // batch_size), (batch_size,) + images.shape[1:], len(images),
                           dataset.num_classes)


def encode_process_part(run, prior, name: str, fp: str) -> None:
    """Encodes this process's part of the training split into the artifact `name` (resuming a partial one)."""
    source = training_batches(run)
    encoder = prior.batch_encoder(run, source.batch_shape)
    dim = int(np.prod(encoder.latent_shape))
    partial = name + ".partial"
    progress_path = os.path.join(run.store.path(partial), PROGRESS)
    if not os.path.isdir(run.store.path(partial)) and os.path.isdir(run.store.path(name)):
        os.replace(run.store.path(name), run.store.path(partial))  # renamed, then killed before its marker
    state = _read_progress(progress_path, fp, source.num_classes, source.batch_shape)
    if state["batches"] == 0:
        shutil.rmtree(run.store.path(partial), ignore_errors=True)  # another config's leftovers
    else:
        logging.info("encode: resuming after batch %d of %d", state["batches"], source.total)
    files = ClassFiles(run.store.path(partial), dim, np.asarray(state["counts"], np.int64))
    flush_every = run.config.encode.get("flush_every", 50)
    bar = Progress("encode", source.total, unit="batches", log_every=max(1, source.total // 10), first=state["batches"])
    start = time.perf_counter() - state.get("seconds", 0.0)
    for b, batch in enumerate(source.batches(state["batches"]), state["batches"]):
        latents = encoder.encode(batch["images"], batch["index"]).reshape(len(batch["index"]), dim)
        keep = batch["mask"] & (batch["labels"] < source.num_classes)
        finite = np.isfinite(latents).all(axis=1) | ~keep
        if not finite.all():
            raise NonFiniteError(f"encode: the VAE produced NaN or inf latents for {int((~finite).sum())} images of batch {b} "
                                 f"(first: training image {int(batch['index'][np.argmin(finite)])}); {prior.nonfinite_advice}")
        files.append(latents[keep], batch["labels"][keep], batch["index"][keep])
        done = b + 1
        if done % flush_every == 0 or done == source.total:
            artifacts.write_json(progress_path, {"fingerprint": fp, "batches": done, "counts": files.counts.tolist(),
                                                 "batch_shape": list(source.batch_shape), "seconds": time.perf_counter() - start})
        bar.update(done)
    seconds = round(time.perf_counter() - start, 2)
    flops = None if encoder.flops_per_batch is None else encoder.flops_per_batch * source.total
    run.store.finish_folder(partial, name, fp, {"counts": files.counts.tolist(), "shape": list(encoder.latent_shape),
                                                "examples": source.examples, "seconds": seconds, "flops": flops,
                                                "processes": jax.process_count()})
    leftover = os.path.join(run.store.path(name), PROGRESS)
    if os.path.exists(leftover):
        os.remove(leftover)



def _read_progress(path: str, fp: str, num_classes: int, batch_shape: tuple[int, ...]) -> dict:
    """The recorded progress of a partial part, or none (0 batches) where it was made for another fingerprint,
    class count or batch shape (a resumed batch must be the batch that was cut off)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError):
        state = {}
    if (state.get("fingerprint") != fp or len(state.get("counts", [])) != num_classes
            or state.get("batch_shape") != list(batch_shape)):
        return {"batches": 0, "counts": [0] * num_classes}
    return state


def fingerprint(run, prior) -> str:
    """The latents' fingerprint: the prior's, the encode settings and (streamed) the data fields that choose the
    images, made as each kind's encode stage made it before they were one stage, so that what a finished workdir
    made from its latents (the denoiser, decoded sets, students) stays valid once they are encoded anew."""
    config = run.config
    if run.kind == "streamed":
        inputs = streamed.data_fields(config.data, streamed.TRAIN_DATA_FIELDS)
        return artifacts.fingerprint("imagenet_encode", prior.fingerprint, inputs, config.prior.latent_sample, config.seed,
                                     "with_indices")
    return artifacts.fingerprint("encode", prior.fingerprint, config.encode)


def encode_cost(infos: list[dict]) -> dict:
    """{'seconds': the slowest process's wall time, 'flops': XLA's count summed over the processes (None where
    not counted)} of encoding, from the processes' markers."""
    flops = [info.get("flops") for info in infos]
    return {"seconds": max((info.get("seconds") or 0.0) for info in infos),
            "flops": None if any(f is None for f in flops) else float(sum(flops))}


def _from_markers(store, count: int, fp: str) -> Latents:
    """The Latents of the parts process0..process{count-1}, as their markers record them."""
    names = [f"{FOLDER}/process{p}" for p in range(count)]
    infos = [store.info(n) for n in names]
    counts = np.asarray([info["counts"] for info in infos], np.int64)
    return Latents(tuple(store.path(n) for n in names), counts, tuple(infos[0]["shape"]), counts.shape[1], fp,
                   encode_cost(infos))


def stored_latents(store) -> Latents:
    """The latents a finished run wrote (the parts of as many processes as process 0's marker records), e.g. for
    notebooks; their fingerprint is not known here ('')."""
    first = store.info(f"{FOLDER}/process0")
    if first is None:
        raise artifacts.ArtifactError(f"{store.path(FOLDER)} holds no finished latents; run pqdjax.main first.")
    return _from_markers(store, first.get("processes", 1), "")


def run(run, prior) -> Latents:
    fp = fingerprint(run, prior)
    count = jax.process_count()
    part_fp = artifacts.fingerprint(fp, "processes", count)
    name = f"{FOLDER}/process{jax.process_index()}"
    if run.store.is_complete(name, part_fp):
        logging.info("encode: reusing %s", run.store.path(name))
    else:
        encode_process_part(run, prior, name, part_fp)
    parallel.sync_processes("encode")
    if not all(parallel.visible(run.store, f"{FOLDER}/process{p}", part_fp) for p in range(count)):
        raise artifacts.ArtifactError(f"encode: not every process's latents are in {run.store.path(FOLDER)}; is the workdir "
                                      "on a filesystem all hosts share?")
    if jax.process_index() == 0:  # the parts of a run with more processes, which these parts replace
        p = count
        while os.path.exists(run.store.path(f"{FOLDER}/process{p}")):
            run.store.remove(f"{FOLDER}/process{p}")
            p += 1
    latents = _from_markers(run.store, count, fp)
    counts = latents.counts_per_class()
    logging.info("encode: %d latents of shape %s (d = %d) in %d classes (%d to %d per class)", counts.sum(), latents.shape,
                 latents.dim, latents.num_classes, counts.min(), counts.max())
    return latents
