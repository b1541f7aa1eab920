"""The decoders of the decode stage: latent points -> uint8 images, one function for every prior.

    vae        the prior's VAE decoder, directly
    diffusion  the pushforward of DDOQ and D4M: img2img of each point by the prior's class-conditioned
               denoiser (pqdjax.diffusion.pushforward.denoise: noise to config.decode.diffusion.strength,
               DDIM with classifier-free guidance; start='initial_latent' runs the whole reverse process
               from the point), then the VAE decoder
    sample     the same at strength 1 from zeros: class-conditional samples (the points give only the shape)

`decode_images` takes a LatentModel: the pretrained Stable Diffusion and DiT models
(pqdjax.models.stable_diffusion, dit_diffusion) are ones, and `TrainedLatentModel`
makes one of the VAE and latent denoiser trained here (stages.prior.Prior,
stages.denoiser.Denoiser). The noise of point (c, k) comes from its own key
(point_keys), so an image depends on neither the batch nor the process that
decodes it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pqdjax.cost import compiled_flops
from pqdjax.data.preprocess import to_uint8
from pqdjax.diffusion import guided_epsilon, start_index
from pqdjax.diffusion.pushforward import denoise
from pqdjax.errors import NonFiniteError
from pqdjax.models import vae as vae_lib

@functools.partial(jax.jit, static_argnums=(0, 3))
def _vae_decode(vae, params, latents: jax.Array, latent_scale: float) -> jax.Array:
    return vae_lib.decode(vae, params, latents, latent_scale)


@dataclasses.dataclass(frozen=True)
class TrainedLatentModel:
    """The in-memory prior as a LatentModel: the VAE (stages.prior.Prior) with the class-conditioned latent denoiser
    trained here or shipped (stages.denoiser.Denoiser; None where no method needs it)."""

    prior: object
    denoiser: object | None

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Scaled latents [N, h, w, c] -> images [N, H, W, C], about [-1, 1]."""
        return _vae_decode(self.prior.vae, self.prior.params, latents, self.prior.latent_scale)

    # the ConditionalDenoiser of pqdjax.diffusion.pushforward, the denoiser's
    @property
    def scheduler(self):
        return self.denoiser.scheduler

    @property
    def denoiser_params(self):
        return self.denoiser.denoiser_params

    @property
    def epsilon(self):
        return self.denoiser.epsilon

    def guidance_contexts(self, labels, prompts, negative_prompt: str):
        return self.denoiser.guidance_contexts(labels, prompts, negative_prompt)


def point_keys(base: jax.Array, classes, ipc: int) -> jax.Array:
    """One noise key per point [len(classes) * ipc], class-major: fold_in(fold_in(base, c), k) for point k of class c."""
    return jnp.stack([jax.random.fold_in(jax.random.fold_in(base, int(c)), k) for c in classes for k in range(ipc)])


def decode_images(model, decoder: str, points: np.ndarray, labels: np.ndarray, prompts: list[str] | None, keys: jax.Array,
                  settings, mesh: Mesh, image_size: int | None = None, strength: float | None = None) -> np.ndarray:
    """Latent points [n, h, w, c] of condition labels [n] -> uint8 images [n, H, W, C] by `decoder` (config_checks.KNOWN_DECODERS).

    model: a LatentModel (decode_latents and the ConditionalDenoiser interface); prompts: one per point for
    text-conditioned priors (None: class-conditioned); keys: one noise key per point [n] (point_keys);
    settings: config.decode.diffusion (strength, guidance, steps, start, negative_prompt); image_size: the side the
    images are resized to (bicubic, antialiased), None to keep the VAE's; strength: in place of settings.strength
    (the figure's strips). The batch is padded to a multiple of the mesh's devices and sharded over them.
    NonFiniteError where the images hold NaN or inf.
    """
    n = len(points)
    extra = -n % mesh.size
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a  # host arrays, put once
    sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    put = lambda a: jax.device_put(np.asarray(a), sharding)
    latents = put(pad(np.asarray(points, np.float32)))
    if decoder != "vae":
        start = "sample" if decoder == "sample" else settings.get("start", "img2img")
        keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], extra, axis=0)]) if extra else keys  # padding: last point's key
        latents = denoise(model, latents, pad(np.asarray(labels)), None if prompts is None else list(prompts) + [prompts[-1]] * extra,
                          keys, strength=settings.strength if strength is None else strength, guidance=settings.guidance,
                          steps=settings.steps, start=start, negative_prompt=settings.get("negative_prompt", ""), place=put,
                          params=jax.device_put(model.denoiser_params, NamedSharding(mesh, PartitionSpec())))
    images = model.decode_latents(latents)
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        images = _resize(images, image_size)
    images = np.asarray(images)[:n]
    if not np.all(np.isfinite(images)):
        raise NonFiniteError(f"decode: the {decoder} decoder produced NaN or inf images.")
    return to_uint8(images)


@functools.partial(jax.jit, static_argnums=1)
def _resize(images: jax.Array, size: int) -> jax.Array:
    """[n, H, W, C] -> [n, size, size, C], bicubic (antialiased when shrinking)."""
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bicubic", antialias=True)


def decode_flops(model, decoder: str, settings, latent_shape, n: int, batch: int) -> float | None:
    """Floating-point operations of decoding n points by `decoder` in batches of `batch`, as XLA counts them
    (pqdjax.cost); None where the backend counts none.

    The sampler runs its DDIM steps in a fori_loop, whose body XLA would count once,
    so the count is built from programs without loops: one guided denoiser call on a
    batch (both halves of classifier-free guidance) times the steps run times the
    batches, plus the VAE decoder's batches.
    """
    latent_shape, batch = tuple(latent_shape), min(batch, n)
    batches = -(-n // batch)
    vae_flops = compiled_flops(jax.jit(model.decode_latents), jnp.zeros((batch,) + latent_shape))
    if vae_flops is None or decoder == "vae":
        return None if vae_flops is None else vae_flops * batches
    strength = settings.strength if decoder == "diffusion" else 1.0
    whole = decoder == "diffusion" and settings.get("start", "img2img") == "initial_latent"  # every step, from the point
    steps_run = settings.steps if whole else settings.steps - start_index(settings.steps, strength)
    context, _ = model.guidance_contexts(np.zeros(batch, np.int32), None, "")
    call = jax.jit(guided_epsilon, static_argnums=0)
    eps_flops = compiled_flops(call, model.epsilon, model.denoiser_params, jnp.zeros((batch,) + latent_shape), jnp.int32(0),
                               context, context, settings.guidance)
    return None if eps_flops is None else (vae_flops + eps_flops * steps_run) * batches
