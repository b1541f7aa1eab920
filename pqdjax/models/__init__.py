"""Models: the VAE prior and latent denoiser (diffusers), the Stable Diffusion loader, classifiers, and the fast conv-gradient path.

Every use of diffusers in pqdjax goes through this package.
"""


def silence_diffusers_deprecation() -> None:
    """Hides diffusers' "Flax classes are deprecated" warning, logged at every trace of a Flax model."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
