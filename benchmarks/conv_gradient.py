"""Convolution gradients on CPU: XLA's own against pqdjax.models.fast_conv's shifted matmuls.

    flock /tmp/pqdjax-cpu.lock python -m benchmarks.conv_gradient [--repeats=5]

For each shape (a batch of 128 NHWC images, SAME padding, stride 1) times,
after one compiling call each: the forward pass, XLA's kernel gradient (the
vjp of lax.conv_general_dilated with respect to the kernel) and fast_conv's
kernel gradient (the same vjp through fast_conv.conv2d). The three take
turns in each round; printed are the medians over rounds, XLA's gradient over
the forward pass, and XLA's gradient over fast_conv's, and the largest
difference between the two gradients relative to XLA's largest entry.
Then, for each model the default config trains (students, teacher, VAE,
latent denoiser), the gradient of its loss on one batch with fast_conv's
interceptor off and on (config.fast_conv_gradients False / True), taking turns.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
import ml_collections

from benchmarks.timing import interleaved_times
from configs import default
from pqdjax.models import classifiers, fast_conv, silence_diffusers_deprecation
from pqdjax.models import vae as vae_lib
from pqdjax.models.denoiser import make_denoiser

SHAPES = ((28, 16, 16), (28, 32, 16), (28, 64, 64), (32, 64, 64))  # (side, input channels, output channels)
BATCH = 128


def _xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_gradient(conv):
    """d/dkernel and d/dx of sum(conv(x, kernel) * dy): the gradients a training step computes for a layer
    with layers below it."""
    return jax.jit(jax.grad(lambda kernel, x, dy: jnp.sum(conv(x, kernel) * dy), argnums=(0, 1)))


def measure(side: int, cin: int, cout: int, repeats: int) -> dict:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (BATCH, side, side, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) / (3 * cin ** 0.5)
    dy = jax.random.normal(keys[2], (BATCH, side, side, cout))
    forward = jax.jit(_xla_conv)
    xla_gradient = _kernel_gradient(_xla_conv)
    fast_gradient = _kernel_gradient(lambda x_, k_: fast_conv.conv2d(x_, k_, (1, 1), ((1, 1), (1, 1))))
    times = interleaved_times({
        "forward": lambda: jax.block_until_ready(forward(x, kernel)),
        "xla_kernel_gradient": lambda: jax.block_until_ready(xla_gradient(kernel, x, dy)),
        "fast_conv_kernel_gradient": lambda: jax.block_until_ready(fast_gradient(kernel, x, dy)),
    }, repeats)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    xla, fast = xla_gradient(kernel, x, dy)[0], fast_gradient(kernel, x, dy)[0]
    return {
        "shape": f"{BATCH} x {side} x {side}, {cin} -> {cout}", "ms": ms,
        "xla_gradient_over_forward": ms["xla_kernel_gradient"] / ms["forward"],
        "xla_gradient_over_fast_conv": ms["xla_kernel_gradient"] / ms["fast_conv_kernel_gradient"],
        "fast_conv_path": min(cin, cout) >= fast_conv.MIN_CHANNELS,
        "max_relative_difference": float(jnp.max(jnp.abs(xla - fast)) / jnp.max(jnp.abs(xla))),
    }


def _losses() -> dict:
    """{name: (loss(params), params)} for the models of configs/default.py, on one batch each."""
    config = default.get_config()
    images = jax.random.uniform(jax.random.key(1), (100, 28, 28, 1))
    losses = {}
    students = {"ConvNet-3 student (width 32), batch 100": config.evaluate.model,
                "ConvNet-3 teacher (width 128), batch 100": config.teacher.model,
                "ResNet-10 student (width 16, cross_arch), batch 100": ml_collections.ConfigDict(
                    dict(arch="resnet10", width=16, stem="cifar"))}
    for name, model_config in students.items():
        model = classifiers.make_classifier(model_config, 10)
        params = model.init(jax.random.key(0), images)
        losses[name] = (lambda p, model=model: jnp.mean(model.apply(p, images) ** 2), params)
    vae = vae_lib.make_vae(config.prior.vae, 28, 1)
    batch = jax.random.uniform(jax.random.key(2), (128, 28, 28, 1))
    losses["VAE, batch 128"] = (lambda p: vae_lib.loss(vae, p, batch, jax.random.key(3), 1e-4)[0],
                                vae_lib.init_params(vae, jax.random.key(0), 28))
    denoiser = make_denoiser(config.denoiser.model, vae_lib.latent_shape(vae, 28), 10)
    latents = jax.random.normal(jax.random.key(4), (128, *vae_lib.latent_shape(vae, 28)))
    labels = jnp.arange(128) % 10
    losses["latent denoiser, batch 128"] = (lambda p: denoiser.loss(p, latents, labels, jax.random.key(5), 0.1)[0],
                                            denoiser.init_params(jax.random.key(0)))
    return losses


def measure_model(name: str, loss, params, repeats: int) -> dict:
    def gradient(enabled):
        def fn(p):
            with fast_conv.fast_conv_gradients(enabled):  # the interceptor acts at trace time
                return jax.grad(loss)(p)
        return jax.jit(fn)
    fns = {"xla": gradient(False), "fast_conv": gradient(True)}
    times = interleaved_times({name_: lambda fn=fn: jax.block_until_ready(fn(params)) for name_, fn in fns.items()}, repeats)
    ms = {name_: 1000 * statistics.median(t) for name_, t in times.items()}
    return {"model": name, "gradient_ms": ms, "xla_over_fast_conv": ms["xla"] / ms["fast_conv"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps({"devices": str(jax.devices())}))
    for side, cin, cout in SHAPES:
        print(json.dumps(measure(side, cin, cout, args.repeats)), flush=True)
    silence_diffusers_deprecation()
    for name, (loss, params) in _losses().items():
        print(json.dumps(measure_model(name, loss, params, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
