"""Latent diffusion sampling: img2img (or the whole reverse process from given latents) with classifier-free
guidance on a DDIM schedule; pqdjax.diffusion.pushforward runs it for any prior's denoiser."""

from pqdjax.diffusion.sampler import guided_epsilon, img2img, sample_from, start_index

__all__ = ["guided_epsilon", "img2img", "sample_from", "start_index"]
