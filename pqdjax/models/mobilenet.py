"""MobileNet-V2 in flax linen, layer for layer torchvision's `mobilenet_v2` (width multiplier 1.0).

Architecture (Sandler et al. 2018, torchvision's inverted-residual table): a
3x3 stride-2 convolution to 32 channels, 17 inverted-residual blocks (1x1
expansion by t, 3x3 depthwise convolution, linear 1x1 projection; a residual
connection where stride is 1 and the channels do not change), a 1x1
convolution to 1280 channels, global average pooling and a linear classifier.
Every convolution is bias-free and followed by BatchNorm (epsilon 1e-5,
running-average momentum 0.1 as in torch, i.e. flax momentum 0.9); activations
are ReLU6 except after the projection. With 1,000 classes it has 3,504,872
parameters, as torchvision's.

The parameter tree mirrors torchvision's state-dict keys with '.' -> '_' at
the top level and '/' between a block and its layers: torch's
`features.0.0` / `features.0.1` (stem conv / BN) are `features_0_0` /
`features_0_1`; `features.2.conv.1.0` (block 2's depthwise conv) is
`features_2/conv_1_0`; `classifier.1` is `classifier_1`.

Not included: torchvision's Dropout(0.2) before the classifier. The student
step (pqdjax.train.student) passes no dropout PRNG key to `apply`, so
this model is deterministic in train mode too; train mode only switches
BatchNorm to batch statistics.

Images are NHWC float. BatchNorm state lives in the 'batch_stats' collection:
call `apply(variables, x, train=True, mutable=['batch_stats'])` to train, the
same signature as pqdjax.models.resnet.ResNet.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from pqdjax.models.resnet import _conv_init
from pqdjax.errors import ConfigError

# torchvision's inverted_residual_setting: (expansion t, output channels c, blocks n, first stride s).
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: the nearest multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv(features: int, kernel: int, stride: int = 1, groups: int = 1, name: str | None = None) -> nn.Conv:
    """Bias-free convolution padded (k - 1) / 2 on both sides like torch (SAME would pad stride 2 asymmetrically)."""
    pad = (kernel - 1) // 2
    return nn.Conv(
        features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        feature_group_count=groups, use_bias=False, kernel_init=_conv_init, name=name,
    )


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class InvertedResidual(nn.Module):
    """[N, H, W, Cin] -> [N, H/stride, W/stride, features]: 1x1 expand (if t > 1), 3x3 depthwise, 1x1 project.

    Attributes:
      features: output channels.
      stride: stride of the depthwise convolution (1 or 2).
      expansion: hidden channels = round(Cin * expansion).
    """

    features: int
    stride: int
    expansion: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        in_channels = x.shape[-1]
        hidden = int(round(in_channels * self.expansion))
        y, layer = x, 0  # `layer` numbers torchvision's `conv.<layer>` entries
        if self.expansion != 1:
            y = _conv(hidden, 1, name=f"conv_{layer}_0")(y)
            y = nn.relu6(_batch_norm(train, f"conv_{layer}_1")(y))
            layer += 1
        y = _conv(hidden, 3, self.stride, groups=hidden, name=f"conv_{layer}_0")(y)
        y = nn.relu6(_batch_norm(train, f"conv_{layer}_1")(y))
        y = _conv(self.features, 1, name=f"conv_{layer + 1}")(y)
        y = _batch_norm(train, f"conv_{layer + 2}")(y)  # linear bottleneck: no activation
        if self.stride == 1 and in_channels == self.features:
            return x + y
        return y


class MobileNetV2(nn.Module):
    """torchvision's MobileNet-V2. Input [N, H, W, 3] float (normalised images); output logits [N, num_classes].

    The spatial size shrinks by 32 (five stride-2 stages) before global
    pooling, so 32x32 inputs reach a 1x1 map; any size >= 1 works.

    Attributes:
      num_classes: outputs of the final linear layer.
      width_multiplier: scales every layer's channels (rounded to multiples of 8);
        1.0 is the standard model, smaller values give tiny test models. The
        last convolution keeps 1280 channels unless the multiplier exceeds 1.
      stem: 'imagenet' (torchvision's) or 'cifar' for 28-32 px images: the stem
        convolution and the first 24-channel block at stride 1 instead of 2 (the
        common CIFAR adaptation), so the map shrinks by 8 (32 px -> 4x4) instead
        of 32. The parameters are the same either way.
    """

    num_classes: int
    width_multiplier: float = 1.0
    stem: str = "imagenet"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.width_multiplier <= 0:
            raise ConfigError(f"MobileNetV2 width_multiplier must be > 0, got {self.width_multiplier}.")
        if self.stem not in ("imagenet", "cifar"):
            raise ConfigError(f"MobileNetV2 stem must be 'imagenet' or 'cifar', got {self.stem!r}.")
        cifar = self.stem == "cifar"
        conv_bn_relu6 = functools.partial(_conv_bn_relu6, train=train)
        x = conv_bn_relu6(x, make_divisible(STEM_CHANNELS * self.width_multiplier), 3, 1 if cifar else 2, "features_0")
        index = 1
        for expansion, channels, blocks, first_stride in INVERTED_RESIDUAL_SETTING:
            if cifar and channels == 24:
                first_stride = 1
            features = make_divisible(channels * self.width_multiplier)
            for b in range(blocks):
                stride = first_stride if b == 0 else 1
                x = InvertedResidual(features, stride, expansion, name=f"features_{index}")(x, train)
                index += 1
        last = make_divisible(LAST_CHANNELS * max(1.0, self.width_multiplier))
        x = conv_bn_relu6(x, last, 1, 1, f"features_{index}")
        x = jnp.mean(x, axis=(1, 2))
        # torchvision: Linear init normal(0, 0.01), zero bias.
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01), name="classifier_1")(x)


def _conv_bn_relu6(x: jax.Array, features: int, kernel: int, stride: int, name: str, train: bool) -> jax.Array:
    """torchvision's Conv2dNormActivation: `<name>_0` conv, `<name>_1` BatchNorm, ReLU6 (called inside a compact module)."""
    x = _conv(features, kernel, stride, name=f"{name}_0")(x)
    return nn.relu6(_batch_norm(train, f"{name}_1")(x))
