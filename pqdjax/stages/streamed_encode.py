"""Streamed stage encode: every training image to its latent by the prior's VAE, streamed to disk per class.

1.28M images x 16,384 floats (512 px) do not fit in host memory, so latents
are appended to one raw float32 file per class as they are produced:

    encode/latents/process{p}/class{c:04d}.f32   rows [n_c, d] (d = h*w*4, row-major over [h, w, 4])
    encode/latents/process{p}.done               marker: fingerprint, shape, rows per class

Each process encodes its own part of the training split (process_shard) in
batches of data.batch_size_per_device x its local devices; the global batch
is sharded over the Mesh's 'data' axis and the VAE runs under jit on all
devices. Latents are the posterior mean, or a sample (config.prior.latent_sample)
whose noise key is folded from the image's index, so a latent does not
depend on batching or sharding; then times the VAE's scaling factor.

Resuming: while a process encodes, its files live in process{p}.partial/
with progress.json (batches done, rows per class), rewritten atomically every
config.encode.flush_every batches after the rows are written. A
rerun truncates the class files to the recorded rows and continues with the
next batch; at the end the folder is renamed to process{p} and marked.
Rows whose label is not below config.data.num_classes are dropped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.data import streamed
from pqdjax.models import vae as vae_lib
from pqdjax.progress import Progress
from pqdjax.errors import NonFiniteError

FOLDER = "encode/latents"


@dataclasses.dataclass(frozen=True)
class ClassLatents:
    """The per-class latent files of every process.

    folders: one per process, each holding class{c:04d}.f32 (the latents) and
    class{c:04d}.idx (int64: the index in the training split of each latent's image);
    counts: int [P, C] rows per process and class; shape: a latent's (h, w, c); d = h * w * c.
    """

    folders: tuple[str, ...]
    counts: np.ndarray
    shape: tuple[int, int, int]
    num_classes: int
    fingerprint: str

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def counts_per_class(self) -> np.ndarray:
        """int [C]: the latents of each class, over every process's files."""
        return self.counts.sum(0)

    def class_size(self, c: int) -> int:
        return int(self.counts[:, c].sum())

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


def class_file(c: int) -> str:
    return f"class{c:04d}.f32"


def index_file(c: int) -> str:
    return f"class{c:04d}.idx"


class _ClassFiles:
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


def encode_fn(prior, mesh, sample: bool, rng: jax.Array):
    """jit of (vae_params, images uint8 [B, H, W, 3], index int [B]) -> scaled latents [B, h, w, 4], B sharded on 'data'."""
    model = prior.model
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)

    def encode(params, images, index):
        x = images.astype(jnp.float32) / 127.5 - 1.0
        if not sample:
            return vae_lib.encode(model.vae, params, x, model.latent_scale)
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)
        return jax.vmap(lambda k, xi: vae_lib.encode(model.vae, params, xi[None], model.latent_scale, rng=k)[0])(keys, x)

    return jax.jit(encode, in_shardings=(rep, data, data), out_shardings=data)


def _num_train_examples(config, source) -> int:
    limit = config.data.get("train_limit") or 0
    return min(len(source), limit) if limit else len(source)


def encode_process_part(run, prior, name: str, fp: str) -> None:
    """Encodes this process's part of the training split into the artifact `name` (resuming a partial one)."""
    config = run.config
    data = config.data
    source = streamed.open_configured_split(data, data.train_split)
    num_examples = _num_train_examples(config, source)
    spec = streamed.BatchSpec(data.batch_size_per_device * jax.local_device_count(), data.encode_resize, data.encode_crop)
    total = streamed.steps_per_process(num_examples, spec.batch_size)
    mesh = run.mesh
    shape = jax.eval_shape(lambda p, x: vae_lib.encode(prior.model.vae, p, x), prior.model.vae_params,
                           jax.ShapeDtypeStruct((1, spec.crop, spec.crop, 3), jnp.float32)).shape[1:]
    dim = int(np.prod(shape))

    partial = name + ".partial"
    progress_path = os.path.join(run.store.path(partial), "progress.json")
    state = _read_progress(progress_path, fp, data.num_classes)
    if state["batches"] == 0:
        shutil.rmtree(run.store.path(partial), ignore_errors=True)  # another config's leftovers
    else:
        logging.info("encode: resuming after batch %d of %d", state["batches"], total)
    files = _ClassFiles(run.store.path(partial), dim, np.asarray(state["counts"], np.int64))
    encode = encode_fn(prior, mesh, bool(config.prior.latent_sample), run.rng("encode", "sample"))
    params = parallel.replicate(mesh, prior.model.vae_params)
    flush_every = config.encode.get("flush_every", 50)
    bar = Progress("encode", total, unit="batches", log_every=max(1, total // 10), first=state["batches"])
    batches = streamed.equal_host_batches(source, num_examples, spec, first_batch=state["batches"])
    for b, batch in enumerate(batches, state["batches"]):
        arrays = parallel.shard_host_batch(mesh, {"images": batch["images"], "index": batch["index"]})
        latents = parallel.process_local_rows(encode(params, arrays["images"], arrays["index"])).reshape(len(batch["index"]), dim)
        keep = batch["mask"] & (batch["labels"] < data.num_classes)
        if not np.isfinite(latents[keep]).all():
            raise NonFiniteError(
                f"encode: the VAE produced NaN or inf latents in batch {b}; check config.prior.pretrained_dir's VAE weights."
            )
        files.append(latents[keep], batch["labels"][keep], batch["index"][keep])
        done = b + 1
        if done % flush_every == 0 or done == total:
            artifacts.write_json(progress_path, {"fingerprint": fp, "batches": done, "counts": files.counts.tolist()})
        bar.update(done)
    os.remove(progress_path)
    counts = files.counts.tolist()
    run.store.finish_folder(partial, name, fp, {"counts": counts, "shape": list(shape), "examples": num_examples})


def _read_progress(path: str, fp: str, num_classes: int) -> dict:
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError):
        state = {}
    if state.get("fingerprint") != fp or len(state.get("counts", [])) != num_classes:
        return {"batches": 0, "counts": [0] * num_classes}
    return state


def run(run, prior) -> ClassLatents:
    config = run.config
    inputs = streamed.data_fields(config.data, streamed.TRAIN_DATA_FIELDS)
    fp = artifacts.fingerprint("imagenet_encode", prior.fingerprint, inputs, config.prior.latent_sample, config.seed, "with_indices")
    name = f"{FOLDER}/process{jax.process_index()}"
    if run.store.is_complete(name, fp):
        logging.info("encode: reusing %s", run.store.path(name))
    else:
        encode_process_part(run, prior, name, fp)
    parallel.sync_processes("encode")
    names = [f"{FOLDER}/process{p}" for p in range(jax.process_count())]
    infos = [run.store.info(n) for n in names]
    if any(info is None or info.get("fingerprint") != fp for info in infos):
        raise artifacts.ArtifactError(f"encode: not every process's latents are in {run.store.path(FOLDER)}; is the workdir on a filesystem all hosts share?")
    counts = np.asarray([info["counts"] for info in infos], np.int64)
    shape = tuple(infos[0]["shape"])
    logging.info("encode: %d latents of shape %s in %d classes (%d to %d per class)",
                 counts.sum(), shape, counts.shape[1], counts.sum(0).min(), counts.sum(0).max())
    return ClassLatents(tuple(run.store.path(n) for n in names), counts, shape, config.data.num_classes, fp)
