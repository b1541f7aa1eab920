"""Stage encode: every training image to its (scaled) latent, flattened to a vector.

In a run of several processes, each encodes its contiguous part of the
training images (pqdjax.batching.process_rows: whole batches, the ones a
single process encodes) and every process gets all the latents; process 0
writes latents.npz, its marker with the encoding's wall time and FLOPs
(encode_flops), which results.json reports under timing.encode.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.batching import map_batches, process_rows
from pqdjax.cost import compiled_flops
from pqdjax.data.preprocess import to_model_range
from pqdjax.models import vae as vae_lib
from pqdjax.errors import NonFiniteError

ARTIFACT = "latents.npz"


@dataclasses.dataclass(frozen=True)
class Latents:
    """latents: float32 [N, d] (d = h*w*c, row-major over [h, w, c]); labels: int32 [N] in [0, num_classes); shape: (h, w, c)."""

    latents: np.ndarray
    labels: np.ndarray
    num_classes: int
    shape: tuple[int, int, int]
    fingerprint: str

    def counts_per_class(self) -> np.ndarray:
        """int [C]: the latents of each class."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def load(self, c: int) -> np.ndarray:
        """Class c's latents [n_c, d], in dataset order (as pqdjax.data.grouping.class_indices)."""
        return self.latents[self.labels == c]

    def example_indices(self, c: int) -> np.ndarray:
        """int64 [n_c]: the index in the training set of each of class c's latents (the order of load)."""
        return np.flatnonzero(self.labels == c)


def _encoder(prior):
    """The jitted encoder: (params, uint8 [B, H, W, C]) -> float32 [B, h, w, c] scaled posterior means."""
    return jax.jit(lambda p, x: vae_lib.encode(prior.vae, p, to_model_range(x), prior.latent_scale))


def encode_images(prior, images: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 [N, H, W, C] -> float32 [N, h, w, c] scaled posterior means, in fixed-size jitted batches."""
    encode = _encoder(prior)
    latents = map_batches(lambda batch: encode(prior.params, batch), images, batch_size, progress="encode", across_processes=True)
    finite = np.isfinite(latents.reshape(len(latents), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteError(
            f"encode: the VAE produced NaN or inf latents for {len(bad)} of {len(latents)} images "
            f"(first: image {bad[0]}, in batch {bad[0] // batch_size}); retrain the prior (delete prior/ in the workdir)."
        )
    return latents


def encode_flops(prior, images: np.ndarray, batch_size: int) -> float | None:
    """Floating-point operations of encode_images(prior, images, batch_size) as XLA counts them (pqdjax.cost): one
    batch's program (loop-free) times the batches, the last one padded. None where the backend counts none."""
    batch_size = min(batch_size, len(images))
    flops = compiled_flops(_encoder(prior), prior.params, jnp.zeros((batch_size,) + images.shape[1:], jnp.uint8))
    return None if flops is None else flops * -(-len(images) // batch_size)


def run(run, prior) -> Latents:
    config = run.config.encode
    fp = artifacts.fingerprint("encode", prior.fingerprint, config)
    if parallel.complete_everywhere(run.store, ARTIFACT, fp):
        stored = run.store.load_arrays(ARTIFACT)
        logging.info("encode: reusing %s", run.store.path(ARTIFACT))
        return Latents(stored["latents"], stored["labels"], int(stored["num_classes"]), tuple(int(s) for s in stored["shape"]), fp)
    dataset = run.dataset
    if jax.process_count() > 1:
        start, stop = process_rows(len(dataset.train_images), config.batch_size)
        logging.info("encode: process %d of %d encodes training images [%d, %d) of %d", jax.process_index(), jax.process_count(),
                     start, stop, len(dataset.train_images))
    start = time.perf_counter()
    latents = encode_images(prior, dataset.train_images, config.batch_size)
    cost = {"seconds": round(time.perf_counter() - start, 2), "flops": encode_flops(prior, dataset.train_images, config.batch_size)}
    shape = latents.shape[1:]
    flat = latents.reshape(len(latents), -1)
    logging.info("encode: %d latents of shape %s (d = %d)", len(flat), shape, flat.shape[1])
    arrays = {"latents": flat, "labels": dataset.train_labels, "num_classes": dataset.num_classes, "shape": np.asarray(shape)}
    parallel.write_once(run.store, ARTIFACT, fp, lambda: run.store.save_arrays(ARTIFACT, arrays, fp, cost))
    return Latents(flat, dataset.train_labels, dataset.num_classes, tuple(shape), fp)
