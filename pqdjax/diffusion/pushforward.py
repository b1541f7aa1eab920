"""The pushforward of latent points by a prior's class-conditioned diffusion model: one function for every prior.

A prior's denoiser is anything with the ConditionalDenoiser interface: Stable
Diffusion (pqdjax.models.stable_diffusion, conditioned on text prompts), DiT
(pqdjax.models.dit_diffusion, on ImageNet class labels) and the latent
denoiser trained here (pqdjax.stages.denoiser.Denoiser, on the run's class
labels). `denoise` conditions it on the points' classes and runs the sampler
(pqdjax.diffusion.sampler) from the points; the decode stages of every kind of
run call it, and decode its output with their prior's VAE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from pqdjax.diffusion.sampler import img2img, sample_from
from pqdjax.errors import ConfigError

# How the reverse process starts from a point (config.decode.diffusion.start): 'img2img' noises it to `strength` and
# denoises (SDEdit, D4M, DDOQ); 'initial_latent' runs the whole reverse process from the point in place of Gaussian
# noise. denoise also takes 'sample' (the decoder of the 'generated' baseline): strength 1 from zeros, a
# class-conditional sample that takes only its shape from the point.
STARTS = ("img2img", "initial_latent")


class ConditionalDenoiser(Protocol):
    """What the pushforward needs of a prior's denoiser.

    scheduler: a diffusers FlaxDDIMScheduler (an equal object on every access: a static argument of the jitted
      sampler, so it compiles once);
    denoiser_params: the parameters `epsilon` takes;
    epsilon(params, latents [B, h, w, c], timesteps int32 [B], context [B, ...]) -> noise prediction [B, h, w, c]
      (an equal function on every access, e.g. a method of one model object: also a static argument);
    guidance_contexts(labels int [n], prompts [n] or None, negative_prompt) -> (conditional, unconditional)
      contexts [n, ...] of classifier-free guidance.
    """

    @property
    def scheduler(self) -> Any: ...

    @property
    def denoiser_params(self) -> Any: ...

    def epsilon(self, params: Any, latents: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array: ...

    def guidance_contexts(self, labels: Sequence[int], prompts: Sequence[str] | None,
                          negative_prompt: str) -> tuple[jax.Array, jax.Array]: ...


def denoise(model: ConditionalDenoiser, points, labels: np.ndarray, prompts: Sequence[str] | None, rng: jax.Array, *,
            strength: float, guidance: float, steps: int, start: str = "img2img", negative_prompt: str = "",
            place: Callable[[Any], Any] | None = None, params: Any = None) -> jax.Array:
    """Latent points [n, h, w, c] of classes labels [n] -> denoised latents [n, h, w, c].

    prompts: one per point for text-conditioned priors (None for class-conditioned ones);
    rng: the noise key, or one key per point [n] (an image then depends only on its point's key);
    start: one of STARTS ('initial_latent' is deterministic: rng and strength unused), or 'sample' (strength 1 from
    zeros: the points give only the shape);
    place: applied to the contexts (e.g. a device_put sharding them like the points); params: the denoiser's
    parameters as placed by the caller (default model.denoiser_params).
    """
    if start not in STARTS + ("sample",):
        raise ConfigError(f"config.decode.diffusion.start must be one of {STARTS}, got {start!r}.")
    if start == "sample":
        points, strength, start = jnp.zeros_like(points), 1.0, "img2img"
    place = place or (lambda a: a)
    cond, uncond = (place(c) for c in model.guidance_contexts(labels, prompts, negative_prompt))
    params = model.denoiser_params if params is None else params
    if start == "img2img":
        return img2img(model.epsilon, model.scheduler, params, points, cond, uncond, rng,
                       strength=strength, guidance=guidance, steps=steps)
    return sample_from(model.epsilon, model.scheduler, params, points, cond, uncond, guidance=guidance, steps=steps)
