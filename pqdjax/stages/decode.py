"""Stage decode: each method's synthetic set (uint8 images with per-class weights) for every IPC.

    random  IPC real training images per class, uniform weights
    d4m     the quantization points decoded to images, uniform weights
    ddoq    the same images, weighted by the Voronoi cell masses

Decoders map latent points to images; config.decode.method picks one. 'vae'
decodes the points directly with the VAE decoder.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from absl import logging

from pqdjax import artifacts
from pqdjax.batching import map_batches
from pqdjax.data.preprocess import to_uint8
from pqdjax.models import vae as vae_lib


@dataclasses.dataclass(frozen=True)
class SyntheticSet:
    """images: uint8 [C, K, H, W, ch]; weights: float32 [C, K], each row summing to 1."""

    method: str
    ipc: int
    images: np.ndarray
    weights: np.ndarray
    fingerprint: str


def decode_with_vae(run, prior, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Latent points [n, h, w, c] -> float images [n, H, W, C] by the VAE decoder (labels unused)."""
    del run, labels
    decode = jax.jit(lambda p, z: vae_lib.decode(prior.vae, p, z, prior.latent_scale))
    return map_batches(lambda z: decode(prior.params, z), points, 256)


DECODERS = {"vae": decode_with_vae}


def _decode_points(run, prior, latent_shape, quantized) -> np.ndarray:
    config = run.config.decode
    if config.method not in DECODERS:
        raise ValueError(f"unknown config.decode.method {config.method!r}; known: {sorted(DECODERS)}.")
    points = quantized.arrays["points"]  # [C, K, d]
    num_classes, ipc, _ = points.shape
    labels = np.repeat(np.arange(num_classes), ipc)
    images = DECODERS[config.method](run, prior, points.reshape((-1,) + tuple(latent_shape)), labels)
    if not np.all(np.isfinite(images)):
        raise FloatingPointError(f"decode: the {config.method} decoder produced NaN or inf images at IPC {ipc}.")
    return to_uint8(images).reshape((num_classes, ipc) + images.shape[1:])


def _synthetic_set(run, method: str, quantized, decoded_fp: str, make) -> SyntheticSet:
    name = f"synthetic/{method}_ipc{quantized.ipc}.npz"
    fp = artifacts.fingerprint("synthetic", method, decoded_fp)
    if run.store.is_complete(name, fp):
        stored = run.store.load_arrays(name)
    else:
        images, weights = make()
        stored = {"images": images, "weights": weights}
        run.store.save_arrays(name, stored, fp)
    return SyntheticSet(method, quantized.ipc, stored["images"], stored["weights"], fp)


def run(run, prior, latents, quantized: dict) -> dict[tuple[str, int], SyntheticSet]:
    methods = tuple(run.config.methods)
    out = {}
    for ipc, q in quantized.items():
        num_classes = q.arrays["points"].shape[0]
        uniform = np.full((num_classes, ipc), 1.0 / ipc, np.float32)
        decoded_fp = artifacts.fingerprint("decode", q.fingerprint, prior.fingerprint, run.config.decode)
        decoded: list[np.ndarray] = []  # decoded once, shared by d4m and ddoq

        def decoded_images():
            if not decoded:
                decoded.append(_decode_points(run, prior, latents.shape, q))
            return decoded[0]

        makers = {
            "random": lambda: (run.dataset.train_images[q.arrays["random_indices"]], uniform),
            "d4m": lambda: (decoded_images(), uniform),
            "ddoq": lambda: (decoded_images(), q.arrays["weights"].astype(np.float32)),
        }
        # The random images depend on the data, the seed and the IPC only.
        random_fp = artifacts.fingerprint("random", run.data_fingerprint, ipc, run.config.seed)
        for method in methods:
            source_fp = random_fp if method == "random" else decoded_fp
            out[method, ipc] = _synthetic_set(run, method, q, source_fp, makers[method])
        logging.info("decode IPC %d: %s", ipc, ", ".join(f"{m} {out[m, ipc].images.shape}" for m in methods))
    return out
