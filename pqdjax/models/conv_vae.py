"""A small convolutional VAE for small images, built to train in minutes on a CPU.

diffusers' FlaxAutoencoderKL (the Stable Diffusion VAE's architecture) spends
most of its time in GroupNorm and attention at 28x28: its smallest useful
size trains at about 240 s an epoch of Fashion-MNIST on 2 CPU cores. This
one keeps the same contract (a diagonal Gaussian posterior over a latent grid
downsampled by 2^(levels - 1), a deterministic decoder) with plain residual
conv blocks and no normalisation, and it starts by folding patch x patch
pixels into channels (space to depth; the decoder unfolds them at the end),
so that no convolution runs at full resolution, where XLA:CPU's convolutions
with few channels are slowest.

Shapes, channels last: images [N, H, W, C] in [-1, 1]; latents [N, h, w, c]
with h = H / (patch * 2^(len(block_out_channels) - 1)).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ResidualBlock(nn.Module):
    """x + conv(silu(conv(silu(x)))): two 3x3 convolutions that keep the channels."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        h = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)))(nn.silu(x))
        h = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)))(nn.silu(h))
        return x + h


def space_to_depth(x: jax.Array, patch: int) -> jax.Array:
    """[N, H, W, C] -> [N, H / patch, W / patch, patch * patch * C]."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // patch, w // patch, patch * patch * c)


def depth_to_space(x: jax.Array, patch: int) -> jax.Array:
    """The inverse of space_to_depth: [N, h, w, patch * patch * C] -> [N, h * patch, w * patch, C]."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, patch, patch, c // (patch * patch)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * patch, w * patch, c // (patch * patch))


class ConvEncoder(nn.Module):
    """[N, H, W, C] -> (mean, log-variance), each [N, h, w, latent_channels]."""

    block_out_channels: Sequence[int]
    layers_per_block: int
    latent_channels: int
    patch: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = space_to_depth(x, self.patch)
        x = nn.Conv(self.block_out_channels[0], (3, 3), padding=((1, 1), (1, 1)))(x)
        for level, channels in enumerate(self.block_out_channels):
            if level:  # each level after the first halves the side
                x = nn.Conv(channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(nn.silu(x))
            for _ in range(self.layers_per_block):
                x = ResidualBlock()(x)
        moments = nn.Conv(2 * self.latent_channels, (3, 3), padding=((1, 1), (1, 1)))(nn.silu(x))
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)


class ConvDecoder(nn.Module):
    """Latents [N, h, w, c] -> images [N, H, W, out_channels] (unclipped)."""

    block_out_channels: Sequence[int]
    layers_per_block: int
    out_channels: int
    patch: int = 1

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        channels = tuple(reversed(self.block_out_channels))
        x = nn.Conv(channels[0], (3, 3), padding=((1, 1), (1, 1)))(z)
        for level, width in enumerate(channels):
            if level:  # nearest-neighbour upsampling, then a conv (no checkerboard of transposed convs)
                n, h, w, c = x.shape
                x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)))(nn.silu(x))
            for _ in range(self.layers_per_block):
                x = ResidualBlock()(x)
        x = nn.Conv(self.out_channels * self.patch**2, (3, 3), padding=((1, 1), (1, 1)))(nn.silu(x))
        return depth_to_space(x, self.patch)


class ConvVAE(nn.Module):
    """The encoder and decoder; `encode_moments` and `decode_latents` are its two entry points."""

    in_channels: int
    block_out_channels: Sequence[int]
    layers_per_block: int
    latent_channels: int
    patch: int = 1

    @property
    def downsampling(self) -> int:
        return self.patch * 2 ** (len(self.block_out_channels) - 1)

    def setup(self):
        self.encoder = ConvEncoder(tuple(self.block_out_channels), self.layers_per_block, self.latent_channels, self.patch)
        self.decoder = ConvDecoder(tuple(self.block_out_channels), self.layers_per_block, self.in_channels, self.patch)

    def encode_moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.encoder(images)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        return self.decoder(latents)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstruction through the posterior mean (used to initialise both halves)."""
        mean, _ = self.encode_moments(images)
        return self.decode_latents(mean)
