"""Streamed stage prior: the latent diffusion checkpoint whose VAE encodes and whose denoiser pushes forward.

config.prior.kind:
    stable_diffusion   a v1.x checkpoint in diffusers' layout (pqdjax.models.stable_diffusion),
                       conditioned on the class name as text prompt (D4M, DDOQ)
    dit                a DiT checkpoint in diffusers' layout, e.g. facebook/DiT-XL-2-256
                       (pqdjax.models.dit_diffusion), conditioned on the class label (DDOQ-DiT)
config.prior.pretrained_dir: a local folder or a Hugging Face hub repo id.
config.prior.tiny_random: write a tiny random checkpoint of that kind into the
    workdir (prior/tiny_{kind}, pqdjax.models.tiny_checkpoints) and load it by
    the same code as a real one, for smoke runs.
config.prior.latent_scale (if set) replaces the scaling factor of the VAE's
    config.json (0.18215 for both).
"""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel
from pqdjax.batching import map_batches
from pqdjax.data import imagenet
from pqdjax.errors import ConfigError
from pqdjax.models.dit_diffusion import DiTDiffusion, load_dit
from pqdjax.models.stable_diffusion import StableDiffusion, load_stable_diffusion
from pqdjax.models.tiny_checkpoints import write_tiny_dit, write_tiny_stable_diffusion

KINDS = ("stable_diffusion", "dit")
_LOADERS = {"stable_diffusion": load_stable_diffusion, "dit": load_dit}
_TINY_WRITERS = {"stable_diffusion": write_tiny_stable_diffusion, "dit": write_tiny_dit}


def tiny_artifact(kind: str) -> str:
    """The workdir artifact holding the tiny random checkpoint of `kind`."""
    return f"prior/tiny_{kind}"


@dataclasses.dataclass(frozen=True)
class Prior:
    """The loaded latent diffusion model (its VAE, denoiser and schedule) and the fingerprint of what was loaded."""

    model: StableDiffusion | DiTDiffusion
    fingerprint: str

    def reencode(self, images: np.ndarray, config) -> np.ndarray:
        """uint8 images [N, H, W, 3] -> scaled latents [N, d] of the VAE (posterior means), each image resized
        (shorter side to config.data.encode_resize) and center-cropped to config.data.encode_crop first, as the
        encode stage reads the training images."""
        data = config.data
        resized = np.stack([imagenet.resize_and_center_crop(image, data.encode_resize, data.encode_crop) for image in images])
        encode = lambda batch: self.model.encode_images(jnp.asarray(batch, jnp.float32) / 127.5 - 1.0)
        return map_batches(encode, resized, REENCODE_BATCH).reshape(len(images), -1)


REENCODE_BATCH = 32  # images per call of Prior.reencode


def run(run) -> Prior:
    config = run.config.prior
    # Checked here, the first stage, rather than at decode: the data's classes decide it.
    if config.kind == "dit" and run.classes.imagenet_indices is None:
        raise ConfigError(f"config.prior.kind 'dit' is conditioned on ImageNet-1K classes, but the classes of {run.config.data.name} "
                          f"({', '.join(run.classes.names[:3])}, ...) are not ImageNet synsets; use prior 'stable_diffusion' "
                          "(prompted by the class names).")
    fp = artifacts.fingerprint("imagenet_prior", config, run.config.seed)
    if config.get("tiny_random", False):
        name = tiny_artifact(config.kind)
        write = lambda folder: _TINY_WRITERS[config.kind](folder, seed=run.config.seed)
        parallel.write_once(run.store, name, fp, lambda: run.store.write_artifact(name, write, fp))
        folder = run.store.path(name)
    else:
        folder = config.pretrained_dir
    # what was loaded, not only its name: another checkpoint in the same folder redoes what depends on it
    # (a hub id names one repo; its files are identified by the hub's own revision)
    if os.path.isdir(folder):
        fp = artifacts.fingerprint(fp, artifacts.folder_digest(folder))
    model = _LOADERS[config.kind](folder)
    if config.get("latent_scale"):
        model = dataclasses.replace(model, latent_scale=float(config.latent_scale))
    logging.info("prior: %s from %s (latent scale %.5f)", config.kind, folder, model.latent_scale)
    return Prior(model, fp)
