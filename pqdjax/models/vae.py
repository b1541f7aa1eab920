"""The VAE prior: diffusers' FlaxAutoencoderKL, with channels-last functions around it.

Images are float [N, H, W, C] in [-1, 1]; latents are float [N, h, w, c]
(channels last, as diffusers' Flax VAE produces them), multiplied by
`latent_scale` so that they have about unit variance (Stable Diffusion's
0.18215; for a VAE trained here, 1 / std of its training latents). All
diffusers imports of the project live in pqdjax.models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from diffusers import FlaxAutoencoderKL

Params = Mapping[str, Any]


def make_vae(config: ml_collections.ConfigDict, image_size: int, channels: int) -> FlaxAutoencoderKL:
    """A FlaxAutoencoderKL whose downsampling factor is 2^(len(block_out_channels) - 1).

    config fields: block_out_channels, layers_per_block, latent_channels, norm_num_groups.
    """
    blocks = len(config.block_out_channels)
    if image_size % 2 ** (blocks - 1):
        raise ValueError(
            f"image size {image_size} is not divisible by the VAE's downsampling factor "
            f"{2 ** (blocks - 1)} (len(block_out_channels) = {blocks}); resize the images or change "
            "config.prior.vae.block_out_channels."
        )
    return FlaxAutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        latent_channels=config.latent_channels,
        norm_num_groups=config.norm_num_groups,
        sample_size=image_size,
    )


def latent_shape(vae: FlaxAutoencoderKL, image_size: int) -> tuple[int, int, int]:
    """[h, w, c] of the latents of an image_size x image_size image."""
    side = image_size // 2 ** (len(vae.block_out_channels) - 1)
    return (side, side, vae.latent_channels)


def init_params(vae: FlaxAutoencoderKL, rng: jax.Array, image_size: int) -> Params:
    """Random parameters for `vae` (initialised under jit: eager init of a diffusers model takes seconds)."""

    @jax.jit
    def init(rng):
        params_rng, gaussian_rng = jax.random.split(rng)
        sample = jnp.zeros((1, vae.in_channels, image_size, image_size), jnp.float32)
        return vae.init({"params": params_rng, "gaussian": gaussian_rng}, sample)["params"]

    return init(rng)


def posterior(vae: FlaxAutoencoderKL, params: Params, images: jax.Array):
    """The encoder's diagonal Gaussian q(z | x) for images [N, H, W, C]; its mean is [N, h, w, c]."""
    nchw = jnp.transpose(images, (0, 3, 1, 2))
    return vae.apply({"params": params}, nchw, method=vae.encode).latent_dist


def encode(vae: FlaxAutoencoderKL, params: Params, images: jax.Array, latent_scale: float | jax.Array = 1.0, rng: jax.Array | None = None) -> jax.Array:
    """Images [N, H, W, C] in [-1, 1] -> scaled latents [N, h, w, c]: the posterior mean, or a sample when `rng` is given."""
    dist = posterior(vae, params, images)
    z = dist.mean if rng is None else dist.sample(rng)
    return z * latent_scale


def decode(vae: FlaxAutoencoderKL, params: Params, latents: jax.Array, latent_scale: float | jax.Array = 1.0) -> jax.Array:
    """Scaled latents [N, h, w, c] -> images [N, H, W, C] (unclipped, about [-1, 1])."""
    nchw = vae.apply({"params": params}, latents / latent_scale, method=vae.decode).sample
    return jnp.transpose(nchw, (0, 2, 3, 1))


def loss(vae: FlaxAutoencoderKL, params: Params, images: jax.Array, rng: jax.Array, kl_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative ELBO with a Gaussian likelihood: mean squared reconstruction error + kl_weight * KL per latent element.

    images: [N, H, W, C] in [-1, 1]. Returns (loss, metrics).
    """
    dist = posterior(vae, params, images)
    reconstruction = decode(vae, params, dist.sample(rng))
    mse = jnp.mean(jnp.square(reconstruction - images))
    kl = jnp.mean(dist.kl()) / dist.mean[0].size
    return mse + kl_weight * kl, {"mse": mse, "kl": kl}
