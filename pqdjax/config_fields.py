"""Type and range of every numeric and switch field of the configs, checked before a run starts.

One table serves every config: a rule whose field a config does not have is
skipped (the ImageNet config counts epochs where the default one counts
steps). check_fields reports every bad field at once, each as
'config.<path> must be <what>, got <value>', so a user fixes a command line
in one go; pqdjax.config_checks adds the checks that relate several fields
(methods, decoders, the pretrained files).

Booleans and 'auto' arrive from the command line as the user types them
(`--config.fast_conv_gradients=False` gives the string 'False' when the
default is 'auto'): as_switch reads True/False/true/false/1/0/auto.
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
    ("quantize.max_iter", INT, 1, None, False),
    ("quantize.tol", FLOAT, 0, None, False),
    ("quantize.n_init", INT, 1, None, False),
    ("quantize.clvq_batch_size", INT, 1, None, False),
    ("quantize.barycenter_relative_epsilon", FLOAT, 0, None, True),
    ("quantize.w2_exact_max_size", INT, 0, None, False),
    ("quantize.w2_relative_epsilon", FLOAT, 0, None, True),
    ("quantize.w2_max_iterations", INT, 1, None, False),
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


def _lookup(config: ml_collections.ConfigDict, path: str) -> tuple[bool, Any]:
    node = config
    for part in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


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
    for path, kind, low, high, low_open in RULES:
        present, value = _lookup(config, path)
        if path.endswith(".epochs") and _lookup(config, path[: -len("epochs")] + "steps")[0]:
            low = 0  # a trainer with both: epochs 0 means its steps (pqdjax.train.loop.training_steps)
        if present and _violates(value, kind, low, high, low_open):
            problems.append(f"config.{path} must be {_describe(kind, low, high, low_open)}, got {value!r}")
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
    for path in SWITCHES:
        present, value = _lookup(config, path)
        if present and as_switch(value) is None:
            problems.append(f"config.{path} must be True, False or 'auto', got {value!r}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")
