"""Stage denoiser: the class-conditioned latent diffusion model of the diffusion decoder.

Trained here on the encoded training latents (epsilon prediction on the
denoiser's noise schedule, labels dropped to the null class for
classifier-free guidance, mid-training checkpoints every
config.denoiser.train.checkpoint_every steps) and saved with orbax under
prior/denoiser as the EMA of its weights; reused when its fingerprint matches.
Runs only when some method decodes with 'diffusion'. Loaded from shipped
weights (the EMA) when config.denoiser.weights names a file (pqdjax.pretrained).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from pqdjax import artifacts, parallel, pretrained
from pqdjax.diffusion.train import train_denoiser
from pqdjax.models import silence_diffusers_deprecation
from pqdjax.models.denoiser import LatentDenoiser, make_denoiser

ARTIFACT = "prior/denoiser"


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """model: the UNet with its class embedding and schedule; params: its weights.

    The pushforward's ConditionalDenoiser (pqdjax.diffusion.pushforward), conditioned on the run's class labels.
    """

    model: LatentDenoiser
    params: dict
    fingerprint: str

    @property
    def scheduler(self):
        """The DDIM schedule of sampling (one object per model)."""
        return self.model.ddim_scheduler

    @property
    def denoiser_params(self) -> dict:
        return self.params

    @property
    def epsilon(self):
        """The model's noise prediction (params, latents, timesteps, context) -> [B, h, w, c] (one function per model)."""
        return self.model.epsilon

    def guidance_contexts(self, labels, prompts, negative_prompt: str) -> tuple[jax.Array, jax.Array]:
        """(conditional, unconditional) contexts [n, 1, D]: the labels' class embeddings and the null class's
        (prompts and negative_prompt unused: the denoiser is conditioned on the class label)."""
        del prompts, negative_prompt
        labels = jnp.asarray(np.asarray(labels, np.int32))
        return self.model.class_context(self.params, labels), self.model.class_context(self.params, jnp.full(len(labels), self.model.null_class))


def needed(config) -> bool:
    """Whether any synthetic set of the config is decoded by the diffusion decoder, or the run ships the denoiser."""
    from pqdjax.stages.decode import decoders_in_use  # the decode stage owns the method names

    return bool({"diffusion", "sample"} & decoders_in_use(config)) or bool(config.get("export_pretrained"))


def run(run, latents) -> Denoiser | None:
    if not needed(run.config):
        return None
    silence_diffusers_deprecation()
    config = run.config.denoiser
    model = make_denoiser(config.model, latents.shape, latents.num_classes)
    if config.get("weights"):
        target = jax.eval_shape(model.init_params, jax.random.key(0))
        params, entry = pretrained.load_params(config.weights, target, config.model, run.config.data.name)
        vae_weights = run.config.prior.get("weights")
        if not vae_weights or pretrained.manifest_entry(vae_weights)["sha256"] != entry["vae_sha256"]:
            raise pretrained.PretrainedError(
                f"the shipped denoiser {config.weights} models the latents of the VAE with sha256 {entry['vae_sha256'][:12]}..., "
                f"not of config.prior.weights={vae_weights!r}; ship both together, or set config.denoiser.weights='' to train it here."
            )
        logging.info("denoiser: shipped %s (teacher agreement of its samples %.3f)", config.weights, entry["quality"]["teacher_agreement"])
        return Denoiser(model, params, artifacts.fingerprint("denoiser", latents.fingerprint, entry["sha256"]))
    fp = artifacts.fingerprint("denoiser", latents.fingerprint, config, run.config.seed)
    if parallel.complete_everywhere(run.store, ARTIFACT, fp):
        target = jax.eval_shape(model.init_params, jax.random.key(0))
        params = run.store.load_params(ARTIFACT, target)
        logging.info("denoiser: reusing %s", run.store.path(ARTIFACT))
        return Denoiser(model, params, fp)
    start = time.perf_counter()
    flat, labels = latents.all()  # in the order of the training set
    points = flat.reshape((-1,) + tuple(latents.shape))
    checkpoints = run.checkpoints("denoiser", fp, config.train)
    params, metrics = train_denoiser(model, points, labels, config.train, run.rng("denoiser"), run.fast_conv, checkpoints, run.metrics_dir)
    seconds = round(time.perf_counter() - start, 2)
    num_params = int(sum(np.size(x) for x in jax.tree.leaves(params)))
    logging.info("denoiser: %d parameters, final loss %.4f (%.1fs)", num_params, metrics.get("loss", float("nan")), seconds)
    info = {"seconds": seconds, "num_params": num_params, **metrics}
    parallel.write_once(run.store, ARTIFACT, fp, lambda: run.store.save_params(ARTIFACT, params, fp, info))
    checkpoints.discard()
    return Denoiser(model, params, fp)
