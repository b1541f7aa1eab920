"""Tiny random checkpoints in the real file formats, for smoke runs and tests without pretrained weights.

    write_tiny_stable_diffusion(folder)   a Stable Diffusion v1.x folder in diffusers' layout:
                                          vae/, unet/, text_encoder/ as PyTorch safetensors
                                          (PyTorch names and layouts, made without torch),
                                          tokenizer/ (CLIP BPE files), scheduler/
    write_tiny_dit(folder)                a DiT folder in diffusers' layout: transformer/ (DiTTransformer2DModel's
                                          names and layouts), vae/, scheduler/ (DiT's linear schedule)
    write_tiny_torchvision_resnet(path)   a torchvision ResNet state dict as .safetensors

They are read back by the same code that reads the real checkpoints
(pqdjax.models.stable_diffusion.load_stable_diffusion,
pqdjax.models.dit_diffusion.load_dit,
pqdjax.models.convert_torchvision.load_torchvision_resnet), so a run on them
exercises the real loading and conversion paths. The tiny VAE downsamples by 2
(two blocks), not 8 as Stable Diffusion's does.
"""

from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict

TINY_VAE_CONFIG = dict(
    _class_name="AutoencoderKL", in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[32, 32], layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=8,
    act_fn="silu", scaling_factor=0.18215,
)
TINY_UNET_CONFIG = dict(
    _class_name="UNet2DConditionModel", sample_size=8, in_channels=4, out_channels=4,
    # one level: the mid block's cross-attention carries the text
    down_block_types=["DownBlock2D"], up_block_types=["UpBlock2D"],
    block_out_channels=[32], layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
)
TINY_TEXT_CONFIG = dict(
    architectures=["CLIPTextModel"], model_type="clip_text_model", vocab_size=None, hidden_size=32, intermediate_size=37,
    num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    projection_dim=32, hidden_act="quick_gelu",
)
# Stable Diffusion v1.x's scheduler config (a PNDM config whose schedule fields drive DDIM).
SD_SCHEDULER_CONFIG = dict(
    _class_name="PNDMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)
# A DiT-XL/2 shrunk: 2 blocks of width 16 over 8 x 8 latents (the tiny VAE's, at 16 px); 1,000 classes + null.
TINY_DIT_CONFIG = dict(
    _class_name="DiTTransformer2DModel", num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
    num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero",
    activation_fn="gelu-approximate", norm_elementwise_affine=False, norm_eps=1e-5, attention_bias=True,
)
# DiT's schedule (the DiT release's: 1,000 linear betas from 1e-4 to 0.02), as a DDIM config.
DIT_SCHEDULER_CONFIG = dict(
    _class_name="DDIMScheduler", beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000,
    clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="epsilon",
)
# PyTorch module-list indices look like flax's '_N' suffixes; these flax names are real names in PyTorch too.
_KEEP = {"linear_1", "linear_2"}
_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def random_params(shapes, seed: int = 0) -> dict:
    """Random weights for a tree of ShapeDtypeStructs, drawn in numpy (no XLA compilation of an init function).

    Kernels ~ N(0, 1 / fan_in) (fan_in: all but the last axis), embeddings ~ N(0, 0.02^2),
    norm scales and BatchNorm variances 1, biases and means 0: activations stay of order 1.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name, shape = path[-1].key if hasattr(path[-1], "key") else str(path[-1]), tuple(leaf.shape)
        if name in ("scale", "var"):
            return np.ones(shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(shape, np.float32)
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(max(1, int(np.prod(shape[:-1]))))).astype(np.float32)
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def flax_to_pytorch_names(params) -> dict[str, np.ndarray]:
    """A diffusers / transformers Flax params tree -> PyTorch state dict names and layouts (conv OIHW, linear [out, in])."""
    out = {}
    for path, value in flatten_dict(jax.device_get(params)).items():
        *modules, leaf = path
        names = []
        for m in modules:
            m = _ATTENTION.get(m, m)
            names.append(m if m in _KEEP or m.isdigit() else re.sub(r"_(\d+)$", r".\1", m))
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        name = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(leaf, leaf)
        out[".".join(names + [name])] = np.ascontiguousarray(value)
    return out


def write_clip_tokenizer(folder: str) -> int:
    """A CLIP BPE tokenizer in `folder` (the byte-level vocabulary and a few merges); returns its vocab size.

    Every text tokenizes (into byte-level pieces where no merge applies).
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    os.makedirs(folder, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars] + ["ba", "bag</w>", "sh", "shirt</w>"]:
        vocab.setdefault(token, len(vocab))
    _write_json(os.path.join(folder, "vocab.json"), vocab)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\nb a\nba g</w>\ns h\nsh irt</w>\n")
    _write_json(os.path.join(folder, "tokenizer_config.json"), {"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    return len(vocab)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def write_tiny_stable_diffusion(folder: str, seed: int = 0) -> dict:
    """Writes a tiny random Stable Diffusion checkpoint into `folder`; returns the Flax params it was made from.

    Returns {'vae': ..., 'unet': ..., 'text_encoder': ...} (Flax params trees).
    """
    from diffusers import FlaxUNet2DConditionModel
    from safetensors.numpy import save_file
    from transformers import CLIPTextConfig, FlaxCLIPTextModel

    vocab_size = write_clip_tokenizer(os.path.join(folder, "tokenizer"))
    unet = FlaxUNet2DConditionModel.from_config(TINY_UNET_CONFIG)
    text_config = CLIPTextConfig(**{**TINY_TEXT_CONFIG, "vocab_size": vocab_size})
    shapes = {
        "unet": jax.eval_shape(lambda: unet.init(jax.random.key(0), jnp.zeros((1, 4, 4, 4)), jnp.ones((1,), jnp.int32), jnp.zeros((1, 1, 32)))["params"]),
        "text_encoder": FlaxCLIPTextModel(text_config, _do_init=False).params_shape_tree,
    }
    params = {"vae": _write_tiny_vae(os.path.join(folder, "vae"), seed)}
    params.update({part: random_params(tree, seed + i) for i, (part, tree) in enumerate(shapes.items(), 1)})
    _write_json(os.path.join(folder, "unet", "config.json"), TINY_UNET_CONFIG)
    save_file(flax_to_pytorch_names(params["unet"]), os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    os.makedirs(os.path.join(folder, "text_encoder"), exist_ok=True)
    text_config.to_json_file(os.path.join(folder, "text_encoder", "config.json"))
    save_file(flax_to_pytorch_names(params["text_encoder"]), os.path.join(folder, "text_encoder", "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), SD_SCHEDULER_CONFIG)
    _write_json(os.path.join(folder, "model_index.json"), {"_class_name": "StableDiffusionPipeline"})
    return params


def _write_tiny_vae(folder: str, seed: int) -> dict:
    from diffusers import FlaxAutoencoderKL
    from safetensors.numpy import save_file

    vae = FlaxAutoencoderKL.from_config({k: v for k, v in TINY_VAE_CONFIG.items() if k not in ("act_fn", "scaling_factor")})
    params = random_params(jax.eval_shape(lambda: vae.init(jax.random.key(0), jnp.zeros((1, 3, 8, 8)))["params"]), seed)
    _write_json(os.path.join(folder, "config.json"), TINY_VAE_CONFIG)
    save_file(flax_to_pytorch_names(params), os.path.join(folder, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    return params


def write_tiny_dit(folder: str, seed: int = 0) -> dict:
    """Writes a tiny random DiT checkpoint into `folder`; returns {'vae': ..., 'transformer': ...} (Flax params)."""
    from safetensors.numpy import save_file

    from pqdjax.models import dit

    transformer = dit.from_config(TINY_DIT_CONFIG)
    params = {"vae": _write_tiny_vae(os.path.join(folder, "vae"), seed),
              "transformer": random_params(transformer.abstract_params(), seed + 1)}
    _write_json(os.path.join(folder, "transformer", "config.json"), TINY_DIT_CONFIG)
    save_file(dit.flax_to_pytorch_weights(params["transformer"]),
              os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"), DIT_SCHEDULER_CONFIG)
    _write_json(os.path.join(folder, "model_index.json"), {"_class_name": "DiTPipeline"})
    return params


def resnet_to_torchvision(variables) -> dict[str, np.ndarray]:
    """Flax ResNet variables {'params', 'batch_stats'} -> a torchvision state dict (the inverse of convert_torchvision)."""
    out = {}
    for (collection, *modules, leaf), value in flatten_dict(jax.device_get(variables)).items():
        names = []
        for m in modules:
            if m == "downsample_conv":
                names.append("downsample.0")
            elif m == "downsample_bn":
                names.append("downsample.1")
            else:
                names.append(re.sub(r"^(layer\d+)_(\d+)$", r"\1.\2", m))
        value = np.asarray(value, np.float32)
        if value.ndim == 4:  # conv [kh, kw, I, O] -> [O, I, kh, kw]
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:  # linear [in, out] -> [out, in]
            value = value.T
        is_norm = modules[-1].startswith("bn") or modules[-1] == "downsample_bn"
        if collection == "batch_stats":
            leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
        elif is_norm or leaf == "kernel":
            leaf = {"scale": "weight", "kernel": "weight"}.get(leaf, leaf)
        out[".".join(names + [leaf])] = np.ascontiguousarray(value)
        if collection == "batch_stats" and leaf == "running_mean":
            out[".".join(names + ["num_batches_tracked"])] = np.zeros((), np.int64)
    return out


def write_tiny_torchvision_resnet(path: str, model, seed: int = 0, image_size: int = 32) -> dict:
    """Writes random weights of the flax ResNet `model` as a torchvision state dict (.safetensors); returns the variables."""
    from safetensors.numpy import save_file

    variables = random_params(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))), seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(resnet_to_torchvision(variables), path)
    return variables
