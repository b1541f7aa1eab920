"""The latent img2img sampler and the class-conditioned denoiser, against a DDIM written out here."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pqdjax.diffusion import guided_epsilon, img2img, start_index
from pqdjax.models import silence_diffusers_deprecation
from pqdjax.models.denoiser import make_denoiser

STEPS = 5
# Stable Diffusion's scaled-linear schedule, written out: betas linear in sqrt between 0.00085 and 0.012.
SD_BETAS = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), 1000, dtype=np.float64) ** 2


@pytest.fixture(scope="module")
def denoiser():
    silence_diffusers_deprecation()
    config = ml_collections.ConfigDict(dict(
        block_out_channels=(32,), layers_per_block=1, attention_head_dim=8, context_dim=32,
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
    ))
    model = make_denoiser(config, (7, 7, 4), num_classes=3)
    params = model.init_params(jax.random.key(0))
    # Random init leaves the UNet's output conv at zero; perturb every weight so predictions depend on all inputs.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    latents = jax.random.normal(jax.random.key(2), (4, 7, 7, 4))
    labels = jnp.array([0, 1, 2, 1])
    cond = model.class_context(params, labels)
    uncond = model.class_context(params, jnp.full(4, model.null_class))
    return model, params, latents, cond, uncond


def _sample(denoiser, rng, strength, guidance=3.0, latents=None):
    model, params, z, cond, uncond = denoiser
    z = z if latents is None else latents
    return img2img(model.epsilon, model.ddim_scheduler, params, z, cond, uncond, rng, strength=strength, guidance=guidance, steps=STEPS)


def test_strength_zero_is_the_identity(denoiser):
    z = denoiser[2]
    np.testing.assert_array_equal(np.asarray(_sample(denoiser, jax.random.key(3), 0.0)), np.asarray(z))
    assert start_index(STEPS, 0.0) == STEPS and start_index(STEPS, 1.0) == 0


def test_same_key_same_result_other_key_other_result(denoiser):
    a = _sample(denoiser, jax.random.key(3), 0.6)
    b = _sample(denoiser, jax.random.key(3), 0.6)
    c = _sample(denoiser, jax.random.key(4), 0.6)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.isfinite(a)) and np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_strength_one_starts_from_pure_noise(denoiser):
    z = denoiser[2]
    a = _sample(denoiser, jax.random.key(3), 1.0)
    b = _sample(denoiser, jax.random.key(3), 1.0, latents=z + 5.0)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # while a partial strength keeps some of the input
    assert np.abs(np.asarray(_sample(denoiser, jax.random.key(3), 0.6, latents=z + 5.0)) - np.asarray(_sample(denoiser, jax.random.key(3), 0.6))).min() > 0.1


def _reference_ddim(model, params, z, context, rng, strength, steps):
    """DDIM (eta 0) from its closed form, conditional prediction only: the oracle for guidance 1."""
    alphas_cumprod = np.cumprod(1.0 - SD_BETAS)
    timesteps = (np.arange(steps) * (1000 // steps))[::-1] + 1  # steps_offset 1
    first = steps - int(round(steps * strength))
    noise = np.asarray(jax.random.normal(rng, z.shape, z.dtype), np.float64)
    a = alphas_cumprod[timesteps[first]]
    x = np.sqrt(a) * np.asarray(z, np.float64) + np.sqrt(1 - a) * noise
    for t in timesteps[first:]:
        eps = np.asarray(model.epsilon(params, jnp.asarray(x, jnp.float32), jnp.full(len(z), t, jnp.int32), context), np.float64)
        prev = t - 1000 // steps
        a_t = alphas_cumprod[t]
        a_prev = alphas_cumprod[prev] if prev >= 0 else alphas_cumprod[0]  # set_alpha_to_one False
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return x


def test_guidance_one_is_the_conditional_sampler(denoiser):
    model, params, z, cond, uncond = denoiser
    rng = jax.random.key(5)
    guided = _sample(denoiser, rng, 0.6, guidance=1.0)
    reference = _reference_ddim(model, params, z, cond, rng, 0.6, STEPS)
    np.testing.assert_allclose(np.asarray(guided), reference, rtol=1e-3, atol=1e-3)
    # and guidance really changes the result
    assert np.abs(np.asarray(_sample(denoiser, rng, 0.6, guidance=4.0)) - reference).max() > 1e-2


def test_guided_epsilon_combines_the_two_predictions(denoiser):
    model, params, z, cond, uncond = denoiser
    t = jnp.full(4, 500, jnp.int32)
    eps_c = model.epsilon(params, z, t, cond)
    eps_u = model.epsilon(params, z, t, uncond)
    assert np.abs(np.asarray(eps_c - eps_u)).max() > 1e-3  # the class matters
    for guidance in (0.0, 1.0, 7.5):
        np.testing.assert_allclose(
            np.asarray(guided_epsilon(model.epsilon, params, z, 500, cond, uncond, guidance)),
            np.asarray(eps_u + guidance * (eps_c - eps_u)), rtol=1e-4, atol=1e-5,
        )


def test_the_schedule_is_stable_diffusions(denoiser):
    model = denoiser[0]
    state = model.ddpm_scheduler().create_state()
    np.testing.assert_allclose(np.asarray(state.common.alphas_cumprod, np.float64), np.cumprod(1.0 - SD_BETAS), rtol=1e-5)
    # Where img2img starts at strength 0.7 of 50 DDIM steps (D4M's setting), from the sampler's own timesteps.
    ddim = model.ddim_scheduler
    start = int(ddim.set_timesteps(ddim.create_state(), 50, (1, 7, 7, 4)).timesteps[start_index(50, 0.7)])
    assert start == 681
    snr = lambda alphas_cumprod: alphas_cumprod / (1.0 - alphas_cumprod)
    sd_snr, linear_snr = snr(np.cumprod(1.0 - SD_BETAS)), snr(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000)))
    assert 0.095 < sd_snr[start] < 0.115  # README: 0.10
    assert 0.0085 < linear_snr[start] < 0.0095  # README: 0.009 on DDPM's linear schedule
    # README: DDPM's noise level at that timestep is Stable Diffusion's at strength ~0.96 (timestep ~940 of 981).
    same_noise = int(np.argmin(np.abs(sd_snr - linear_snr[start])))
    assert 0.95 < same_noise / 981 < 0.97


def test_denoiser_loss_against_a_noising_written_out(denoiser):
    model, params, z, _, _ = denoiser
    assert model.padded_side == 7  # one level: no padding needed
    labels = jnp.array([0, 1, 2, 1])
    rng = jax.random.key(6)
    loss, _ = model.loss(params, z, labels, rng, class_dropout=0.5)
    # the same draws as LatentDenoiser.loss, then q(z_t | z_0) from the closed-form schedule
    t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
    t = np.asarray(jax.random.randint(t_rng, (4,), 0, 1000))
    noise = np.asarray(jax.random.normal(noise_rng, z.shape, z.dtype), np.float64)
    dropped = np.where(np.asarray(jax.random.bernoulli(drop_rng, 0.5, (4,))), model.null_class, np.asarray(labels))
    a = np.cumprod(1.0 - SD_BETAS)[t][:, None, None, None]
    noisy = np.sqrt(a) * np.asarray(z, np.float64) + np.sqrt(1 - a) * noise
    eps = model.epsilon(params, jnp.asarray(noisy, jnp.float32), jnp.asarray(t, jnp.int32), model.class_context(params, jnp.asarray(dropped)))
    assert eps.shape == z.shape
    expected = np.mean(np.square(np.asarray(eps, np.float64) - noise))
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_bad_strength_is_refused():
    with pytest.raises(ValueError, match="strength"):
        start_index(10, 1.5)


@pytest.mark.parametrize("field, value, message", [
    ("methods", ("random", "ddoq_gan"), "unknown method 'ddoq_gan'"),
    ("methods", ("herding_gan",), "unknown method 'herding_gan'"),  # a known base with an unknown decoder
    ("decode.method", "gan", "config.decode.method must be one of"),
    ("decode.diffusion.strength", 1.5, r"config.decode.diffusion.strength must be a number in \[0, 1\], got 1.5"),
    ("denoiser.model.block_out_channels", (48,), "multiples of 32"),
])
def test_decode_settings_are_checked(field, value, message):
    from configs import default
    from pqdjax.config_checks import ConfigError, validate_config

    config = default.get_config()
    validate_config(config)
    *parents, leaf = field.split(".")
    section = config
    for part in parents:
        section = section[part]
    section[leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
