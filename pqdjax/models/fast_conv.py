"""Convolutions whose kernel gradient is computed by shifted matmuls (config.fast_conv_gradients).

The kernel gradient of a k x k convolution is the sum over the k*k kernel
taps of a matmul between a shifted view of the input and the output gradient:

    dK[i, j] = sum_{n,h,w} x_pad[n, s*h + i, s*w + j, :]^T  dY[n, h, w, :]

`conv2d` is a `lax.conv_general_dilated` for NHWC inputs and HWIO kernels
with that backward pass (for both channel counts at least `MIN_CHANNELS`;
XLA's own below), and `fast_conv_gradients()` is a flax method interceptor
that routes every plain 2-D `flax.linen.Conv` through it, diffusers' Flax
VAE and UNet included. Values and gradients equal XLA's to float32 rounding
(tests/test_models.py).

It was written for an XLA:CPU whose kernel gradient ran 5-20x slower than
the forward pass. With jax 0.9.2 on this repository's 2-core CPU, XLA's own
gradient is faster: 0.77-0.87x for a 64 -> 64 3x3 conv on 128 images of 28
and 32 px, 0.70-0.99x for the gradients of the default config's models
(`python -m benchmarks.conv_gradient`), so the configs leave it off; the
benchmark tells whether it pays on another machine or version.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from pqdjax.errors import ConfigError

Padding = tuple[tuple[int, int], tuple[int, int]]
# Below this many input or output channels XLA's kernel gradient is kept.
MIN_CHANNELS = 32
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: Padding) -> jax.Array:
    """2-D convolution. x: [N, H, W, Cin], kernel: [kh, kw, Cin, Cout] -> [N, H', W', Cout]."""
    return _conv(x, kernel, strides, padding)


def _conv2d_fwd(x, kernel, strides, padding):
    return _conv(x, kernel, strides, padding), (x, kernel)


def _conv2d_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    # The input gradient (a transposed convolution) is fast in XLA as it is.
    kh, kw, cin, cout = kernel.shape
    if min(cin, cout) < MIN_CHANNELS:
        _, vjp = jax.vjp(lambda x_, k_: _conv(x_, k_, strides, padding), x, kernel)
        return vjp(dy)
    _, vjp_x = jax.vjp(lambda x_: _conv(x_, kernel, strides, padding), x)
    (dx,) = vjp_x(dy)
    sh, sw = strides
    _, out_h, out_w, _ = dy.shape
    x_pad = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    dy_flat = dy.reshape(-1, cout)
    taps = []
    for i in range(kh):
        for j in range(kw):
            window = lax.slice(
                x_pad,
                (0, i, j, 0),
                (x_pad.shape[0], i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, cin),
                (1, sh, sw, 1),
            )
            taps.append(window.reshape(-1, cin).T @ dy_flat)
    dkernel = jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)
    return dx, dkernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _explicit_padding(padding, kernel_size: Sequence[int], strides: Sequence[int], spatial: Sequence[int]) -> Padding | None:
    """nn.Conv's `padding` as explicit pairs, or None for modes we do not handle."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            return None
        pads = lax.padtype_to_pads(spatial, kernel_size, strides, padding.upper())
        return tuple((int(lo), int(hi)) for lo, hi in pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pairs = tuple(tuple(p) if isinstance(p, Sequence) else (p, p) for p in padding)
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs):
        return None
    return tuple((int(lo), int(hi)) for lo, hi in pairs)


def _as_pair(value) -> tuple[int, int] | None:
    if value is None:
        return (1, 1)
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return value if len(value) == 2 else None


def _conv_interceptor(next_fun, args, kwargs, context):
    module = context.module
    plain_call = (
        context.method_name == "__call__"
        and type(module) is nn.Conv
        and len(args) == 1
        and not kwargs
        and not module.is_initializing()
    )
    if not plain_call:
        return next_fun(*args, **kwargs)
    (x,) = args
    kernel_size = _as_pair(module.kernel_size)
    strides = _as_pair(module.strides)
    supported = (
        x.ndim == 4
        and kernel_size is not None
        and strides is not None
        and _as_pair(module.input_dilation) == (1, 1)
        and _as_pair(module.kernel_dilation) == (1, 1)
        and module.feature_group_count == 1
        and module.shared_weights
        and module.mask is None
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
    )
    padding = _explicit_padding(module.padding, kernel_size, strides, x.shape[1:3]) if supported else None
    if padding is None:
        return next_fun(*args, **kwargs)
    params = module.variables["params"]
    x, kernel, bias = module.promote_dtype(x, params["kernel"], params.get("bias"), dtype=module.dtype)
    y = conv2d(x, kernel, strides, padding)
    return y if bias is None else y + bias


@contextlib.contextmanager
def fast_conv_gradients(enabled: bool = True) -> Iterator[None]:
    """Within this context (at trace time), plain 2-D nn.Conv calls use `conv2d`.

    Convolutions with dilation, groups, masks, circular padding or unbatched
    inputs keep flax's own implementation.
    """
    if not enabled:
        yield
        return
    with nn.intercept_methods(_conv_interceptor):
        yield


def wanted_on_this_backend(setting: str | bool) -> bool:
    """Resolve a config value 'auto' | True | False (also as typed: 'False', 'true'): 'auto' means on CPU only."""
    from pqdjax.config_fields import as_switch

    switch = as_switch(setting)
    if switch is None:
        raise ConfigError(f"fast_conv_gradients must be 'auto', True or False, got {setting!r}.")
    return jax.default_backend() == "cpu" if switch == "auto" else switch
