"""The class-conditioned latent denoiser: diffusers' FlaxUNet2DConditionModel with a learned class embedding.

Classes condition the UNet through cross-attention: label y in [0, C) picks
row y of a learned table [C + 1, D], used as a context of one token
[B, 1, D]; row C is the null class, the unconditional context of
classifier-free guidance (training drops labels to it with probability
`class_dropout`). The UNet predicts the noise epsilon of the DDPM forward
process. Latents are channels last [B, h, w, c]; sides that are not a
multiple of the UNet's downsampling factor (7x7 for 28x28 images) are
zero-padded up to one and cropped back.

params = {"unet": UNet weights, "class_embedding": [C + 1, D]}.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
from diffusers import FlaxDDIMScheduler, FlaxDDPMScheduler, FlaxUNet2DConditionModel
from pqdjax.errors import ConfigError


@dataclasses.dataclass(frozen=True, eq=False)
class LatentDenoiser:
    """A UNet for latents [B, h, w, c] conditioned on C classes (plus the null class C).

    eq=False keeps hashing by identity, so that a denoiser can be a static
    argument of a jitted function (pqdjax.diffusion.img2img).
    """

    unet: FlaxUNet2DConditionModel
    latent_shape: tuple[int, int, int]
    num_classes: int
    scheduler_config: dict

    @property
    def padded_side(self) -> int:
        factor = 2 ** (len(self.unet.block_out_channels) - 1)
        return -(-max(self.latent_shape[:2]) // factor) * factor

    @property
    def null_class(self) -> int:
        return self.num_classes

    def ddpm_scheduler(self) -> FlaxDDPMScheduler:
        """The training noise schedule (the forward process)."""
        return FlaxDDPMScheduler(**self.scheduler_config)

    @functools.cached_property
    def ddim_scheduler(self) -> FlaxDDIMScheduler:
        """The same schedule for deterministic DDIM sampling (one object, so the jitted sampler compiles once)."""
        return FlaxDDIMScheduler(**self.scheduler_config, set_alpha_to_one=False, steps_offset=1)

    def init_params(self, rng: jax.Array) -> dict:
        """Random params, initialised under jit (eager init of a diffusers UNet takes seconds)."""

        @jax.jit
        def init(rng):
            unet_rng, embedding_rng = jax.random.split(rng)
            side = self.padded_side
            sample = jnp.zeros((1, self.unet.in_channels, side, side), jnp.float32)
            context = jnp.zeros((1, 1, self.unet.cross_attention_dim), jnp.float32)
            unet = self.unet.init({"params": unet_rng}, sample, jnp.ones((1,), jnp.int32), context)["params"]
            embedding = 0.02 * jax.random.normal(embedding_rng, (self.num_classes + 1, self.unet.cross_attention_dim))
            return {"unet": unet, "class_embedding": embedding}

        return init(rng)

    def class_context(self, params: dict, labels: jax.Array) -> jax.Array:
        """Labels int [B] in [0, C] (C: null) -> cross-attention context [B, 1, D]."""
        return params["class_embedding"][labels][:, None, :]

    def epsilon(self, params: dict, latents: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array:
        """Predicted noise [B, h, w, c] of latents [B, h, w, c] at integer timesteps [B] given context [B, L, D]."""
        h, w, _ = self.latent_shape
        side = self.padded_side
        padded = jnp.pad(latents, ((0, 0), (0, side - h), (0, side - w), (0, 0)))
        nchw = jnp.transpose(padded, (0, 3, 1, 2))
        out = self.unet.apply({"params": params["unet"]}, nchw, timesteps, context).sample
        return jnp.transpose(out, (0, 2, 3, 1))[:, :h, :w, :]

    def loss(self, params: dict, latents: jax.Array, labels: jax.Array, rng: jax.Array, class_dropout: float) -> tuple[jax.Array, dict]:
        """Epsilon-prediction loss: mean squared error between the noise and its prediction.

        latents [B, h, w, c], labels int [B]; each example gets a uniform
        timestep, Gaussian noise, and with probability class_dropout the null class.
        """
        t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
        scheduler = self.ddpm_scheduler()
        state = scheduler.create_state()
        batch = latents.shape[0]
        timesteps = jax.random.randint(t_rng, (batch,), 0, scheduler.config.num_train_timesteps)
        noise = jax.random.normal(noise_rng, latents.shape, latents.dtype)
        noisy = scheduler.add_noise(state, latents, noise, timesteps)
        labels = jnp.where(jax.random.bernoulli(drop_rng, class_dropout, (batch,)), self.null_class, labels)
        prediction = self.epsilon(params, noisy, timesteps, self.class_context(params, labels))
        mse = jnp.mean(jnp.square(prediction - noise))
        return mse, {"mse": mse}


def make_denoiser(config: ml_collections.ConfigDict, latent_shape: tuple[int, int, int], num_classes: int) -> LatentDenoiser:
    """config fields: block_out_channels (multiples of 32: diffusers' GroupNorm has 32 groups),
    layers_per_block, attention_head_dim, context_dim, num_train_timesteps, beta_schedule, beta_start, beta_end.

    Every block but the last downsamples; the blocks after the first carry cross-attention.
    """
    channels = tuple(config.block_out_channels)
    if any(c % 32 for c in channels):
        raise ConfigError(f"denoiser block_out_channels must be multiples of 32 (GroupNorm with 32 groups), got {channels}.")
    blocks = len(channels)
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (blocks - 1)
    up = ("CrossAttnUpBlock2D",) * (blocks - 1) + ("UpBlock2D",)
    unet = FlaxUNet2DConditionModel(
        sample_size=latent_shape[0],
        in_channels=latent_shape[2],
        out_channels=latent_shape[2],
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=config.layers_per_block,
        attention_head_dim=config.attention_head_dim,
        cross_attention_dim=config.context_dim,
    )
    scheduler_config = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        clip_sample=False,
        prediction_type="epsilon",
    )
    return LatentDenoiser(unet, tuple(latent_shape), num_classes, scheduler_config)
