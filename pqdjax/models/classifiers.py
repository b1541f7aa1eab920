"""Classifier architectures by name, for teachers and students."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

from pqdjax.models.convnet import ConvNet


def make_classifier(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The classifier named by config.arch, built with its options.

    'convnet': ConvNet-D with config.width, config.depth, config.norm.
    """
    if config.arch == "convnet":
        return ConvNet(num_classes=num_classes, width=config.width, depth=config.depth, norm=config.norm)
    raise ValueError(f"unknown classifier arch {config.arch!r}; known: 'convnet'.")
