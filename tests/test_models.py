import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from pqdjax.models import fast_conv, vae as vae_lib
from pqdjax.models.convnet import ConvNet

TINY_VAE = ml_collections.ConfigDict(dict(block_out_channels=(8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4))


def test_vae_shapes_and_roundtrip():
    vae = vae_lib.make_vae(TINY_VAE, 16, 1)
    params = vae_lib.init_params(vae, jax.random.key(0), 16)
    images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 1), minval=-1, maxval=1)
    assert vae_lib.latent_shape(vae, 16) == (8, 8, 4)
    encode = jax.jit(lambda x, scale, rng=None: vae_lib.encode(vae, params, x, scale, rng))
    decode = jax.jit(lambda z, scale: vae_lib.decode(vae, params, z, scale))
    z = encode(images, 2.0)
    assert z.shape == (3, 8, 8, 4)
    np.testing.assert_allclose(z, 2.0 * encode(images, 1.0), rtol=1e-6)
    sample = encode(images, 1.0, jax.random.key(2))
    assert not np.allclose(sample, encode(images, 1.0))
    out = decode(z, 2.0)
    assert out.shape == images.shape and np.all(np.isfinite(out))
    np.testing.assert_allclose(out, decode(z / 2.0, 1.0), rtol=1e-5, atol=1e-6)


def test_vae_rejects_indivisible_size():
    with pytest.raises(ValueError, match="not divisible"):
        vae_lib.make_vae(TINY_VAE, 15, 1)


CONV_VAE = ml_collections.ConfigDict(dict(arch="conv", block_out_channels=(8, 16), layers_per_block=1, latent_channels=3, patch=2))


def test_space_to_depth_against_numpy_and_its_inverse():
    from pqdjax.models.conv_vae import depth_to_space, space_to_depth

    x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
    folded = np.asarray(space_to_depth(jnp.asarray(x), 2))
    assert folded.shape == (2, 2, 3, 12)
    # pixel (2i + a, 2j + b, c) lands at (i, j, (a * 2 + b) * 3 + c)
    for i, j, a, b, c in [(0, 0, 0, 0, 0), (1, 2, 1, 0, 2), (0, 1, 1, 1, 1)]:
        assert folded[1, i, j, (a * 2 + b) * 3 + c] == x[1, 2 * i + a, 2 * j + b, c]
    np.testing.assert_array_equal(np.asarray(depth_to_space(jnp.asarray(folded), 2)), x)


def test_conv_vae_shapes_scale_and_a_kl_against_diffusers():
    from diffusers.models.vae_flax import FlaxDiagonalGaussianDistribution

    vae = vae_lib.make_vae(CONV_VAE, 16, 1)
    params = vae_lib.init_params(vae, jax.random.key(0), 16)
    assert vae_lib.latent_shape(vae, 16) == (4, 4, 3)  # patch 2, then one halving
    images = jax.random.uniform(jax.random.key(1), (3, 16, 16, 1), minval=-1, maxval=1)
    z = vae_lib.encode(vae, params, images, 2.0)
    assert z.shape == (3, 4, 4, 3)
    np.testing.assert_allclose(vae_lib.decode(vae, params, z, 2.0), vae_lib.decode(vae, params, z / 2.0, 1.0), rtol=1e-5, atol=1e-6)
    assert vae_lib.decode(vae, params, z, 2.0).shape == images.shape
    posterior = vae_lib.posterior(vae, params, images)
    reference = FlaxDiagonalGaussianDistribution(jnp.concatenate([posterior.mean, posterior.logvar], axis=-1))
    np.testing.assert_allclose(posterior.kl(), reference.kl(), rtol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        vae_lib.make_vae(CONV_VAE, 18, 1)


def _fit(loss_fn, params, steps=30, lr=3e-3):
    tx = optax.adam(lr)
    opt_state = tx.init(params)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    first, _ = grad_fn(params)
    for _ in range(steps):
        loss, grads = grad_fn(params)
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
    return float(first), float(grad_fn(params)[0])


def test_vae_optax_steps_lower_the_loss():
    vae = vae_lib.make_vae(TINY_VAE, 16, 1)
    params = vae_lib.init_params(vae, jax.random.key(0), 16)
    images = jnp.tanh(jax.random.normal(jax.random.key(1), (8, 16, 16, 1)))
    before, after = _fit(lambda p: vae_lib.loss(vae, p, images, jax.random.key(3), 1e-3)[0], params)
    assert np.isfinite(after) and after < 0.7 * before


def test_convnet_shapes_and_training():
    model = ConvNet(num_classes=5, width=16, depth=3)
    images = jax.random.normal(jax.random.key(0), (10, 28, 28, 1))
    labels = jnp.arange(10) % 5
    params = model.init(jax.random.key(1), images)["params"]
    assert params["Dense_0"]["kernel"].shape == (16 * 3 * 3, 5)  # 28 -> 14 -> 7 -> 3
    logits = model.apply({"params": params}, images)
    assert logits.shape == (10, 5) and np.all(np.isfinite(logits))

    def loss(p):
        out = model.apply({"params": p}, images)
        return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

    before, after = _fit(loss, params)
    assert after < 0.5 * before


def test_instance_norm_makes_convnet_invariant_to_input_scale():
    model = ConvNet(num_classes=3, width=8, depth=1)
    images = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
    params = model.init(jax.random.key(1), images)["params"]
    params = jax.tree.map(lambda p: p, params)
    params["Conv_0"]["bias"] = jnp.zeros_like(params["Conv_0"]["bias"])
    a = model.apply({"params": params}, images)
    b = model.apply({"params": params}, 5.0 * images)
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "cin,cout,strides,padding",
    [
        (32, 32, (1, 1), ((1, 1), (1, 1))),
        (32, 48, (2, 2), "SAME"),
        (40, 32, (2, 2), ((0, 1), (0, 1))),
        (32, 32, (1, 1), "VALID"),
        (3, 8, (1, 1), "SAME"),  # few channels: XLA's own kernel gradient
    ],
)
def test_conv2d_matches_xla_values_and_gradients(cin, cout, strides, padding):
    x = jax.random.normal(jax.random.key(0), (4, 9, 9, cin))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
    pads = padding if not isinstance(padding, str) else tuple(
        tuple(p) for p in jax.lax.padtype_to_pads((9, 9), (3, 3), strides, padding))
    reference = lambda x, k: jax.lax.conv_general_dilated(x, k, strides, pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda x, k: fast_conv.conv2d(x, k, strides, pads)
    np.testing.assert_allclose(ours(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-4)
    loss = lambda f: (lambda x, k: jnp.sum(jnp.sin(f(x, k))))
    for g_ours, g_ref in zip(jax.grad(loss(ours), (0, 1))(x, kernel), jax.grad(loss(reference), (0, 1))(x, kernel)):
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-3)


@contextlib.contextmanager
def _routed_convs():
    """The argument tuples (x, kernel, strides, padding) of every fast_conv.conv2d call traced within the context."""
    calls, original = [], fast_conv.conv2d

    def counting(*args):
        calls.append(args)
        return original(*args)

    fast_conv.conv2d = counting
    try:
        yield calls
    finally:
        fast_conv.conv2d = original


def test_interceptor_routes_flax_convs_and_keeps_gradients():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(32, (3, 3), padding="SAME")(x)
            x = nn.Conv(32, (3, 3), strides=2, padding=1)(x)
            x = nn.Conv(32, (3, 3), padding="CIRCULAR")(x)  # unsupported: left to flax
            return nn.Conv(4, (1, 1))(x)

    net = Net()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    params = net.init(jax.random.key(1), x)

    def loss(p, fast):
        with fast_conv.fast_conv_gradients(fast):
            return jnp.sum(net.apply(p, x) ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    with _routed_convs() as calls:
        grads_fast = grad(params, True)
    assert len(calls) == 3  # two 3x3 convs and the 1x1; not the circular one
    grads_flax = grad(params, False)
    for a, b in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_flax)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_interceptor_on_diffusers_vae_gradients():
    config = ml_collections.ConfigDict(dict(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8))
    vae = vae_lib.make_vae(config, 8, 1)
    params = vae_lib.init_params(vae, jax.random.key(0), 8)
    images = jnp.tanh(jax.random.normal(jax.random.key(1), (2, 8, 8, 1)))

    def loss(p, fast):
        with fast_conv.fast_conv_gradients(fast):
            return vae_lib.loss(vae, p, images, jax.random.key(2), 1e-3)[0]

    # Every nn.Conv call of diffusers' VAE must reach fast_conv.conv2d (the interceptor falls back to flax silently).
    conv_calls = []

    def recording(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            conv_calls.append(context.module.kernel_size)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(recording):
        jax.eval_shape(functools.partial(loss, fast=False), params)
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    with _routed_convs() as routed:
        a = grad(params, True)
    assert len(conv_calls) > 0 and len(routed) == len(conv_calls)
    # some take the shifted matmuls (both channel counts of the kernel at least MIN_CHANNELS)
    assert sum(min(kernel.shape[2:]) >= fast_conv.MIN_CHANNELS for _, kernel, *_ in routed) > 0
    b = grad(params, False)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)


def test_wanted_on_this_backend():
    assert fast_conv.wanted_on_this_backend(True) and not fast_conv.wanted_on_this_backend(False)
    assert fast_conv.wanted_on_this_backend("auto") == (jax.default_backend() == "cpu")
    with pytest.raises(ValueError, match="'auto', True or False"):
        fast_conv.wanted_on_this_backend("yes")
