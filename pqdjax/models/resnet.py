"""ResNet-10/18/34/50/101 in flax linen, layer for layer torchvision's architecture.

The parameter tree mirrors torchvision's state-dict keys, so that converted
weights (pqdjax.models.convert_torchvision) drop in: torch's `layer2.0.conv1`
is flax's `layer2_0/conv1`, `layer2.0.downsample.0` / `.1` are
`layer2_0/downsample_conv` / `downsample_bn`. Details that matter for
matching torchvision to 1e-4: convolutions without bias, explicit symmetric
padding (torch pads (k - 1) / 2 on both sides, where "SAME" would pad a
stride-2 conv asymmetrically), BatchNorm with epsilon 1e-5 and running-average
momentum 0.1 (flax: 0.9), max-pool padded with -inf, and the stride of a
bottleneck block on its 3x3 convolution (ResNet v1.5).

Images are NHWC float. BatchNorm state lives in the 'batch_stats' collection:
call `apply(variables, x, train=True, mutable=['batch_stats'])` to train.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from pqdjax.errors import ConfigError

# torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu').
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

# name -> (block type, blocks per stage)
ARCHITECTURES = {
    "resnet10": ("basic", (1, 1, 1, 1)),  # the smallest of the family, for quick runs and tests
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}


def _conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=False, kernel_init=_conv_init, name=name,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut; [N, H, W, Cin] -> [N, H/stride, W/stride, planes]."""

    planes: int
    stride: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        y = nn.relu(norm(name="bn1")(_conv(self.planes, 3, self.stride, "conv1")(x)))
        y = norm(name="bn2")(_conv(self.planes, 3, 1, "conv2")(y))
        return nn.relu(y + _shortcut(x, self.planes * self.expansion, self.stride, norm))


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided), 1x1 convolutions and a shortcut; output channels 4 * planes."""

    planes: int
    stride: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5)
        y = nn.relu(norm(name="bn1")(_conv(self.planes, 1, 1, "conv1")(x)))
        y = nn.relu(norm(name="bn2")(_conv(self.planes, 3, self.stride, "conv2")(y)))
        y = norm(name="bn3")(_conv(self.planes * self.expansion, 1, 1, "conv3")(y))
        return nn.relu(y + _shortcut(x, self.planes * self.expansion, self.stride, norm))


def _shortcut(x: jax.Array, features: int, stride: int, norm) -> jax.Array:
    """Identity, or a strided 1x1 conv + BatchNorm where the shape changes (torchvision's `downsample`)."""
    if stride == 1 and x.shape[-1] == features:
        return x
    return norm(name="downsample_bn")(_conv(features, 1, stride, "downsample_conv")(x))


class ResNet(nn.Module):
    """torchvision's ResNet. Input [N, H, W, 3] float (normalised images); output logits [N, num_classes].

    Attributes:
      num_classes: outputs of the final linear layer.
      depth_name: a key of ARCHITECTURES ('resnet10', 'resnet18', 'resnet34', 'resnet50', 'resnet101').
      width: channels of the first stage (64 in torchvision; smaller for tiny test models).
      stem: 'imagenet' (torchvision's 7x7 stride-2 conv and max pool) or 'cifar' (a 3x3 stride-1 conv,
        no pool: the ResNet-18 of CIFAR dataset distillation, SRe2L and RDED, for 32 px images).
    """

    num_classes: int
    depth_name: str = "resnet18"
    width: int = 64
    stem: str = "imagenet"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.depth_name not in ARCHITECTURES:
            raise ConfigError(f"unknown ResNet {self.depth_name!r}; known: {sorted(ARCHITECTURES)}.")
        block_type, stages = ARCHITECTURES[self.depth_name]
        block = BasicBlock if block_type == "basic" else Bottleneck
        if self.stem not in ("imagenet", "cifar"):
            raise ConfigError(f"ResNet stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
        x = _conv(self.width, 7, 2, "conv1")(x) if self.stem == "imagenet" else _conv(self.width, 3, 1, "conv1")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn1")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(stages):
            for b in range(num_blocks):
                stride = 2 if stage > 0 and b == 0 else 1
                x = block(self.width * 2**stage, stride, name=f"layer{stage + 1}_{b}")(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)
