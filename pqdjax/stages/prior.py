"""Stage prior: the generative model whose VAE encodes the training images and whose denoiser pushes the points
forward.

One stage for every kind of run; where the prior comes from (`source`):

    'trained'           the VAE (pqdjax.models.vae, config.prior.vae) trained here on the training images
                        (config.prior.train), saved in prior/vae with its latent scale and test PSNR; a killed
                        run resumes from checkpoints/prior. In-memory runs; their class-conditioned latent
                        denoiser is trained after encoding (stages.denoiser).
    'shipped'           the VAE shipped with pqdjax (config.prior.weights, pqdjax.pretrained: checked against
                        its manifest, which also gives the latent scale). In-memory runs (configs/default.py).
    'stable_diffusion'  streamed runs (config.prior.kind): a v1.x checkpoint in diffusers' layout
                        (pqdjax.models.stable_diffusion), conditioned on the class name as text prompt (D4M, DDOQ)
    'dit'               streamed runs: a DiT checkpoint in diffusers' layout, e.g. facebook/DiT-XL-2-256
                        (pqdjax.models.dit_diffusion), conditioned on the class label (DDOQ-DiT)

For the pretrained ones, config.prior.pretrained_dir is a local folder or a Hugging Face hub repo id;
config.prior.tiny_random writes a tiny random checkpoint of that kind into the workdir (prior/tiny_{kind},
pqdjax.models.tiny_checkpoints) and loads it by the same code as a real one, for smoke runs; and
config.prior.latent_scale (if set) replaces the scaling factor of the VAE's config.json (0.18215 for both).

The two kinds of prior object, Prior (a VAE) and DiffusionPrior (a latent diffusion model), are read by the
decode stage of their kind of run; both give the encode stage what it needs (`batch_encoder(run, batch_shape)`, a
BatchEncoder, and `nonfinite_advice`) and the fidelity stage (`fingerprint`, `reencode(images, config)`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel, pretrained
from pqdjax.batching import map_batches
from pqdjax.cost import compiled_flops
from pqdjax.data import imagenet
from pqdjax.data.preprocess import to_model_range
from pqdjax.errors import ConfigError, InputError, NonFiniteError
from pqdjax.models import vae as vae_lib
from pqdjax.train.autoencoder import train_vae

ARTIFACT = "prior/vae"
KINDS = ("stable_diffusion", "dit")  # config.prior.kind of streamed runs: the pretrained sources
REENCODE_BATCH = 32  # images per call of DiffusionPrior.reencode


def source(run) -> str:
    """Where the run's prior comes from (module docstring): config.prior.kind in streamed runs, else 'shipped' where
    config.prior.weights names a file, else 'trained'."""
    if run.kind == "streamed":
        return run.config.prior.kind
    return "shipped" if run.config.prior.get("weights") else "trained"


def run(run) -> Prior | DiffusionPrior:
    return diffusion_prior(run) if source(run) in KINDS else vae_prior(run)


@dataclasses.dataclass(frozen=True)
class BatchEncoder:
    """What the encode stage runs on each batch: encode(images uint8 [B, H, W, C], index int [B]) -> this process's
    scaled latents [B, h, w, c] (numpy float32); latent_shape (h, w, c); flops_per_batch: XLA's count of one call
    (pqdjax.cost; None where not counted)."""

    encode: object
    latent_shape: tuple[int, int, int]
    flops_per_batch: float | None


@dataclasses.dataclass(frozen=True)
class Prior:
    """A VAE prior (sources 'trained', 'shipped'): vae, the module; params, its weights; latent_scale: latents are
    encoder means times this. Its class-conditioned denoiser is the denoiser stage's (stages.denoiser)."""

    vae: vae_lib.VAE
    params: dict
    latent_scale: float
    fingerprint: str

    nonfinite_advice = "retrain the prior (delete prior/ in the workdir)."

    def _encoder(self):
        """The jitted encoder: (params, uint8 [B, H, W, C]) -> float32 [B, h, w, c] scaled posterior means."""
        return jax.jit(lambda p, x: vae_lib.encode(self.vae, p, to_model_range(x), self.latent_scale))

    def batch_encoder(self, run, batch_shape: tuple[int, ...]) -> BatchEncoder:
        """The encode stage's encoder of batches of batch_shape (B, H, W, C), on this process's default device."""
        encode = self._encoder()
        example = jax.ShapeDtypeStruct(batch_shape, jnp.uint8)
        shape = tuple(jax.eval_shape(encode, self.params, example).shape[1:])
        flops = compiled_flops(encode, self.params, jnp.zeros(batch_shape, jnp.uint8))
        return BatchEncoder(lambda images, index: np.asarray(encode(self.params, images)), shape, flops)

    def reencode(self, images: np.ndarray, config) -> np.ndarray:
        """uint8 images [N, H, W, C] -> their scaled latents [N, d], as the encode stage makes them (config: the run's),
        in jitted batches of config.encode.batch_size (the last one padded); NonFiniteError on NaN or inf."""
        encode, batch_size = self._encoder(), config.encode.batch_size
        latents = map_batches(lambda batch: encode(self.params, batch), images, batch_size).reshape(len(images), -1)
        finite = np.isfinite(latents).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise NonFiniteError(f"encode: the VAE produced NaN or inf latents for {len(bad)} of {len(latents)} images "
                                 f"(first: image {bad[0]}, in batch {bad[0] // batch_size}); {self.nonfinite_advice}")
        return latents


def latent_scale_of(vae, params, images: np.ndarray, batch_size: int = 500) -> float:
    """1 / std of the encoder means of `images` (uint8), so that scaled latents have unit variance."""
    encode = jax.jit(lambda p, x: vae_lib.encode(vae, p, to_model_range(x)))
    means = map_batches(lambda batch: encode(params, batch), images, batch_size)
    return float(1.0 / means.std())


def vae_prior(run) -> Prior:
    """The VAE of source 'shipped' (config.prior.weights) or 'trained' (trained here, or reused from prior/vae)."""
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


def tiny_artifact(kind: str) -> str:
    """The workdir artifact holding the tiny random checkpoint of `kind`."""
    return f"prior/tiny_{kind}"


@dataclasses.dataclass(frozen=True)
class DiffusionPrior:
    """A pretrained latent diffusion prior (sources 'stable_diffusion', 'dit'): the loaded model (its VAE, denoiser
    and schedule; pqdjax.models.stable_diffusion.StableDiffusion or dit_diffusion.DiTDiffusion) and the fingerprint
    of what was loaded."""

    model: object
    fingerprint: str

    nonfinite_advice = "check config.prior.pretrained_dir's VAE weights."

    def batch_encoder(self, run, batch_shape: tuple[int, ...]) -> BatchEncoder:
        """The encode stage's encoder: this process's batches of batch_shape (B, H, W, 3) form one global batch sharded
        over the run's Mesh; the posterior mean, or with config.prior.latent_sample a sample keyed by each image's
        index (pqdjax.stages.encode). FLOPs are not counted."""
        mesh, model = run.mesh, self.model
        sample, rng = bool(run.config.prior.latent_sample), run.rng("encode", "sample")

        def latents(params, images, index):  # [B, H, W, 3] uint8 -> [B, h, w, c], B sharded on 'data'
            x = images.astype(jnp.float32) / 127.5 - 1.0
            if not sample:
                return vae_lib.encode(model.vae, params, x, model.latent_scale)
            keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)
            return jax.vmap(lambda k, xi: vae_lib.encode(model.vae, params, xi[None], model.latent_scale, rng=k)[0])(keys, x)

        data = parallel.batch_sharding(mesh)
        encode = jax.jit(latents, in_shardings=(parallel.replicated(mesh), data, data), out_shardings=data)
        params = parallel.replicate(mesh, model.vae_params)
        example = jax.ShapeDtypeStruct((1,) + tuple(batch_shape[1:]), jnp.float32)
        shape = tuple(jax.eval_shape(lambda p, x: vae_lib.encode(model.vae, p, x), model.vae_params, example).shape[1:])

        def encode_batch(images, index):
            arrays = parallel.shard_host_batch(mesh, {"images": images, "index": index})
            return parallel.process_local_rows(encode(params, arrays["images"], arrays["index"]))

        return BatchEncoder(encode_batch, shape, None)

    def reencode(self, images: np.ndarray, config) -> np.ndarray:
        """uint8 images [N, H, W, 3] -> scaled latents [N, d] of the VAE (posterior means), each image resized
        (shorter side to config.data.encode_resize) and center-cropped to config.data.encode_crop first, as the
        encode stage reads the training images."""
        data = config.data
        resized = np.stack([imagenet.resize_and_center_crop(image, data.encode_resize, data.encode_crop) for image in images])
        encode = lambda batch: self.model.encode_images(jnp.asarray(batch, jnp.float32) / 127.5 - 1.0)
        return map_batches(encode, resized, REENCODE_BATCH).reshape(len(images), -1)


def diffusion_prior(run) -> DiffusionPrior:
    """The checkpoint of config.prior.kind from config.prior.pretrained_dir, or a tiny random one written into the
    workdir (config.prior.tiny_random)."""
    # imported here: transformers (CLIP), which runs that train their prior never need
    from pqdjax.models.dit_diffusion import load_dit
    from pqdjax.models.stable_diffusion import load_stable_diffusion
    from pqdjax.models.tiny_checkpoints import write_tiny_dit, write_tiny_stable_diffusion

    loaders = {"stable_diffusion": load_stable_diffusion, "dit": load_dit}
    tiny_writers = {"stable_diffusion": write_tiny_stable_diffusion, "dit": write_tiny_dit}
    config = run.config.prior
    # Checked here, the first stage, rather than at decode: the data's classes decide it.
    if config.kind == "dit" and run.classes.imagenet_indices is None:
        raise ConfigError(f"config.prior.kind 'dit' is conditioned on ImageNet-1K classes, but the classes of {run.config.data.name} "
                          f"({', '.join(run.classes.names[:3])}, ...) are not ImageNet synsets; use prior 'stable_diffusion' "
                          "(prompted by the class names).")
    fp = artifacts.fingerprint("imagenet_prior", config, run.config.seed)
    if config.get("tiny_random", False):
        name = tiny_artifact(config.kind)
        write = lambda folder: tiny_writers[config.kind](folder, seed=run.config.seed)
        parallel.write_once(run.store, name, fp, lambda: run.store.write_artifact(name, write, fp))
        folder = run.store.path(name)
    else:
        folder = config.pretrained_dir
    # what was loaded, not only its name: another checkpoint in the same folder redoes what depends on it
    # (a hub id names one repo; its files are identified by the hub's own revision)
    if os.path.isdir(folder):
        fp = artifacts.fingerprint(fp, artifacts.folder_digest(folder))
    model = loaders[config.kind](folder)
    if config.get("latent_scale"):
        model = dataclasses.replace(model, latent_scale=float(config.latent_scale))
    logging.info("prior: %s from %s (latent scale %.5f)", config.kind, folder, model.latent_scale)
    return DiffusionPrior(model, fp)
