"""Type and range of every numeric and switch field of the configs, checked before a run starts.

One table serves every config: a rule whose field a config does not have is
skipped (the ImageNet config counts epochs where the default one counts
steps). check_fields reports every bad field at once, each as
'config.<path> must be <what>, got <value>', so a user fixes a command line
in one go; pqdjax.config_checks adds the checks that relate several fields
(methods, decoders, the pretrained files).

Booleans and 'auto' arrive from the command line as the user types them
(`--config.fast_conv_gradients=False` gives the string 'False', the field
being a string so that it also takes 'auto'): as_switch reads
True/False/true/false/1/0/auto.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from pqdjax.errors import ConfigError

INT, FLOAT = "an integer", "a number"

# (path, kind, low, high, low_open): kind INT or FLOAT; low/high None for unbounded; low_open: low excluded.
_TRAINERS = ("prior.train", "teacher.train", "evaluate.train", "denoiser.train")
RULES: tuple[tuple[str, str, float | None, float | None, bool], ...] = (
    ("seed", INT, 0, None, False),
    ("data.train_per_class", INT, 0, None, False),  # 0: all
    ("data.test_size", INT, 0, None, False),  # 0: all
    ("data.validation_per_class", INT, 1, None, False),
    ("encode.batch_size", INT, 1, None, False),
    ("encode.flush_every", INT, 1, None, False),  # batches between resumable progress records
    ("quantize.max_iter", INT, 1, None, False),
    ("quantize.tol", FLOAT, 0, None, False),
    ("quantize.n_init", INT, 1, None, False),
    ("quantize.clvq_batch_size", INT, 1, None, False),
    ("quantize.barycenter_relative_epsilon", FLOAT, 0, None, True),
    ("quantize.w2_exact_max_size", INT, 0, None, False),
    ("quantize.w2_relative_epsilon", FLOAT, 0, None, True),
    ("quantize.w2_max_iterations", INT, 1, None, False),
    ("quantize.classes_per_call", INT, 1, None, False),
    ("quantize.batch_size", INT, 1, None, False),  # streamed CLVQ (with quantize.epochs)
    ("quantize.epochs", INT, 1, None, False),
    ("decode.diffusion.strength", FLOAT, 0, 1, False),
    ("decode.diffusion.guidance", FLOAT, 0, None, False),
    ("decode.diffusion.steps", INT, 1, None, False),
    ("decode.diffusion.batch_size", INT, 1, None, False),
    ("prior.train.kl_weight", FLOAT, 0, None, False),
    ("evaluate.train.temperature", FLOAT, 0, None, True),
    ("evaluate.full_data_epochs", INT, 0, None, False),  # 0: no full-data student
    ("evaluate.train.cutmix_beta", FLOAT, 0, None, False),
    ("evaluate.weighting.power", FLOAT, 0, None, False),  # 1: the Voronoi masses, 0: uniform
    ("evaluate.weighting.mix", FLOAT, 0, 1, False),  # 1: the weights as they are, 0: uniform
    ("distributed.initialization_timeout", INT, 1, None, False),
    ("distributed.heartbeat_timeout_seconds", INT, 1, None, False),
    ("denoiser.train.class_dropout", FLOAT, 0, 1, False),
    ("denoiser.train.ema_decay", FLOAT, 0, 1, False),
    # models (a '*' segment: every entry of that dict)
    ("teacher.model.width", INT, 1, None, False),
    ("teacher.model.depth", INT, 1, None, False),
    ("evaluate.model.width", INT, 1, None, False),
    ("evaluate.model.depth", INT, 1, None, False),
    ("evaluate.cross_architectures.*.width", INT, 1, None, False),
    ("evaluate.cross_architectures.*.depth", INT, 1, None, False),
    ("evaluate.cross_architectures.*.width_multiplier", FLOAT, 0, None, True),
    ("prior.vae.latent_channels", INT, 1, None, False),
    ("prior.vae.layers_per_block", INT, 1, None, False),
    ("prior.vae.patch", INT, 1, None, False),
    ("denoiser.model.attention_head_dim", INT, 1, None, False),
    ("denoiser.model.context_dim", INT, 1, None, False),
    ("denoiser.model.layers_per_block", INT, 1, None, False),
    ("denoiser.model.num_train_timesteps", INT, 1, None, False),
    ("denoiser.model.beta_start", FLOAT, 0, 1, True),
    ("denoiser.model.beta_end", FLOAT, 0, 1, True),
    # the streamed pipelines
    ("data.batch_size_per_device", INT, 1, None, False),
    ("data.encode_crop", INT, 1, None, False),
    ("data.encode_resize", INT, 1, None, False),
    ("data.eval_crop", INT, 1, None, False),
    ("data.eval_resize", INT, 1, None, False),
    ("data.mock_examples", INT, 0, None, False),  # 0: the real dataset
    ("data.num_classes", INT, 1, None, False),
    ("data.train_limit", INT, 0, None, False),  # 0: all
    ("data.test_limit", INT, 0, None, False),  # 0: all
    ("decode.image_size", INT, 1, None, False),
    ("evaluate.train.image_size", INT, 1, None, False),
    ("prior.latent_scale", FLOAT, 0, None, True),
    ("data.image_size", INT, 1, None, False),  # configs/imagefolder.py
    ("sweep.min_teacher_agreement", FLOAT, 0, 1, False),
    ("sweep.min_cell_consistency", FLOAT, 0, 1, False),
) + tuple(
    rule
    for trainer in _TRAINERS
    for rule in (
        (f"{trainer}.steps", INT, 1, None, False),
        (f"{trainer}.epochs", INT, 1, None, False),  # 0 allowed beside a steps field: 'use steps' (check_fields)
        (f"{trainer}.batch_size", INT, 1, None, False),
        (f"{trainer}.learning_rate", FLOAT, 0, None, True),
        (f"{trainer}.warmup_steps", INT, 0, None, False),
        (f"{trainer}.weight_decay", FLOAT, 0, None, False),
        (f"{trainer}.crop_padding", INT, 0, None, False),
        (f"{trainer}.log_every", INT, 1, None, False),
        (f"{trainer}.checkpoint_every", INT, 0, None, False),
    )
)
SWITCHES = ("fast_conv_gradients", "distributed.enabled")  # True, False or 'auto'
# (path, test, what it must be): fields whose allowed values are not one range
SPECIAL: tuple[tuple[str, Any, str], ...] = (
    ("data.channels", lambda v: type(v) is int and v in (1, 3), "1 (grey) or 3 (RGB)"),
    ("data.test_fraction", lambda v: type(v) in (int, float) and 0 <= v < 1, "a number in [0, 1)"),
)


# Numeric fields no rule covers, each with the reason: pqdjax.parallel.check_distributed_fields checks them together
# (-1: not given).
UNRULED = ("distributed.num_processes", "distributed.process_id")


def _lookup(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
    node = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _expand(config: ml_collections.ConfigDict, path: str) -> list[str]:
    """The concrete paths of `path` in `config`: a '*' segment stands for every key of that dict."""
    head, star, tail = path.partition(".*.")
    if not star:
        return [path]
    present, node = _lookup(config, head)
    if not present or not isinstance(node, ml_collections.ConfigDict):
        return []
    return [p for key in node for p in _expand(config, f"{head}.{key}.{tail}")]


def _describe(kind: str, low, high, low_open: bool) -> str:
    if low is not None and high is not None:
        return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}]"
    if low is not None:
        return f"{kind} {'>' if low_open else '>='} {low:g}"
    return kind


def _violates(value: Any, kind: str, low, high, low_open: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    if kind == INT and not isinstance(value, int):
        return True
    if not math.isfinite(value):
        return True
    if low is not None and (value < low or (low_open and value == low)):
        return True
    return high is not None and value > high


def as_switch(value: Any) -> bool | str:
    """True, False or 'auto' from a config value as a user types it; anything else is None."""
    if isinstance(value, bool):
        return value
    spelled = str(value).strip().lower()
    return {"true": True, "1": True, "false": False, "0": False, "auto": "auto"}.get(spelled)


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Raises one ConfigError naming every field outside its type and range (RULES, SWITCHES)."""
    problems = []
    for pattern, kind, low, high, low_open in RULES:
        for path in _expand(config, pattern):
            present, value = _lookup(config, path)
            lowest = low
            if path.endswith(".epochs") and _lookup(config, path[: -len("epochs")] + "steps")[0]:
                lowest = 0  # a trainer with both: epochs 0 means its steps (pqdjax.train.loop.training_steps)
            if present and _violates(value, kind, lowest, high, low_open):
                problems.append(f"config.{path} must be {_describe(kind, lowest, high, low_open)}, got {value!r}")
    for trainer in _TRAINERS:
        present, train = _lookup(config, trainer)
        if present and "steps" in train and "warmup_steps" in train and not _violates(train.warmup_steps, INT, 0, None, False):
            if isinstance(train.steps, int) and train.warmup_steps > train.steps:
                problems.append(f"config.{trainer}.warmup_steps must be at most its steps ({train.steps}), got {train.warmup_steps}")
    present, strengths = _lookup(config, "decode.figure_strengths")
    if present:
        bad = [s for s in strengths if _violates(s, FLOAT, 0, 1, False)]
        if bad:
            problems.append(f"config.decode.figure_strengths must be numbers in [0, 1], got {tuple(strengths)}")
    for path, test, what in SPECIAL:
        present, value = _lookup(config, path)
        if present and not test(value):
            problems.append(f"config.{path} must be {what}, got {value!r}")
    for path in SWITCHES:
        present, value = _lookup(config, path)
        if present and as_switch(value) is None:
            problems.append(f"config.{path} must be True, False or 'auto', got {value!r}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")
