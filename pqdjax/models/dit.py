"""DiT (Peebles & Xie, 2023), the class-conditional Diffusion Transformer, in Flax, in diffusers' parameter layout.

The module mirrors diffusers' DiTTransformer2DModel (the layout of the
facebook/DiT-XL-2-256 and -512 checkpoints), so its PyTorch safetensors load
by renaming and transposing alone (`convert_pytorch_weights`, no torch):

    latents [B, H, W, C] -> conv patch embedding (p x p, stride p) + fixed 2-D sin-cos positions
                         -> T = HW / p^2 tokens of width D = heads * head_dim
    num_layers blocks:      adaLN-Zero: (timestep, class) embedding -> SiLU -> Dense(6D) gives the shift,
                            scale and gate of the attention and of the MLP; x += gate * f(modulated LN(x))
    final layer:            LN modulated by block 0's embedding (shift, scale), Dense(p^2 * out_channels)
                         -> unpatchified [B, H, W, out_channels]

As in the DiT release every block holds its own copy of the timestep and
class embedders (diffusers' conversion duplicates them; they are equal in the
real checkpoints). The class table has num_classes + 1 rows: row num_classes
is the null class of classifier-free guidance (1000 for ImageNet).
out_channels = 2 * in_channels for the released models (learned sigma): the
first in_channels are the noise prediction, the rest the interpolation of the
variance, which a DDIM sampler does not use (`epsilon`).
"""

from __future__ import annotations

import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pqdjax.errors import InputError

TIMESTEP_FEATURES = 256  # sinusoidal features of the timestep, before its MLP (DiT's frequency_embedding_size)


class CheckpointError(InputError):
    """A DiT checkpoint is missing a tensor, has an extra one, or one of the wrong shape."""


def timestep_features(timesteps: jax.Array, dim: int = TIMESTEP_FEATURES, max_period: float = 10000.0) -> jax.Array:
    """int or float [B] -> [B, dim]: [cos, sin] of t times dim/2 geometric frequencies (diffusers' Timesteps
    with flip_sin_to_cos=True and downscale_freq_shift=1, as in DiTTransformer2DModel)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _sincos(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = positions.reshape(-1)[:, None] * omega[None]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def position_embedding(dim: int, height: int, width: int, base_size: int) -> np.ndarray:
    """float32 [height * width, dim], tokens row-major: the first dim/2 features encode the column, the rest the row
    (diffusers' get_2d_sincos_pos_embed; coordinates scaled by base_size / grid size as there)."""
    rows = np.arange(height) / (height / base_size)
    cols = np.arange(width) / (width / base_size)
    col_grid, row_grid = np.meshgrid(cols, rows, indexing="xy")  # both [height, width]
    return np.concatenate([_sincos(dim // 2, col_grid), _sincos(dim // 2, row_grid)], axis=1).astype(np.float32)


def _layer_norm(epsilon: float) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=epsilon, use_bias=False, use_scale=False, use_fast_variance=False)


class TimestepEmbedder(nn.Module):
    width: int

    @nn.compact
    def __call__(self, features):
        return nn.Dense(self.width, name="linear_2")(nn.silu(nn.Dense(self.width, name="linear_1")(features)))


class LabelEmbedder(nn.Module):
    num_classes: int
    width: int

    @nn.compact
    def __call__(self, labels):
        return nn.Embed(self.num_classes + 1, self.width, name="embedding_table")(labels)


class ConditionEmbedder(nn.Module):
    """(timesteps [B], labels int [B]) -> [B, width]: the timestep MLP's output plus the class embedding."""

    num_classes: int
    width: int

    @nn.compact
    def __call__(self, timesteps, labels):
        t = TimestepEmbedder(self.width, name="timestep_embedder")(timestep_features(timesteps))
        return t + LabelEmbedder(self.num_classes, self.width, name="class_embedder")(labels)


class AdaLayerNormZero(nn.Module):
    """x [B, T, D] -> (LN(x) * (1 + scale_msa) + shift_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp, embedding [B, D])."""

    num_classes: int

    @nn.compact
    def __call__(self, x, timesteps, labels):
        width = x.shape[-1]
        embedding = ConditionEmbedder(self.num_classes, width, name="emb")(timesteps, labels)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(
            nn.Dense(6 * width, name="linear")(nn.silu(embedding)), 6, axis=-1)
        x = _layer_norm(1e-6)(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp, embedding


class SelfAttention(nn.Module):
    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, x):
        batch, tokens, width = x.shape
        split = lambda name: nn.Dense(self.heads * self.head_dim, name=name)(x).reshape(batch, tokens, self.heads, self.head_dim)
        out = jax.nn.dot_product_attention(split("to_q"), split("to_k"), split("to_v"))  # softmax(q k^T / sqrt(head_dim)) v
        return nn.Dense(width, name="to_out_0")(out.reshape(batch, tokens, self.heads * self.head_dim))


class FeedForward(nn.Module):
    """diffusers' FeedForward: net.0.proj (D -> 4D), tanh-approximated GELU, net.2 (4D -> D)."""

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        h = jax.nn.gelu(GELUProjection(4 * width, name="net_0")(x), approximate=True)
        return nn.Dense(width, name="net_2")(h)


class GELUProjection(nn.Module):
    """diffusers' GELU module's linear projection (its activation is applied by FeedForward)."""

    features: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, name="proj")(x)


class DiTBlock(nn.Module):
    """x [B, T, D] -> (x [B, T, D], this block's conditioning embedding [B, D])."""

    heads: int
    head_dim: int
    num_classes: int
    norm_eps: float

    @nn.compact
    def __call__(self, x, timesteps, labels):
        h, gate_msa, shift_mlp, scale_mlp, gate_mlp, embedding = AdaLayerNormZero(self.num_classes, name="norm1")(x, timesteps, labels)
        x = x + gate_msa[:, None] * SelfAttention(self.heads, self.head_dim, name="attn1")(h)
        h = _layer_norm(self.norm_eps)(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        x = x + gate_mlp[:, None] * FeedForward(name="ff")(h)
        return x, embedding


class PatchEmbed(nn.Module):
    """[B, H, W, C] -> [B, (H/p)(W/p), D]: a p x p stride-p conv plus the fixed 2-D sin-cos positions."""

    width: int
    patch_size: int
    base_size: int

    @nn.compact
    def __call__(self, latents):
        p = self.patch_size
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", name="proj")(latents)
        batch, height, width, _ = x.shape
        return x.reshape(batch, height * width, self.width) + position_embedding(self.width, height, width, self.base_size)


class DiT(nn.Module):
    """DiT: latents [B, H, W, in_channels], timesteps [B], labels int [B] (num_classes: the null class)
    -> [B, H, W, out_channels]. Field names and defaults are DiTTransformer2DModel's config (DiT-XL/2)."""

    num_attention_heads: int = 16
    attention_head_dim: int = 72
    in_channels: int = 4
    out_channels: int | None = None
    num_layers: int = 28
    sample_size: int = 32
    patch_size: int = 2
    num_embeds_ada_norm: int = 1000  # the number of classes
    norm_eps: float = 1e-5

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    @nn.compact
    def __call__(self, latents, timesteps, labels):
        p, width = self.patch_size, self.num_attention_heads * self.attention_head_dim
        batch, height, width_px, _ = latents.shape
        if height % p or width_px % p:
            raise ValueError(f"DiT needs latents whose sides are multiples of the patch size {p}, got {latents.shape}.")
        x = PatchEmbed(width, p, self.sample_size // p, name="pos_embed")(latents)
        conditioning = None
        for i in range(self.num_layers):
            x, embedding = DiTBlock(self.num_attention_heads, self.attention_head_dim, self.num_embeds_ada_norm,
                                    self.norm_eps, name=f"transformer_blocks_{i}")(x, timesteps, labels)
            conditioning = embedding if conditioning is None else conditioning  # the final layer uses block 0's
        shift, scale = jnp.split(nn.Dense(2 * width, name="proj_out_1")(nn.silu(conditioning)), 2, axis=-1)
        x = _layer_norm(1e-6)(x) * (1 + scale[:, None]) + shift[:, None]
        x = nn.Dense(p * p * self.output_channels, name="proj_out_2")(x)
        x = x.reshape(batch, height // p, width_px // p, p, p, self.output_channels).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(batch, height, width_px, self.output_channels)

    def abstract_params(self) -> dict:
        """The parameter tree as ShapeDtypeStructs (nothing initialised)."""
        side = self.sample_size
        args = (jnp.zeros((1, side, side, self.in_channels)), jnp.zeros((1,), jnp.int32), jnp.zeros((1,), jnp.int32))
        return jax.eval_shape(lambda: self.init(jax.random.key(0), *args))["params"]


CONFIG_FIELDS = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "sample_size",
                 "patch_size", "num_embeds_ada_norm", "norm_eps")


def from_config(config: dict) -> DiT:
    """A DiT from DiTTransformer2DModel's config.json; settings DiT does not implement are refused."""
    for key, allowed in (("norm_type", "ada_norm_zero"), ("activation_fn", "gelu-approximate"), ("norm_elementwise_affine", False),
                         ("attention_bias", True), ("upcast_attention", False)):
        if config.get(key, allowed) != allowed:
            raise CheckpointError(f"the DiT config sets {key}={config[key]!r}; pqdjax's DiT implements {key}={allowed!r} only.")
    return DiT(**{k: config[k] for k in CONFIG_FIELDS if k in config})


_INDEXED = re.compile(r"^(transformer_blocks|to_out|net)_(\d+)$")


def torch_name(path: tuple[str, ...]) -> str:
    """A Flax parameter path -> its name in DiTTransformer2DModel's state dict,
    e.g. ('transformer_blocks_3', 'attn1', 'to_out_0', 'kernel') -> 'transformer_blocks.3.attn1.to_out.0.weight'."""
    *modules, leaf = path
    return ".".join([_INDEXED.sub(r"\1.\2", m) for m in modules] + [{"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)])


def to_flax_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """A PyTorch tensor -> the Flax layout: Linear [out, in] -> [in, out], Conv2d [O, I, kh, kw] -> [kh, kw, I, O]."""
    if leaf == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def to_torch_layout(value: np.ndarray, leaf: str) -> np.ndarray:
    """The inverse of to_flax_layout."""
    if leaf == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def torch_shape(shape: tuple[int, ...], leaf: str) -> tuple[int, ...]:
    """The shape of a Flax parameter in PyTorch's layout (to_torch_layout's, without the data)."""
    if leaf == "kernel":
        return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(reversed(shape))
    return tuple(shape)


def convert_pytorch_weights(state_dict: dict[str, np.ndarray], model: DiT, where: str) -> dict:
    """DiTTransformer2DModel's state dict (numpy arrays) -> the Flax params of `model`.

    Raises CheckpointError naming the tensor on a missing, extra or misshapen one.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    expected = flatten_dict(model.abstract_params())
    names = {torch_name(path): path for path in expected}
    extra = sorted(set(state_dict) - set(names))
    if extra:
        raise CheckpointError(f"{where}: tensor {extra[0]!r} matches no parameter of the DiT in its config.json ({len(extra)} such).")
    params = {}
    for name, path in names.items():
        if name not in state_dict:
            raise CheckpointError(f"{where}: tensor {name!r} is missing; is the checkpoint complete?")
        value = to_flax_layout(np.asarray(state_dict[name], np.float32), path[-1])
        if value.shape != expected[path].shape:
            shown = torch_shape(expected[path].shape, path[-1])
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {tuple(state_dict[name].shape)}, the DiT in its config.json needs {shown}."
            )
        params[path] = jnp.asarray(value)
    return unflatten_dict(params)


def flax_to_pytorch_weights(params) -> dict[str, np.ndarray]:
    """Flax DiT params -> DiTTransformer2DModel's state dict names and layouts (for writing checkpoints)."""
    from flax.traverse_util import flatten_dict

    return {torch_name(path): np.ascontiguousarray(to_torch_layout(np.asarray(value, np.float32), path[-1]))
            for path, value in flatten_dict(jax.device_get(params)).items()}
