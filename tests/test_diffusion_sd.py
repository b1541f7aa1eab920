"""A tiny random Stable Diffusion checkpoint in diffusers' layout, written here as PyTorch safetensors
(names and layouts of PyTorch, made without torch), loads through pqdjax.models.stable_diffusion."""

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from pqdjax.models import stable_diffusion as sd_lib
from pqdjax.models.tiny_checkpoints import flax_to_pytorch_names, write_tiny_stable_diffusion


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Writes the checkpoint; returns (folder, the Flax params it was made from)."""
    root = str(tmp_path_factory.mktemp("sd"))
    return root, write_tiny_stable_diffusion(root)


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


def test_text_path_equals_pytorch_clip_and_the_shared_sampler(checkpoint, loaded):
    """The text path of Stable Diffusion's img2img: text_context equals transformers' PyTorch CLIPTextModel read
    from the same checkpoint folder; img2img is the shared sampler with the prompts' encodings as the conditional
    context and the negative prompt's as the unconditional one; the negative prompt matters."""
    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    from pqdjax.diffusion import img2img

    root, _ = checkpoint
    prompts, negative = ["bag", "ankle boot"], "cartoon, anime, painting"
    tokenizer = CLIPTokenizer.from_pretrained(f"{root}/tokenizer")
    reference = CLIPTextModel.from_pretrained(f"{root}/text_encoder").eval()
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        want = reference(ids).last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(loaded.text_context(prompts)), want, rtol=1e-4, atol=1e-4)

    latents = jax.random.normal(jax.random.key(5), (2, 4, 4, 4))
    settings = dict(strength=0.7, guidance=8.0, steps=3)
    got = loaded.img2img(latents, prompts, jax.random.key(6), negative_prompt=negative, **settings)
    direct = img2img(loaded.epsilon, loaded.scheduler, loaded.unet_params, latents, loaded.text_context(prompts),
                     loaded.text_context([negative] * 2), jax.random.key(6), **settings)
    np.testing.assert_allclose(np.asarray(got), np.asarray(direct), rtol=1e-5, atol=1e-5)
    swapped = img2img(loaded.epsilon, loaded.scheduler, loaded.unet_params, latents, loaded.text_context([negative] * 2),
                      loaded.text_context(prompts), jax.random.key(6), **settings)
    assert np.abs(np.asarray(got - swapped)).max() > 1e-3  # cond and uncond are not interchangeable
    other = loaded.img2img(latents, prompts, jax.random.key(6), negative_prompt="photo", **settings)
    assert np.abs(np.asarray(got - other)).max() > 1e-3  # the negative prompt reaches the sampler


def test_incomplete_checkpoints_are_refused(checkpoint, tmp_path):
    root, params = checkpoint
    with pytest.raises(sd_lib.CheckpointError, match="no vae/ folder"):
        sd_lib.load_stable_diffusion(str(tmp_path))
    state = flax_to_pytorch_names(params["unet"])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params["unet"])
    dropped = dict(list(state.items())[1:])
    with pytest.raises(sd_lib.CheckpointError, match="missing"):
        sd_lib.convert_pytorch_weights(dropped, abstract, "unet")
    wrong = {**state, "conv_in.weight": state["conv_in.weight"][:, :2]}
    with pytest.raises(sd_lib.CheckpointError, match="shape"):
        sd_lib.convert_pytorch_weights(wrong, abstract, "unet")


def test_converted_unet_and_vae_equal_diffusers_pytorch_models(checkpoint, tmp_path):
    """The outside reference: diffusers' own PyTorch UNet and VAE, saved by torch's save_pretrained into a checkpoint
    read by load_stable_diffusion; the Flax forward passes equal the PyTorch ones to 1e-4."""
    import shutil

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from pqdjax.models.tiny_checkpoints import TINY_UNET_CONFIG, TINY_VAE_CONFIG

    root = tmp_path / "sd"
    shutil.copytree(checkpoint[0], root)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{k: v for k, v in TINY_UNET_CONFIG.items() if k != "_class_name"}).eval()
    vae = AutoencoderKL(**{k: v for k, v in TINY_VAE_CONFIG.items() if k != "_class_name"}).eval()
    with torch.no_grad():  # off the initialisation (zero output convs, unit norms): every weight matters
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    for name, model in (("unet", unet), ("vae", vae)):
        shutil.rmtree(root / name)
        model.save_pretrained(str(root / name), safe_serialization=True)
    loaded = sd_lib.load_stable_diffusion(str(root))

    rng = np.random.default_rng(0)
    latents, context = rng.standard_normal((2, 4, 4, 4)).astype(np.float32), rng.standard_normal((2, 77, 32)).astype(np.float32)
    timesteps = np.array([10, 900])
    with torch.no_grad():
        want = unet(torch.from_numpy(latents.transpose(0, 3, 1, 2)), torch.from_numpy(timesteps),
                    torch.from_numpy(context)).sample.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(loaded.epsilon(loaded.unet_params, latents, jax.numpy.asarray(timesteps), context))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)

    images = rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    with torch.no_grad():
        mean = vae.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent_dist.mean.numpy().transpose(0, 2, 3, 1)
        decoded = vae.decode(torch.from_numpy(mean.transpose(0, 3, 1, 2))).sample.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(loaded.encode_images(images)), mean * loaded.latent_scale, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(loaded.decode_latents(mean * loaded.latent_scale)), decoded, atol=1e-4, rtol=1e-4)
    assert np.abs(want).max() > 0.1 and np.abs(decoded).max() > 0.1
