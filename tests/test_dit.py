"""DiT in Flax (pqdjax.models.dit) against diffusers' PyTorch DiTTransformer2DModel, its checkpoint loader, and the
DiT pushforward (pqdjax.models.dit_diffusion, pqdjax.diffusion)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from pqdjax.diffusion import guided_epsilon, img2img, sample_from
from pqdjax.models import dit, dit_diffusion
from pqdjax.models.tiny_checkpoints import TINY_DIT_CONFIG, write_tiny_dit

# Smaller than the tiny checkpoint's and with few classes, so the reference model builds in milliseconds.
REFERENCE_CONFIG = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                        sample_size=8, patch_size=2, num_embeds_ada_norm=10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dit"))
    return root, write_tiny_dit(root)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return dit_diffusion.load_dit(checkpoint[0])


def test_flax_forward_equals_diffusers_pytorch_dit(tmp_path):
    """Weights written by torch's own state_dict, read by the real loader; the forward of both to 1e-4."""
    import torch
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    reference = DiTTransformer2DModel(**REFERENCE_CONFIG).eval()
    with torch.no_grad():  # adaLN-Zero and the output layer start at zero: move every weight off its init
        for p in reference.parameters():
            p.add_(0.2 * torch.randn_like(p))
    folder = tmp_path / "transformer"
    reference.save_pretrained(str(folder), safe_serialization=True)
    assert sorted(os.listdir(folder)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    model, params = dit_diffusion.load_transformer(str(folder))

    rng = np.random.default_rng(0)
    latents = rng.standard_normal((4, 8, 8, 4)).astype(np.float32)
    timesteps, labels = np.array([0, 1, 500, 999]), np.array([0, 3, 9, 10])  # 10: the null class
    with torch.no_grad():
        want = reference(torch.from_numpy(latents.transpose(0, 3, 1, 2)), timestep=torch.from_numpy(timesteps),
                         class_labels=torch.from_numpy(labels)).sample.numpy().transpose(0, 2, 3, 1)
    got = np.asarray(model.apply({"params": params}, latents, timesteps, labels))
    assert got.shape == (4, 8, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert np.abs(want).max() > 0.5  # a forward that does something


def test_the_dit_xl_2_parameter_layout_is_diffusers():
    """DiT-XL/2 at full size, no weights: every tensor name and shape of DiTTransformer2DModel's default config (the
    facebook/DiT-XL-2-256 checkpoint's) is a parameter of the Flax DiT's default config, and nothing else."""
    import torch
    from diffusers import DiTTransformer2DModel

    with torch.device("meta"):  # shapes only
        reference = DiTTransformer2DModel()
    want = {name: tuple(t.shape) for name, t in reference.state_dict().items()}
    have = {dit.torch_name(path): dit.torch_shape(leaf.shape, path[-1]) for path, leaf in flatten_dict(dit.DiT().abstract_params()).items()}
    assert have == want
    assert sum(int(np.prod(s)) for s in have.values()) == 749_808_016  # DiT-XL/2's 675M plus 27 duplicated embedders


def test_position_embedding_and_timestep_features_closed_form():
    """Token (row r, column c): the first half encodes c, the second r, each as [sin(p w_k), cos(p w_k)] with
    w_k = 10000^(-k / (D/4)); timestep features [cos(t f_k), sin(t f_k)], f_k = 10000^(-k / (128 - 1))."""
    emb = dit.position_embedding(8, 3, 3, base_size=3)
    omega = 10000.0 ** (-np.arange(2) / 2.0)
    for r in range(3):
        for c in range(3):
            want = np.concatenate([np.sin(c * omega), np.cos(c * omega), np.sin(r * omega), np.cos(r * omega)])
            np.testing.assert_allclose(emb[3 * r + c], want, atol=1e-6)
    t = np.array([7.0])
    freqs = 10000.0 ** (-np.arange(128) / 127.0)
    np.testing.assert_allclose(np.asarray(dit.timestep_features(t))[0], np.concatenate([np.cos(7 * freqs), np.sin(7 * freqs)]),
                               atol=1e-4)


def test_loaded_weights_equal_the_written_ones_and_the_schedule_is_dits(checkpoint, loaded):
    _, params = checkpoint
    want, have = flatten_dict(jax.device_get(params["transformer"])), flatten_dict(jax.device_get(loaded.transformer_params))
    assert want.keys() == have.keys()
    for key in want:
        np.testing.assert_array_equal(np.asarray(have[key]), np.asarray(want[key]), err_msg=str(key))
    betas = np.asarray(loaded.scheduler.create_state().common.betas)
    np.testing.assert_allclose(betas, np.linspace(1e-4, 0.02, 1000), rtol=1e-5)
    assert loaded.transformer.num_embeds_ada_norm == loaded.null_class == 1000 and loaded.latent_scale == pytest.approx(0.18215)


def test_guidance_one_is_the_conditional_prediction(loaded):
    latents = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
    cond, uncond = loaded.guidance_contexts([1, 2, 999], ["a", "b", "c"], "")
    np.testing.assert_array_equal(np.asarray(uncond), [1000] * 3)
    t = jnp.asarray(400)
    guided = guided_epsilon(loaded.epsilon, loaded.denoiser_params, latents, t, cond, uncond, 1.0)
    conditional = loaded.epsilon(loaded.denoiser_params, latents, jnp.full((3,), 400), cond)
    np.testing.assert_allclose(np.asarray(guided), np.asarray(conditional), atol=1e-5)
    unconditional = loaded.epsilon(loaded.denoiser_params, latents, jnp.full((3,), 400), uncond)
    assert np.abs(np.asarray(conditional - unconditional)).max() > 1e-3  # the class reaches the prediction
    with pytest.raises(ValueError, match="class labels"):
        loaded.guidance_contexts([1000], ["x"], "")


def test_strength_zero_is_the_identity_and_initial_latent_is_strength_one_from_that_latent(loaded):
    latents = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    cond, uncond = loaded.guidance_contexts([5, 6], ["", ""], "")
    params, rng = loaded.denoiser_params, jax.random.key(2)
    same = img2img(loaded.epsilon, loaded.scheduler, params, latents, cond, uncond, rng, strength=0.0, guidance=4.0, steps=5)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(latents))
    # strength 1 starts from N(0, I) drawn from rng (init_noise_sigma 1 for DDIM): sample_from that very noise agrees
    noise = jax.random.normal(rng, latents.shape)
    full = img2img(loaded.epsilon, loaded.scheduler, params, latents, cond, uncond, rng, strength=1.0, guidance=4.0, steps=5)
    from_noise = sample_from(loaded.epsilon, loaded.scheduler, params, noise, cond, uncond, guidance=4.0, steps=5)
    np.testing.assert_allclose(np.asarray(full), np.asarray(from_noise), atol=1e-5)
    assert np.abs(np.asarray(full - latents)).max() > 0.1 and np.all(np.isfinite(np.asarray(full)))


def test_a_missing_extra_or_misshapen_tensor_is_named(checkpoint, tmp_path):
    from safetensors.numpy import load_file

    root, _ = checkpoint
    state = load_file(os.path.join(root, "transformer", "diffusion_pytorch_model.safetensors"))
    model = dit.from_config(TINY_DIT_CONFIG)
    name = "transformer_blocks.1.attn1.to_k.weight"
    with pytest.raises(dit.CheckpointError, match=f"tensor '{name}' is missing"):
        dit.convert_pytorch_weights({k: v for k, v in state.items() if k != name}, model, "w")
    with pytest.raises(dit.CheckpointError, match=rf"tensor '{name}' has shape \(16, 8\), the DiT in its config.json needs \(16, 16\)"):
        dit.convert_pytorch_weights({**state, name: state[name][:, :8]}, model, "w")
    with pytest.raises(dit.CheckpointError, match="tensor 'pos_embed.pos_embed' matches no parameter"):
        dit.convert_pytorch_weights({**state, "pos_embed.pos_embed": np.zeros((1, 16, 16), np.float32)}, model, "w")
    with pytest.raises(dit.CheckpointError, match="no transformer/ folder"):
        dit_diffusion.load_dit(str(tmp_path))
    with open(os.path.join(root, "transformer", "config.json")) as f:
        config = json.load(f)
    with pytest.raises(dit.CheckpointError, match="norm_type"):
        dit.from_config({**config, "norm_type": "ada_norm_single"})


def test_guided_sampling_equals_diffusers_dit_pipeline_loop(loaded, checkpoint):
    """The reverse process from given latents with class-label guidance: our JAX sampler (Flax DDIM on DiT's schedule)
    against DiTPipeline's loop run in torch (its DDIMScheduler, its guidance on the first in_channels, learned sigma
    dropped) on the same weights and initial latents."""
    import torch
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    root, _ = checkpoint
    transformer = DiTTransformer2DModel.from_pretrained(os.path.join(root, "transformer")).eval()
    scheduler = DDIMScheduler.from_pretrained(root, subfolder="scheduler")
    steps, guidance, labels = 5, 4.0, [3, 998]
    initial = np.asarray(jax.random.normal(jax.random.key(7), (2, 8, 8, 4)))

    scheduler.set_timesteps(steps)
    x = torch.from_numpy(initial.transpose(0, 3, 1, 2).copy())
    model_input = torch.cat([x, x])
    class_input = torch.tensor(labels + [1000, 1000])
    with torch.no_grad():
        for t in scheduler.timesteps:  # diffusers' DiTPipeline.__call__, guidance_scale > 1
            half = model_input[: len(model_input) // 2]
            model_input = scheduler.scale_model_input(torch.cat([half, half]), t)
            noise_pred = transformer(model_input, timestep=t.expand(model_input.shape[0]), class_labels=class_input).sample
            eps, rest = noise_pred[:, :4], noise_pred[:, 4:]
            cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
            half_eps = uncond_eps + guidance * (cond_eps - uncond_eps)
            model_output, _ = torch.split(torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1), 4, dim=1)
            model_input = scheduler.step(model_output, t, model_input).prev_sample
    want = model_input[:2].numpy().transpose(0, 2, 3, 1)

    cond, uncond = loaded.guidance_contexts(labels, [], "")
    got = np.asarray(sample_from(loaded.epsilon, loaded.scheduler, loaded.denoiser_params, jnp.asarray(initial), cond, uncond,
                                 guidance=guidance, steps=steps))
    # float32 agreement relative to the scale: the random tiny DiT drives the latents to tens, where float32 rounding
    # over 5 steps of two implementations leaves differences of a few 1e-4 (about 1e-5 of the largest value)
    assert np.abs(got - want).max() <= 2e-5 * np.abs(want).max()
    assert np.abs(want - initial).max() > 0.1
