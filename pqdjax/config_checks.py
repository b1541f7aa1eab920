"""Checks of a run's config that catch mistakes before any work is done."""

from __future__ import annotations

import ml_collections

KNOWN_METHODS = ("random", "d4m", "ddoq")
KNOWN_QUANTIZERS = ("lloyd", "clvq", "barycenter")  # pqdjax.quantize.METHODS


class ConfigError(ValueError):
    """A config value is out of range or unknown."""


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the first bad field and what it accepts."""
    if config.data.name == "imagenet2012":
        raise ConfigError(
            "the ImageNet-1K pipeline (configs/in1k.py) is not wired into pqdjax.main yet: it needs the Stable "
            "Diffusion encode (per-class latents on disk) and img2img decode stages. Its parts run on their own: "
            "pqdjax.models.convert_torchvision (teacher), pqdjax.train.imagenet_student (students), "
            "pqdjax.data.imagenet (tfds input), pqdjax.quantize (clvq_stream), pqdjax.parallel (mesh)."
        )
    ipcs = tuple(config.ipcs)
    if not ipcs or any(not isinstance(k, int) or k < 1 for k in ipcs):
        raise ConfigError(f"config.ipcs must be positive integers, got {ipcs}.")
    if len(set(ipcs)) != len(ipcs):
        raise ConfigError(f"config.ipcs has duplicates: {ipcs}.")
    methods = tuple(config.methods)
    unknown = [m for m in methods if m not in KNOWN_METHODS]
    if not methods or unknown:
        raise ConfigError(f"config.methods must be a non-empty subset of {KNOWN_METHODS}, got {methods}.")
    seeds = tuple(config.evaluate.seeds)
    if not seeds or any(not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.evaluate.seeds must be distinct integers, got {seeds}.")
    if config.quantize.method not in KNOWN_QUANTIZERS:
        raise ConfigError(f"config.quantize.method must be one of {KNOWN_QUANTIZERS}, got {config.quantize.method!r}.")
    for path in ("prior.train", "teacher.train", "evaluate.train"):
        section = config
        for part in path.split("."):
            section = section[part]
        for field in ("steps", "batch_size"):
            if section[field] < 1:
                raise ConfigError(f"config.{path}.{field} must be at least 1, got {section[field]}.")
        if section.learning_rate <= 0:
            raise ConfigError(f"config.{path}.learning_rate must be positive, got {section.learning_rate}.")
