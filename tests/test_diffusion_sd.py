"""A tiny random Stable Diffusion checkpoint in diffusers' layout, written here as PyTorch safetensors
(names and layouts of PyTorch, made without torch), loads through pqdjax.models.stable_diffusion."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import save_file

from pqdjax.models import stable_diffusion as sd_lib

VAE_CONFIG = dict(
    _class_name="AutoencoderKL", in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"], up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
    block_out_channels=[32, 32], layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=8,
    act_fn="silu", scaling_factor=0.18215,
)
UNET_CONFIG = dict(
    _class_name="UNet2DConditionModel", sample_size=8, in_channels=4, out_channels=4,
    # one level: the mid block's cross-attention carries the text
    down_block_types=["DownBlock2D"], up_block_types=["UpBlock2D"],
    block_out_channels=[32], layers_per_block=1, attention_head_dim=8, cross_attention_dim=32,
)
TEXT_CONFIG = dict(
    architectures=["CLIPTextModel"], model_type="clip_text_model", vocab_size=None, hidden_size=32, intermediate_size=37,
    num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    projection_dim=32, hidden_act="quick_gelu",
)
SCHEDULER_CONFIG = dict(
    _class_name="PNDMScheduler", beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False,
)
# PyTorch module-list indices look like flax's '_N' suffixes; these flax names are real names in PyTorch too.
_KEEP = {"linear_1", "linear_2"}
_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _to_pytorch(params) -> dict[str, np.ndarray]:
    """A Flax params tree -> PyTorch state dict names and layouts (conv OIHW, linear [out, in])."""
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


def _write_tokenizer(folder):
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    os.makedirs(folder)
    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars] + ["ba", "bag</w>", "sh", "shirt</w>"]:
        vocab.setdefault(token, len(vocab))
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\nb a\nba g</w>\ns h\nsh irt</w>\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}, f)
    return len(vocab)


def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Writes the checkpoint; returns (folder, the Flax params it was made from)."""
    from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel
    from transformers import CLIPTextConfig, FlaxCLIPTextModel

    root = str(tmp_path_factory.mktemp("sd"))
    vocab_size = _write_tokenizer(os.path.join(root, "tokenizer"))
    vae = FlaxAutoencoderKL.from_config({k: v for k, v in VAE_CONFIG.items() if k not in ("act_fn", "scaling_factor")})
    unet = FlaxUNet2DConditionModel.from_config(UNET_CONFIG)
    params = {
        "vae": jax.jit(lambda k: vae.init(k, jnp.zeros((1, 3, 8, 8)))["params"])(jax.random.key(0)),
        "unet": jax.jit(lambda k: unet.init(k, jnp.zeros((1, 4, 4, 4)), jnp.ones((1,), jnp.int32), jnp.zeros((1, 1, 32)))["params"])(jax.random.key(1)),
    }
    text_config = CLIPTextConfig(**{**TEXT_CONFIG, "vocab_size": vocab_size})
    text = FlaxCLIPTextModel(text_config, seed=2)
    params["text_encoder"] = text.params
    for part, config, weights in (("vae", VAE_CONFIG, "diffusion_pytorch_model.safetensors"), ("unet", UNET_CONFIG, "diffusion_pytorch_model.safetensors")):
        _write_json(os.path.join(root, part, "config.json"), config)
        save_file(_to_pytorch(params[part]), os.path.join(root, part, weights), metadata={"format": "pt"})
    os.makedirs(os.path.join(root, "text_encoder"))
    text_config.to_json_file(os.path.join(root, "text_encoder", "config.json"))
    save_file(_to_pytorch(params["text_encoder"]), os.path.join(root, "text_encoder", "model.safetensors"), metadata={"format": "pt"})
    _write_json(os.path.join(root, "scheduler", "scheduler_config.json"), SCHEDULER_CONFIG)
    _write_json(os.path.join(root, "model_index.json"), {"_class_name": "StableDiffusionPipeline"})
    return root, params


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return sd_lib.load_stable_diffusion(checkpoint[0])


def test_loaded_weights_equal_the_written_ones(checkpoint, loaded):
    _, params = checkpoint
    for part, got in (("vae", loaded.vae_params), ("unet", loaded.unet_params), ("text_encoder", loaded.text_params)):
        want, have = flatten_dict(jax.device_get(params[part])), flatten_dict(jax.device_get(got))
        assert want.keys() == have.keys(), part
        for key in want:
            np.testing.assert_array_equal(np.asarray(have[key]), np.asarray(want[key]), err_msg=f"{part} {key}")
    assert loaded.latent_scale == pytest.approx(0.18215)
    assert loaded.scheduler.config.beta_schedule == "scaled_linear" and loaded.scheduler.config.steps_offset == 1


def test_img2img_gives_finite_images_of_the_right_shape(loaded):
    images = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3), minval=-1, maxval=1)
    latents = loaded.encode_images(images)
    assert latents.shape == (2, 4, 4, 4)
    context = loaded.text_context(["bag", "shirt"])
    assert context.shape == (2, 77, 32)
    assert np.abs(np.asarray(context[0] - context[1])).max() > 0  # the prompt reaches the context
    out = loaded.img2img(latents, ["bag", "shirt"], jax.random.key(4), strength=0.7, guidance=8.0, steps=3,
                         negative_prompt="cartoon, anime, painting")
    decoded = loaded.decode_latents(out)
    assert decoded.shape == (2, 8, 8, 3) and np.all(np.isfinite(decoded))
    np.testing.assert_array_equal(np.asarray(loaded.img2img(latents, ["bag", "shirt"], jax.random.key(4), strength=0.0, steps=4)), np.asarray(latents))


def test_incomplete_checkpoints_are_refused(checkpoint, tmp_path):
    root, params = checkpoint
    with pytest.raises(sd_lib.CheckpointError, match="no vae/ folder"):
        sd_lib.load_stable_diffusion(str(tmp_path))
    state = _to_pytorch(params["unet"])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params["unet"])
    dropped = dict(list(state.items())[1:])
    with pytest.raises(sd_lib.CheckpointError, match="missing"):
        sd_lib.convert_pytorch_weights(dropped, abstract, "unet")
    wrong = {**state, "conv_in.weight": state["conv_in.weight"][:, :2]}
    with pytest.raises(sd_lib.CheckpointError, match="shape"):
        sd_lib.convert_pytorch_weights(wrong, abstract, "unet")
