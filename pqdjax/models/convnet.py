"""ConvNet-D, the standard evaluation network of dataset distillation.

D blocks of [3x3 conv, instance norm, ReLU, 2x2 average pool], then a linear
classifier (Gidaris & Komodakis 2018; the DC/DM/MTT benchmarks use D = 3 and
width 128).
"""

from __future__ import annotations

import flax.linen as nn
import jax
from pqdjax.errors import ConfigError


class ConvNet(nn.Module):
    """Image classifier. Input [N, H, W, C] float; output logits [N, num_classes].

    Attributes:
      num_classes: number of outputs.
      width: channels of every conv layer.
      depth: number of conv blocks; each halves the spatial size (floor).
      norm: 'instance' (per image and channel, with a learned affine) or 'none'.
    """

    num_classes: int
    width: int = 128
    depth: int = 3
    norm: str = "instance"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """train: unused (no BatchNorm, no dropout); taken so that every classifier is called alike."""
        del train
        if self.norm not in ("instance", "none"):
            raise ConfigError(f"ConvNet norm must be 'instance' or 'none', got {self.norm!r}.")
        for _ in range(self.depth):
            x = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)))(x)
            if self.norm == "instance":
                x = nn.InstanceNorm(epsilon=1e-5)(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)
