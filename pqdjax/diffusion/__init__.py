"""Latent diffusion sampling: img2img with classifier-free guidance on a DDIM schedule."""

from pqdjax.diffusion.sampler import guided_epsilon, img2img, start_index

__all__ = ["guided_epsilon", "img2img", "start_index"]
