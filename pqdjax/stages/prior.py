"""Stage prior: the VAE whose latent space is quantized.

Loaded from shipped weights when config.prior.weights names a file
(pqdjax.pretrained: checked against its manifest, which also gives the
latent scale), else trained here and saved in the workdir.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel, pretrained
from pqdjax.batching import map_batches
from pqdjax.data.preprocess import to_model_range
from pqdjax.models import vae as vae_lib
from pqdjax.stages.encode import encode_images
from pqdjax.train.autoencoder import train_vae
from pqdjax.errors import InputError

ARTIFACT = "prior/vae"


@dataclasses.dataclass(frozen=True)
class Prior:
    """vae: the module; params: its weights; latent_scale: latents are encoder means times this."""

    vae: vae_lib.VAE
    params: dict
    latent_scale: float
    fingerprint: str

    def reencode(self, images: np.ndarray, config) -> np.ndarray:
        """uint8 images [N, H, W, C] -> their scaled latents [N, d], as the encode stage makes them (config: the run's)."""
        return encode_images(self, images, config.encode.batch_size).reshape(len(images), -1)


def latent_scale_of(vae, params, images: np.ndarray, batch_size: int = 500) -> float:
    """1 / std of the encoder means of `images` (uint8), so that scaled latents have unit variance."""
    encode = jax.jit(lambda p, x: vae_lib.encode(vae, p, to_model_range(x)))
    means = map_batches(lambda batch: encode(params, batch), images, batch_size)
    return float(1.0 / means.std())


def run(run) -> Prior:
    config = run.config.prior
    dataset = run.dataset
    height, width, channels = dataset.image_shape
    if height != width:
        raise InputError(f"the VAE needs square images, got {height}x{width}; crop or resize the images to a square.")
    vae = vae_lib.make_vae(config.vae, height, channels)
    if config.get("weights"):
        target = jax.eval_shape(lambda: vae_lib.init_params(vae, jax.random.key(0), height))
        params, entry = pretrained.load_params(config.weights, target, config.vae, run.config.data.name)
        logging.info("prior: shipped VAE %s (test PSNR %.2f dB)", config.weights, entry["quality"]["test_psnr_db"])
        # the data stays in the fingerprint: the latents and everything after them depend on it
        return Prior(vae, params, entry["latent_scale"], artifacts.fingerprint("prior", run.data_fingerprint, entry["sha256"]))
    fp = artifacts.fingerprint("prior", run.data_fingerprint, config, run.config.seed)
    if parallel.complete_everywhere(run.store, ARTIFACT, fp):
        target = jax.eval_shape(lambda: vae_lib.init_params(vae, jax.random.key(0), height))
        params = run.store.load_params(ARTIFACT, target)
        scale = run.store.info(ARTIFACT)["latent_scale"]
        logging.info("prior: reusing %s (latent scale %.4f)", run.store.path(ARTIFACT), scale)
        return Prior(vae, params, scale, fp)
    start = time.perf_counter()
    checkpoints = run.checkpoints("prior", fp, config.train)
    params = train_vae(vae, dataset.train_images, config.train, run.rng("prior"), run.fast_conv, checkpoints, run.metrics_dir)
    seconds = round(time.perf_counter() - start, 2)
    sample = dataset.train_images[np.asarray(jax.random.permutation(run.rng("prior", "scale"), len(dataset.train_images)))[:5000]]
    scale = latent_scale_of(vae, params, sample)
    reconstruction_mse = _reconstruction_mse(vae, params, dataset.test_images)
    psnr = _psnr_db(reconstruction_mse)
    logging.info("prior: test reconstruction MSE %.4f (PSNR %.2f dB), latent scale %.4f", reconstruction_mse, psnr, scale)
    info = {"latent_scale": scale, "test_reconstruction_mse": reconstruction_mse, "test_psnr_db": psnr, "seconds": seconds}
    parallel.write_once(run.store, ARTIFACT, fp, lambda: run.store.save_params(ARTIFACT, params, fp, info))
    checkpoints.discard()
    return Prior(vae, params, scale, fp)


def _reconstruction_mse(vae, params, images: np.ndarray, batch_size: int = 500) -> float:
    """Mean squared error in [-1, 1] of the reconstructions (through the posterior mean, clipped) of uint8 images."""

    @jax.jit
    def squared_errors(params, batch):  # per image [B]
        x = to_model_range(batch)
        reconstruction = jnp.clip(vae_lib.decode(vae, params, vae_lib.encode(vae, params, x)), -1, 1)
        return jnp.sum(jnp.square(reconstruction - x), axis=(1, 2, 3))

    errors = map_batches(lambda batch: squared_errors(params, batch), images, batch_size)
    return float(np.sum(errors) / images.size)


def _psnr_db(mse: float) -> float:
    """PSNR in dB of a mean squared error in [-1, 1] (peak-to-peak 2)."""
    return float(10.0 * np.log10(4.0 / mse))


def test_psnr_db(prior: Prior, images: np.ndarray) -> float:
    """PSNR (dB, peak-to-peak 2 in [-1, 1]) of the VAE's reconstructions of uint8 images [N, H, W, C]."""
    return _psnr_db(_reconstruction_mse(prior.vae, prior.params, images))
