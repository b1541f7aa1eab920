"""Stable Diffusion v1.x in Flax: loading a checkpoint in diffusers' layout, and its latent img2img.

A checkpoint folder (local, or a Hugging Face hub repo id fetched with
huggingface_hub) holds vae/, unet/, text_encoder/, tokenizer/ and scheduler/.
Each model folder has Flax weights (diffusion_flax_model.msgpack,
flax_model.msgpack) or PyTorch safetensors (diffusion_pytorch_model.safetensors,
model.safetensors); the latter are read as numpy arrays and converted without
torch: renamed and transposed by diffusers' PyTorch -> Flax rules against the
parameter shapes of the model (computed abstractly, nothing initialised), the
text encoder by transformers' own safetensors path.

Latents are channels last [N, h, w, 4], scaled by the VAE's scaling factor
(0.18215 for v1.x). Text conditioning: the CLIP text encoder's last hidden
state [n, 77, D] of the prompt (D4M's prompt is the class name), the
negative prompt's encoding as the unconditional context of guidance.
D4M's ImageNet settings are the defaults: strength 0.7, guidance 8, 50 DDIM steps.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from diffusers import FlaxAutoencoderKL, FlaxDDIMScheduler, FlaxUNet2DConditionModel
from diffusers.models.modeling_flax_pytorch_utils import rename_key, rename_key_and_reshape_tensor
from flax.traverse_util import flatten_dict, unflatten_dict
from transformers import CLIPTokenizer, FlaxCLIPTextModel

from pqdjax.diffusion.pushforward import denoise
from pqdjax.models import vae as vae_lib
from pqdjax.errors import InputError

SD_LATENT_SCALE = 0.18215
_FLAX_WEIGHTS = "diffusion_flax_model.msgpack"
_PT_WEIGHTS = "diffusion_pytorch_model.safetensors"
_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
# Only what the loader reads: hub repos also hold fp16 / EMA variants and single-file checkpoints.
_HUB_PATTERNS = ["model_index.json"] + [
    f"{part}/{name}"
    for part in _PARTS
    for name in ("*.json", "*.txt", _FLAX_WEIGHTS if part in ("vae", "unet") else "flax_model.msgpack",
                 _PT_WEIGHTS if part in ("vae", "unet") else "model.safetensors")
]


class CheckpointError(InputError):
    """A Stable Diffusion checkpoint is missing, incomplete or does not match its config."""


@dataclasses.dataclass(frozen=True, eq=False)
class StableDiffusion:
    """The models and weights of a Stable Diffusion v1.x checkpoint (hashed by identity: a static jit argument)."""

    vae: FlaxAutoencoderKL
    vae_params: dict
    unet: FlaxUNet2DConditionModel
    unet_params: dict
    text_encoder: FlaxCLIPTextModel
    text_params: dict
    tokenizer: CLIPTokenizer
    scheduler: FlaxDDIMScheduler
    latent_scale: float

    def encode_images(self, images: jax.Array) -> jax.Array:
        """Images [N, H, W, 3] in [-1, 1] -> scaled latents [N, H/8, W/8, 4] (posterior means)."""
        return encode_images(self, images)

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Scaled latents [N, h, w, 4] -> images [N, 8h, 8w, 3], about [-1, 1]."""
        return decode_latents(self, latents)

    @property
    def denoiser_params(self) -> dict:
        """The parameters `epsilon` takes (the UNet's)."""
        return self.unet_params

    def guidance_contexts(self, labels: Sequence[int], prompts: Sequence[str], negative_prompt: str) -> tuple[jax.Array, jax.Array]:
        """(conditional, unconditional) contexts of classifier-free guidance, [n, L, D] each: the prompts' and
        the negative prompt's text encodings (labels unused: Stable Diffusion is conditioned on text)."""
        return self.text_context(prompts), self.text_context([negative_prompt] * len(prompts))

    def text_context(self, prompts: Sequence[str]) -> jax.Array:
        """Prompts -> the text encoder's last hidden state [n, L, D] (L: the tokenizer's max length, 77 for v1.x)."""
        tokens = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="np"
        )
        return _encode_text(self, self.text_params, tokens.input_ids)

    def epsilon(self, unet_params: dict, latents: jax.Array, timesteps: jax.Array, context: jax.Array) -> jax.Array:
        """The UNet's noise prediction [B, h, w, 4] for latents [B, h, w, 4] (channels last, like the sampler's)."""
        nchw = jnp.transpose(latents, (0, 3, 1, 2))
        out = self.unet.apply({"params": unet_params}, nchw, timesteps, context).sample
        return jnp.transpose(out, (0, 2, 3, 1))

    def img2img(
        self,
        latents: jax.Array,
        prompts: Sequence[str],
        rng: jax.Array,
        *,
        strength: float = 0.7,
        guidance: float = 8.0,
        steps: int = 50,
        negative_prompt: str = "",
    ) -> jax.Array:
        """Scaled latents [n, h, w, 4], one prompt each -> denoised latents [n, h, w, 4] (pqdjax.diffusion.pushforward.denoise, img2img).

        D4M: prompts are class names, negative_prompt "cartoon, anime, painting".
        """
        if len(prompts) != len(latents):
            raise ValueError(f"img2img needs one prompt per latent, got {len(prompts)} prompts for {len(latents)} latents.")
        return denoise(self, latents, np.arange(len(prompts)), prompts, rng, strength=strength, guidance=guidance, steps=steps,
                       negative_prompt=negative_prompt)


def encode_images(model, images: jax.Array) -> jax.Array:
    """Images [N, H, W, 3] in [-1, 1] -> scaled latents by `model`'s VAE (any object with vae, vae_params and
    latent_scale: StableDiffusion, pqdjax.models.dit_diffusion.DiTDiffusion)."""
    return _encode(model, model.vae_params, images)


def decode_latents(model, latents: jax.Array) -> jax.Array:
    """Scaled latents -> images about [-1, 1] by `model`'s VAE decoder (see encode_images)."""
    return _decode(model, model.vae_params, latents)


@functools.partial(jax.jit, static_argnums=0)
def _encode(model, vae_params, images):
    return vae_lib.encode(model.vae, vae_params, images, model.latent_scale)


@functools.partial(jax.jit, static_argnums=0)
def _decode(model, vae_params, latents):
    return vae_lib.decode(model.vae, vae_params, latents, model.latent_scale)


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(sd: StableDiffusion, text_params, input_ids):
    return sd.text_encoder(input_ids, params=text_params).last_hidden_state


def convert_pytorch_weights(state_dict: dict[str, np.ndarray], abstract_params: dict, where: str) -> dict:
    """PyTorch-named numpy arrays -> a Flax params tree shaped like `abstract_params` (ShapeDtypeStructs).

    Uses diffusers' renaming and reshaping rules (the ones of
    convert_pytorch_state_dict_to_flax, which needs torch tensors and an
    eagerly initialised model); raises CheckpointError on a missing,
    unexpected or misshapen weight.
    """
    expected = flatten_dict(abstract_params)
    converted = {}
    for pt_key, tensor in state_dict.items():
        flax_key, value = rename_key_and_reshape_tensor(tuple(rename_key(pt_key).split(".")), np.asarray(tensor), expected)
        if flax_key not in expected:
            raise CheckpointError(f"{where}: weight {pt_key!r} matches no parameter of the model in its config.json.")
        if value.shape != expected[flax_key].shape:
            raise CheckpointError(
                f"{where}: weight {pt_key!r} has shape {value.shape}, the model in its config.json needs {expected[flax_key].shape}."
            )
        converted[flax_key] = jnp.asarray(value, expected[flax_key].dtype)
    missing = sorted(".".join(k) for k in expected.keys() - converted.keys())
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} parameter(s) missing, e.g. {missing[:3]}; is the checkpoint complete?")
    return unflatten_dict(converted)


def _abstract_params(model, sample_shape: tuple[int, ...], *extra) -> dict:
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(sample_shape, jnp.float32), *extra))["params"]


def load_vae(folder: str, dtype=jnp.float32) -> tuple[FlaxAutoencoderKL, dict, float]:
    """(module, params, latent scale) of the AutoencoderKL in `folder` (a checkpoint's vae/: config.json, weights)."""

    def vae_shapes(vae):
        return _abstract_params(vae, (1, vae.in_channels, vae.sample_size, vae.sample_size))

    vae, params = _load_diffusers_model(folder, FlaxAutoencoderKL, vae_shapes, dtype)
    return vae, params, float(FlaxAutoencoderKL.load_config(folder).get("scaling_factor", SD_LATENT_SCALE))


def _load_diffusers_model(folder: str, cls, abstract_fn, dtype):
    """(module, params) of a diffusers Flax model from Flax msgpack or PyTorch safetensors weights."""
    model = cls.from_config(cls.load_config(folder), dtype=dtype)
    if os.path.isfile(os.path.join(folder, _FLAX_WEIGHTS)):
        _, params = cls.from_pretrained(folder, dtype=dtype)
        return model, params
    weights = os.path.join(folder, _PT_WEIGHTS)
    if not os.path.isfile(weights):
        raise CheckpointError(f"{folder} has neither {_FLAX_WEIGHTS} nor {_PT_WEIGHTS}; download the full checkpoint.")
    from safetensors.numpy import load_file

    return model, convert_pytorch_weights(load_file(weights), abstract_fn(model), weights)


def resolve_checkpoint(path_or_repo: str, revision: str | None = None, parts: Sequence[str] = _PARTS,
                       patterns: Sequence[str] = tuple(_HUB_PATTERNS)) -> str:
    """A local folder as is; otherwise a hub repo id, its files matching `patterns` (weights, configs, tokenizer
    files) downloaded to the hub cache. parts: the checkpoint's sub-folders, named in the error for a bad path."""
    if os.path.isdir(path_or_repo):
        return path_or_repo
    if os.path.exists(path_or_repo) or path_or_repo.startswith((".", "/")):
        raise CheckpointError(f"{path_or_repo} is not a checkpoint folder ({', '.join(p + '/' for p in parts)}).")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path_or_repo, revision=revision, allow_patterns=list(patterns))
    except Exception as e:  # noqa: BLE001 - the hub raises many types (offline, not found, gated)
        raise CheckpointError(
            f"cannot fetch {path_or_repo!r} from the Hugging Face hub ({type(e).__name__}); "
            "pass a local folder in diffusers' layout instead."
        ) from e


def load_stable_diffusion(path_or_repo: str, *, dtype=jnp.float32, revision: str | None = None) -> StableDiffusion:
    """Loads a Stable Diffusion v1.x checkpoint in diffusers' layout (see the module docstring)."""
    root = resolve_checkpoint(path_or_repo, revision)
    for part in _PARTS:
        if not os.path.isdir(os.path.join(root, part)):
            raise CheckpointError(f"{root} has no {part}/ folder; a Stable Diffusion checkpoint in diffusers' layout has one.")

    def unet_shapes(unet):
        side = unet.sample_size
        context = jnp.zeros((1, 1, unet.cross_attention_dim), jnp.float32)
        return _abstract_params(unet, (1, unet.in_channels, side, side), jnp.ones((1,), jnp.int32), context)

    vae, vae_params, latent_scale = load_vae(os.path.join(root, "vae"), dtype)
    unet, unet_params = _load_diffusers_model(os.path.join(root, "unet"), FlaxUNet2DConditionModel, unet_shapes, dtype)
    text_encoder = FlaxCLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=dtype)
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer")
    # SD v1.x ships a PNDM config; its schedule fields (scaled_linear betas, steps_offset 1) drive DDIM here.
    scheduler_config = FlaxDDIMScheduler.load_config(root, subfolder="scheduler")
    scheduler = FlaxDDIMScheduler.from_config(scheduler_config, clip_sample=False, set_alpha_to_one=False)
    return StableDiffusion(
        vae=vae, vae_params=vae_params, unet=unet, unet_params=unet_params,
        text_encoder=text_encoder, text_params=text_encoder.params, tokenizer=tokenizer,
        scheduler=scheduler, latent_scale=latent_scale,
    )
