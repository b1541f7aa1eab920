"""Checks of a run's config that catch mistakes before any work is done."""

from __future__ import annotations

import ml_collections

from pqdjax.config_fields import check_fields
from pqdjax.errors import ConfigError  # re-exported: the error of these checks
from pqdjax.train.weighting import NORMALIZATIONS

# The base methods: what stands for each class, and with which weights (pqdjax.stages.quantize.method_set).
#   random           K random real training images                        uniform
#   medoid           the real image nearest each k-means point            uniform
#   medoid_weighted  the same images                                      their own Voronoi masses
#   herding          K real images chosen by herding in latent space      uniform
#   d4m              the k-means points, decoded                          uniform
#   ddoq             the k-means points, decoded                          Voronoi masses (DDOQ)
#   generated        K class-conditional samples of the denoiser          uniform
#                    (decoder 'sample': img2img at strength 1, the points' content unused)
REAL_IMAGE_METHODS = ("random", "medoid", "medoid_weighted", "herding")
POINT_METHODS = ("d4m", "ddoq", "generated")
KNOWN_METHODS = REAL_IMAGE_METHODS + POINT_METHODS
# The methods whose images are made from their points (W2 of the points, cell consistency); not generated's samples.
W2_METHODS = tuple(m for m in KNOWN_METHODS if m != "generated")
KNOWN_QUANTIZERS = ("lloyd", "clvq", "barycenter")  # pqdjax.quantize.METHODS
KNOWN_DECODERS = ("vae", "diffusion", "sample")


def split_method(method: str) -> tuple[str, str | None]:
    """'ddoq' -> ('ddoq', None); 'ddoq_vae' -> ('ddoq', 'vae'): the points of ddoq decoded by 'vae'.

    A bare d4m or ddoq decodes with config.decode.method and a bare real-image
    method (random, medoid, ...) uses the real images; a suffix names a decoder
    for the set's latent points (for real images: their latents), so that one
    run compares decoders on the same points ('random_vae': random real images
    through the VAE).
    """
    for base in sorted(KNOWN_METHODS, key=len, reverse=True):  # 'medoid_weighted' before 'medoid'
        if method == base:
            return base, None
        if method.startswith(base + "_"):
            return base, method[len(base) + 1 :]
    base, _, decoder = method.partition("_")
    return base, decoder or None


def point_source(base: str) -> str:
    """Base methods with the same latent points share their decoded images: d4m and ddoq ('kmeans'), medoid and medoid_weighted."""
    return {"d4m": "kmeans", "ddoq": "kmeans", "generated": "kmeans", "medoid_weighted": "medoid"}.get(base, base)


def decoder_of(method: str, config: ml_collections.ConfigDict) -> str | None:
    """The decoder that makes `method`'s images (None for real images)."""
    base, decoder = split_method(method)
    if base in REAL_IMAGE_METHODS:
        return decoder
    if base == "generated":
        return decoder or "sample"
    return decoder or config.decode.method


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError naming the bad fields and what they accept."""
    check_fields(config)
    if config.data.get("streamed"):
        raise ConfigError("config.data.streamed is the streamed pipeline's (configs/in1k.py); check it with validate_streamed_config.")
    ipcs = tuple(config.ipcs)
    if not ipcs or any(not isinstance(k, int) or k < 1 for k in ipcs):
        raise ConfigError(f"config.ipcs must be positive integers, got {ipcs}.")
    if len(set(ipcs)) != len(ipcs):
        raise ConfigError(f"config.ipcs has duplicates: {ipcs}.")
    _validate_methods(config)
    _validate_decode(config)
    _validate_student_protocol(config.evaluate.train)
    if config.get("export_pretrained"):
        _validate_export(config)
    _validate_seeds_and_weighting(config.evaluate)
    if config.quantize.method not in KNOWN_QUANTIZERS:
        raise ConfigError(f"config.quantize.method must be one of {KNOWN_QUANTIZERS}, got {config.quantize.method!r}.")


def validate_streamed_config(config: ml_collections.ConfigDict) -> None:
    """The checks of the streamed pipeline's configs (configs/in1k.py, imagenette.py, imagewoof.py); raises ConfigError."""
    check_fields(config)
    ipcs = tuple(config.ipcs)
    if not ipcs or any(not isinstance(k, int) or k < 1 for k in ipcs) or len(set(ipcs)) != len(ipcs):
        raise ConfigError(f"config.ipcs must be distinct positive integers, got {ipcs}.")
    _validate_methods(config)
    if config.quantize.method not in ("clvq", "lloyd"):
        raise ConfigError(f"config.quantize.method must be 'clvq' or 'lloyd' in the streamed pipeline, got {config.quantize.method!r}.")
    if config.quantize.method == "clvq" and config.quantize.get("n_init", 1) > 1:
        raise ConfigError("config.quantize.n_init > 1 needs method 'lloyd' in the streamed pipeline: the streamed CLVQ runs one start per class.")
    from pqdjax.stages.prior import KINDS

    if config.prior.kind not in KINDS:
        raise ConfigError(f"config.prior.kind must be one of {KINDS}, got {config.prior.kind!r}.")
    tiny = bool(config.prior.get("tiny_random", False))
    if not tiny and not config.prior.pretrained_dir:
        example = "/models/stable-diffusion-v1-5" if config.prior.kind == "stable_diffusion" else "facebook/DiT-XL-2-256"
        raise ConfigError(
            f"config.prior.pretrained_dir is empty: set it to a {config.prior.kind} checkpoint folder in diffusers' layout "
            f"(or a hub repo id), e.g. --config.prior.pretrained_dir={example}."
        )
    _validate_start(config)
    from pqdjax.stages.teacher import KINDS as TEACHERS

    if config.teacher.get("kind", "torchvision") not in TEACHERS:
        raise ConfigError(f"config.teacher.kind must be one of {TEACHERS}, got {config.teacher.kind!r}.")
    if config.teacher.get("kind", "torchvision") == "torchvision" and not config.teacher.checkpoint and not tiny:
        raise ConfigError(
            "config.teacher.checkpoint is empty: set it to torchvision's ResNet-18 weights (.safetensors or .pth), "
            "e.g. --config.teacher.checkpoint=/models/resnet18-f37072fd.pth."
        )
    if config.decode.method != "diffusion":
        raise ConfigError(f"config.decode.method must be 'diffusion' (the prior's img2img) in the streamed pipeline, got {config.decode.method!r}.")
    if config.data.num_classes < 1:
        raise ConfigError(f"config.data.num_classes must be at least 1 (the first C classes of the dataset), got {config.data.num_classes}.")
    _validate_student_protocol(config.evaluate.train)
    _validate_seeds_and_weighting(config.evaluate)


def _validate_student_protocol(train: ml_collections.ConfigDict) -> None:
    from pqdjax.train.student import AUGMENTATIONS, LABELS

    augment, labels = train.get("augment", "crop_flip"), train.get("labels", "teacher")
    if augment not in AUGMENTATIONS:
        raise ConfigError(f"config.evaluate.train.augment must be one of {AUGMENTATIONS}, got {augment!r}.")
    if labels not in LABELS:
        raise ConfigError(f"config.evaluate.train.labels must be one of {LABELS}, got {labels!r}.")
    if labels == "hard" and augment == "rrc_cutmix" and train.get("cutmix_beta", 0.0) > 0:
        raise ConfigError("config.evaluate.train.labels='hard' cannot follow CutMix's pasted boxes: set cutmix_beta=0 or labels='teacher'.")


def _validate_seeds_and_weighting(evaluate: ml_collections.ConfigDict) -> None:
    seeds = tuple(evaluate.seeds)
    if not seeds or any(not isinstance(s, int) or s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"config.evaluate.seeds must be distinct non-negative integers, got {seeds}.")
    weighting = evaluate.get("weighting")  # its power and mix: pqdjax.config_fields
    if weighting is not None and weighting.get("normalize", "class") not in NORMALIZATIONS:
        raise ConfigError(f"config.evaluate.weighting.normalize must be one of {NORMALIZATIONS}, got {weighting.normalize!r}.")
    _validate_students(evaluate)


def _validate_students(evaluate: ml_collections.ConfigDict) -> None:
    """config.evaluate.model and every config.evaluate.cross_architectures entry name a known classifier and stem."""
    from pqdjax.models.classifiers import make_classifier
    from pqdjax.stages.evaluate import student_models

    for arch, model in student_models(evaluate):
        where = f"config.evaluate.cross_architectures.{arch}" if arch else "config.evaluate.model"
        if not isinstance(model, ml_collections.ConfigDict) or "arch" not in model:
            raise ConfigError(f"{where} must be a classifier config with an 'arch' (e.g. dict(arch='resnet10')), got {model!r}.")
        try:
            make_classifier(model, 2)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if model.get("stem", "imagenet") not in ("imagenet", "cifar"):
            raise ConfigError(f"{where}.stem must be 'imagenet' or 'cifar', got {model.stem!r}.")


def _validate_methods(config: ml_collections.ConfigDict) -> None:
    """config.methods: distinct base methods (KNOWN_METHODS), each with an optional decoder suffix; every pipeline."""
    methods = tuple(config.methods)
    if not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"config.methods must be distinct and non-empty, got {methods}.")
    for method in methods:
        base, decoder = split_method(method)
        if base not in KNOWN_METHODS or (decoder is not None and decoder not in KNOWN_DECODERS):
            raise ConfigError(
                f"unknown method {method!r} in config.methods; known: {KNOWN_METHODS}, each also with a "
                f"decoder suffix from {KNOWN_DECODERS} (e.g. 'ddoq_vae', 'random_vae')."
            )


def _validate_start(config: ml_collections.ConfigDict) -> None:
    """config.decode.diffusion.start (every pipeline: one pushforward, pqdjax.diffusion.pushforward)."""
    from pqdjax.diffusion.pushforward import STARTS

    start = config.decode.diffusion.get("start", "img2img")
    if start not in STARTS:
        raise ConfigError(f"config.decode.diffusion.start must be one of {STARTS}, got {start!r}.")


def _validate_decode(config: ml_collections.ConfigDict) -> None:
    if config.decode.method not in KNOWN_DECODERS:
        raise ConfigError(f"config.decode.method must be one of {KNOWN_DECODERS}, got {config.decode.method!r}.")
    _validate_start(config)
    if not {"diffusion", "sample"} & {decoder_of(m, config) for m in config.methods} and not config.get("export_pretrained"):
        return
    train = config.denoiser.train
    if not 0.0 <= train.class_dropout < 1.0:
        raise ConfigError(f"config.denoiser.train.class_dropout must be in [0, 1), got {train.class_dropout}.")
    if not 0.0 <= train.ema_decay < 1.0:
        raise ConfigError(f"config.denoiser.train.ema_decay must be in [0, 1) (0: no averaging), got {train.ema_decay}.")
    if train.ema_decay**train.steps > 0.05:
        raise ConfigError(
            f"config.denoiser.train.ema_decay={train.ema_decay} over {train.steps} steps leaves "
            f"{100 * train.ema_decay**train.steps:.0f}% of the random initialisation in the sampled weights; "
            "lower ema_decay (e.g. 0 for short runs) or train longer."
        )
    bad = [c for c in config.denoiser.model.block_out_channels if c < 32 or c % 32]
    if bad:
        raise ConfigError(
            f"config.denoiser.model.block_out_channels must be multiples of 32 (diffusers' GroupNorm has 32 groups), got {bad}."
        )


def _validate_export(config) -> None:
    """What the pretrain run ships: what it trains, plus components loaded from the folder it writes (kept)."""
    import os

    from pqdjax import pretrained

    folder = pretrained.resolve(config.export_pretrained)
    for section in ("prior", "teacher", "denoiser"):
        weights = config[section].get("weights")
        if weights and os.path.dirname(pretrained.resolve(weights)) != folder.rstrip(os.sep):
            raise ConfigError(
                f"config.{section}.weights={weights!r} is not in config.export_pretrained={config.export_pretrained!r}: "
                "the pretrain run ships what it trains and keeps only components of the folder it writes; set it to ''."
            )
    if config.denoiser.get("weights") and not config.prior.get("weights"):
        raise ConfigError("the pretrain run retrains the VAE but keeps the shipped denoiser, which models the old VAE's latents: set config.denoiser.weights to '' too.")
