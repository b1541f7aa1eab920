"""ImageNet stage prior: the Stable Diffusion checkpoint whose VAE encodes and whose UNet denoises.

config.prior.kind:
    stable_diffusion   a v1.x checkpoint in diffusers' layout: config.prior.pretrained_dir,
                       a local folder or a Hugging Face hub repo id
    tiny_random        a tiny random checkpoint written into the workdir
                       (prior/tiny_stable_diffusion, pqdjax.models.tiny_checkpoints), for
                       smoke runs; it is loaded by the same code as a real one

config.prior.latent_scale (if set) replaces the scaling factor of the VAE's
config.json (0.18215 for v1.x).
"""

from __future__ import annotations

import dataclasses

from absl import logging

from pqdjax import artifacts
from pqdjax.models.stable_diffusion import StableDiffusion, load_stable_diffusion
from pqdjax.models.tiny_checkpoints import write_tiny_stable_diffusion

TINY_ARTIFACT = "prior/tiny_stable_diffusion"


@dataclasses.dataclass(frozen=True)
class Prior:
    """The loaded Stable Diffusion models and the fingerprint of what was loaded."""

    sd: StableDiffusion
    fingerprint: str


def run(run) -> Prior:
    config = run.config.prior
    fp = artifacts.fingerprint("imagenet_prior", config, run.config.seed)
    if config.kind == "tiny_random":
        if not run.store.is_complete(TINY_ARTIFACT, fp):
            run.store.write_artifact(TINY_ARTIFACT, lambda folder: write_tiny_stable_diffusion(folder, seed=run.config.seed), fp)
        folder = run.store.path(TINY_ARTIFACT)
    else:
        folder = config.pretrained_dir
    sd = load_stable_diffusion(folder)
    if config.get("latent_scale"):
        sd = dataclasses.replace(sd, latent_scale=float(config.latent_scale))
    logging.info("prior: Stable Diffusion from %s (latent scale %.5f)", folder, sd.latent_scale)
    return Prior(sd, fp)
