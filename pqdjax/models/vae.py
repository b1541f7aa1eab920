"""The VAE prior, with channels-last functions around it.

Two architectures, picked by config.arch:

    'autoencoder_kl'  diffusers' FlaxAutoencoderKL, the Stable Diffusion VAE's architecture
                      (the one pretrained SD / DiT VAEs load into)
    'conv'            pqdjax.models.conv_vae.ConvVAE, residual conv blocks without
                      normalisation: the embedded prior, fast to train on a CPU

Both give a diagonal Gaussian posterior (`Posterior`) and a deterministic decoder.
Images are float [N, H, W, C] in [-1, 1]; latents are float [N, h, w, c]
(channels last, as diffusers' Flax VAE produces them), multiplied by
`latent_scale` so that they have about unit variance (Stable Diffusion's
0.18215; for a VAE trained here, 1 / std of its training latents). All
diffusers imports of the project live in pqdjax.models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from diffusers import FlaxAutoencoderKL

from pqdjax.models.conv_vae import ConvVAE
from pqdjax.errors import ConfigError

Params = Mapping[str, Any]
VAE = FlaxAutoencoderKL | ConvVAE
ARCHITECTURES = ("autoencoder_kl", "conv")


@dataclasses.dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian q(z | x): mean and log-variance [N, h, w, c]."""

    mean: jax.Array
    logvar: jax.Array

    def sample(self, rng: jax.Array) -> jax.Array:
        return self.mean + jnp.exp(0.5 * self.logvar) * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) per example [N], summed over the latent's elements."""
        return 0.5 * jnp.sum(jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar, axis=(1, 2, 3))


def make_vae(config: ml_collections.ConfigDict, image_size: int, channels: int) -> VAE:
    """A VAE of architecture config.arch whose downsampling factor is patch * 2^(len(block_out_channels) - 1).

    config fields: arch ('autoencoder_kl' when absent), block_out_channels, layers_per_block,
    latent_channels; norm_num_groups for 'autoencoder_kl'; patch (space-to-depth factor) for 'conv'.
    """
    arch = config.get("arch", "autoencoder_kl")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown VAE arch {arch!r} in config.prior.vae.arch; known: {ARCHITECTURES}.")
    blocks = len(config.block_out_channels)
    patch = config.get("patch", 1) if arch == "conv" else 1
    if image_size % (patch * 2 ** (blocks - 1)):
        raise ConfigError(
            f"image size {image_size} is not divisible by the VAE's downsampling factor "
            f"{patch * 2 ** (blocks - 1)} (len(block_out_channels) = {blocks}, patch {patch}); resize the images "
            "or change config.prior.vae.block_out_channels."
        )
    if arch == "conv":
        return ConvVAE(channels, tuple(config.block_out_channels), config.layers_per_block, config.latent_channels, patch)
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


def latent_shape(vae: VAE, image_size: int) -> tuple[int, int, int]:
    """[h, w, c] of the latents of an image_size x image_size image."""
    factor = vae.downsampling if isinstance(vae, ConvVAE) else 2 ** (len(vae.block_out_channels) - 1)
    side = image_size // factor
    return (side, side, vae.latent_channels)


def init_params(vae: VAE, rng: jax.Array, image_size: int) -> Params:
    """Random parameters for `vae` (initialised under jit: eager init of a diffusers model takes seconds)."""

    @jax.jit
    def init(rng):
        if isinstance(vae, ConvVAE):
            return vae.init(rng, jnp.zeros((1, image_size, image_size, vae.in_channels), jnp.float32))["params"]
        params_rng, gaussian_rng = jax.random.split(rng)
        sample = jnp.zeros((1, vae.in_channels, image_size, image_size), jnp.float32)
        return vae.init({"params": params_rng, "gaussian": gaussian_rng}, sample)["params"]

    return init(rng)


def posterior(vae: VAE, params: Params, images: jax.Array) -> Posterior:
    """The encoder's diagonal Gaussian q(z | x) for images [N, H, W, C]; its mean is [N, h, w, c]."""
    if isinstance(vae, ConvVAE):
        return Posterior(*vae.apply({"params": params}, images, method=vae.encode_moments))
    nchw = jnp.transpose(images, (0, 3, 1, 2))
    dist = vae.apply({"params": params}, nchw, method=vae.encode).latent_dist
    return Posterior(dist.mean, dist.logvar)


def encode(vae: VAE, params: Params, images: jax.Array, latent_scale: float | jax.Array = 1.0, rng: jax.Array | None = None) -> jax.Array:
    """Images [N, H, W, C] in [-1, 1] -> scaled latents [N, h, w, c]: the posterior mean, or a sample when `rng` is given."""
    dist = posterior(vae, params, images)
    z = dist.mean if rng is None else dist.sample(rng)
    return z * latent_scale


def decode(vae: VAE, params: Params, latents: jax.Array, latent_scale: float | jax.Array = 1.0) -> jax.Array:
    """Scaled latents [N, h, w, c] -> images [N, H, W, C] (unclipped, about [-1, 1])."""
    if isinstance(vae, ConvVAE):
        return vae.apply({"params": params}, latents / latent_scale, method=vae.decode_latents)
    nchw = vae.apply({"params": params}, latents / latent_scale, method=vae.decode).sample
    return jnp.transpose(nchw, (0, 2, 3, 1))


def loss(vae: VAE, params: Params, images: jax.Array, rng: jax.Array, kl_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Negative ELBO with a Gaussian likelihood: mean squared reconstruction error + kl_weight * KL per latent element.

    images: [N, H, W, C] in [-1, 1]. Returns (loss, metrics).
    """
    dist = posterior(vae, params, images)
    reconstruction = decode(vae, params, dist.sample(rng))
    mse = jnp.mean(jnp.square(reconstruction - images))
    kl = jnp.mean(dist.kl()) / dist.mean[0].size
    return mse + kl_weight * kl, {"mse": mse, "kl": kl}
