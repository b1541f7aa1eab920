"""A DiT checkpoint in diffusers' layout (facebook/DiT-XL-2-256 and -512): its VAE, its transformer and its schedule.

A checkpoint folder (local, or a Hugging Face hub repo id) holds

    transformer/config.json, diffusion_pytorch_model.safetensors   DiTTransformer2DModel (pqdjax.models.dit)
    vae/config.json, diffusion_pytorch_model.safetensors           the SD VAE architecture (sd-vae-ft-ema / -mse)
    scheduler/scheduler_config.json                                DiT's schedule: 1,000 linear betas 1e-4 .. 0.02

Weights are read as numpy arrays and converted without torch. Latents are
channels last [N, h, w, 4], scaled by the VAE's scaling factor (0.18215), as
in pqdjax.models.stable_diffusion, whose interface this class shares
(encode_images, decode_latents, epsilon, denoiser_params, scheduler,
guidance_contexts), so one pushforward serves both priors. The condition is
the class label (ImageNet's 1,000 classes in their usual order); the
unconditional branch of guidance is the null class.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from diffusers import FlaxAutoencoderKL, FlaxDDIMScheduler

from pqdjax.models import dit as dit_lib
from pqdjax.models import stable_diffusion

PARTS = ("transformer", "vae", "scheduler")
_WEIGHTS = "diffusion_pytorch_model.safetensors"
_HUB_PATTERNS = ("model_index.json", "transformer/config.json", f"transformer/{_WEIGHTS}", "vae/config.json",
                 f"vae/{_WEIGHTS}", "scheduler/scheduler_config.json")
CheckpointError = dit_lib.CheckpointError


@dataclasses.dataclass(frozen=True, eq=False)
class DiTDiffusion:
    """The models and weights of a DiT checkpoint (hashed by identity: a static jit argument)."""

    vae: FlaxAutoencoderKL
    vae_params: dict
    transformer: dit_lib.DiT
    transformer_params: dict
    scheduler: FlaxDDIMScheduler
    latent_scale: float

    def encode_images(self, images: jax.Array) -> jax.Array:
        """Images [N, H, W, 3] in [-1, 1] -> scaled latents [N, H/8, W/8, 4] (posterior means)."""
        return stable_diffusion.encode_images(self, images)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Scaled latents [N, h, w, 4] -> images [N, 8h, 8w, 3], about [-1, 1]."""
        return stable_diffusion.decode_latents(self, latents)

    @property
    def denoiser_params(self) -> dict:
        """The parameters `epsilon` takes (the transformer's)."""
        return self.transformer_params

    @property
    def null_class(self) -> int:
        return self.transformer.num_embeds_ada_norm

    def epsilon(self, params: dict, latents: jax.Array, timesteps: jax.Array, labels: jax.Array) -> jax.Array:
        """The noise prediction [B, h, w, 4] for latents [B, h, w, 4], timesteps [B] and class labels int [B]:
        the first in_channels outputs (the rest, the learned variance, are not used by DDIM)."""
        out = self.transformer.apply({"params": params}, latents, timesteps, labels)
        return out[..., : self.transformer.in_channels]

    def guidance_contexts(self, labels: Sequence[int], prompts: Sequence[str], negative_prompt: str) -> tuple[jax.Array, jax.Array]:
        """(conditional, unconditional) contexts of classifier-free guidance: the class labels int [n] and the
        null class (prompts and negative_prompt unused: DiT is conditioned on the class label)."""
        labels = jnp.asarray(np.asarray(labels, np.int32))
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= self.null_class):
            raise ValueError(f"DiT class labels must be in [0, {self.null_class}), got {int(labels.min())}..{int(labels.max())}.")
        return labels, jnp.full_like(labels, self.null_class)


def load_transformer(folder: str) -> tuple[dit_lib.DiT, dict]:
    """(module, params) from a transformer/ folder: config.json and PyTorch safetensors."""
    config_path, weights = os.path.join(folder, "config.json"), os.path.join(folder, _WEIGHTS)
    for path in (config_path, weights):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} does not exist; a DiT checkpoint in diffusers' layout has it.")
    with open(config_path) as f:
        model = dit_lib.from_config(json.load(f))
    from safetensors.numpy import load_file

    return model, dit_lib.convert_pytorch_weights(load_file(weights), model, weights)


def load_dit(path_or_repo: str, *, revision: str | None = None) -> DiTDiffusion:
    """Loads a DiT checkpoint in diffusers' layout (see the module docstring)."""
    root = stable_diffusion.resolve_checkpoint(path_or_repo, revision, PARTS, _HUB_PATTERNS)
    for part in PARTS:
        if not os.path.isdir(os.path.join(root, part)):
            raise CheckpointError(f"{root} has no {part}/ folder; a DiT checkpoint in diffusers' layout has one.")
    vae, vae_params, latent_scale = stable_diffusion.load_vae(os.path.join(root, "vae"))
    transformer, transformer_params = load_transformer(os.path.join(root, "transformer"))
    # DiT's own schedule (linear betas); whatever sampler class the config names, DDIM runs it here.
    scheduler = FlaxDDIMScheduler.from_config(FlaxDDIMScheduler.load_config(root, subfolder="scheduler"), clip_sample=False)
    return DiTDiffusion(vae=vae, vae_params=vae_params, transformer=transformer, transformer_params=transformer_params,
                        scheduler=scheduler, latent_scale=latent_scale)
