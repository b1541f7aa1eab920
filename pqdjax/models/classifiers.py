"""Classifier architectures by name, for teachers and students."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from pqdjax.models.convnet import ConvNet
from pqdjax.models.mobilenet import MobileNetV2
from pqdjax.models.resnet import ARCHITECTURES as RESNETS
from pqdjax.models.resnet import ResNet
from pqdjax.errors import ConfigError


def make_classifier(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The classifier named by config.arch, built with its options.

    'convnet': ConvNet-D with config.width, config.depth, config.norm.
    'resnet10' | 'resnet18' | 'resnet34' | 'resnet50' | 'resnet101': torchvision's ResNet
    (BatchNorm: its variables include 'batch_stats', and it takes `train=`),
    with an optional config.width (default 64) for tiny test models and config.stem
    ('imagenet', or 'cifar' for 32 px images: pqdjax.models.resnet.ResNet).
    'mobilenet_v2': torchvision's MobileNet-V2 (BatchNorm, `train=` likewise), with an
    optional config.width_multiplier (default 1.0; smaller for small images and tiny test
    models) and config.stem ('imagenet', or 'cifar' for 28-32 px images).
    Every classifier is called as apply(variables, x, train=...).
    """
    if config.arch == "convnet":
        return ConvNet(num_classes=num_classes, width=config.width, depth=config.depth, norm=config.norm)
    if config.arch in RESNETS:
        return ResNet(num_classes=num_classes, depth_name=config.arch, width=config.get("width", 64), stem=config.get("stem", "imagenet"))
    if config.arch == "mobilenet_v2":
        return MobileNetV2(num_classes=num_classes, width_multiplier=config.get("width_multiplier", 1.0),
                           stem=config.get("stem", "imagenet"))
    known = ", ".join(map(repr, ("convnet", *RESNETS, "mobilenet_v2")))
    raise ConfigError(f"unknown classifier arch {config.arch!r}; known: {known}.")


class ClassSubset(nn.Module):
    """A classifier whose logits are read at `classes` only: [..., len(classes)], in that order.

    An ImageNet-1K teacher on a subset of its classes (ImageNette, ImageWoof, the
    first C classes): the variables are the classifier's own, unchanged
    (shared scope), so converted checkpoints load as they are.
    """

    classifier: nn.Module
    classes: tuple[int, ...]

    def setup(self):
        nn.share_scope(self, self.classifier)

    def __call__(self, x, train: bool = False):
        return self.classifier(x, train=train)[..., jnp.asarray(self.classes)]


class FromNormalizedInput(nn.Module):
    """A classifier trained on [-1, 1] images (pqdjax.train.classifier), called like a torchvision one.

    The streamed pipeline feeds every teacher torchvision-normalised images
    ((x - MEAN) / STD, x in [0, 1]) and `train=`; this undoes the normalisation
    to the classifier's [-1, 1] range. The variables are the classifier's own
    ({'params'}; shared scope).
    """

    classifier: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def setup(self):
        nn.share_scope(self, self.classifier)

    def __call__(self, x, train: bool = False):
        unit = x * jnp.asarray(self.std, x.dtype) + jnp.asarray(self.mean, x.dtype)
        return self.classifier(unit * 2.0 - 1.0)
