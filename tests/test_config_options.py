"""The one option parser of every config file (pqdjax.config_options.parse_arg) and the configs built on it."""

import os

import ml_collections
import pytest

from configs import default, in1k
from pqdjax.config_options import from_file, parse_arg
from pqdjax.errors import ConfigError


def test_options_take_the_type_of_their_default():
    options = parse_arg(" n=5, rate=0.5,name=x,flag", "c.py", n=1, rate=0.1, name="a", flag=False, other=True)
    assert (options.n, options.rate, options.name, options.flag, options.other) == (5, 0.5, "x", True, True)
    assert isinstance(options.n, int) and isinstance(options.rate, float)
    assert parse_arg("other=false", "c.py", other=True).other is False
    assert parse_arg(None, "c.py", n=1).n == 1 and parse_arg("", "c.py", n=1).n == 1


@pytest.mark.parametrize("arg, message", [
    ("bogus,n=2,zz=1", r"unknown option\(s\) \['bogus', 'zz'\] for c.py; known: n, flag, kind"),
    ("n=two", "c.py: option n must be an int, got 'two'"),
    ("n", r"c.py: option n needs a value \(n=...\), e.g. n=1"),
    ("flag=perhaps", "c.py: option flag is a switch"),
    ("kind=c", r"c.py: kind must be one of \('a', 'b'\), got 'c'"),
])
def test_bad_options_are_config_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_arg(arg, "c.py", choices={"kind": ("a", "b")}, n=1, flag=False, kind="a")


def test_config_files_use_it():
    assert default.get_config("table,runlocal").ipcs == (2,)  # runlocal shrinks the table
    assert default.get_config("table").ipcs == (1, 10, 50)
    assert in1k.get_config("ipc=50,student=resnet50").evaluate.model.arch == "resnet50"
    with pytest.raises(ConfigError, match="unknown option"):
        default.get_config("ipc=5")


@pytest.mark.parametrize("field, value, message", [
    ("power", -0.5, r"config.evaluate.weighting.power must be a number >= 0, got -0.5"),
    ("mix", 1.5, r"config.evaluate.weighting.mix must be a number in \[0, 1\], got 1.5"),
    ("normalize", "sample", r"config.evaluate.weighting.normalize must be one of \('class', 'batch'\), got 'sample'"),
])
@pytest.mark.parametrize("config_file", [default, in1k])
def test_a_bad_weighting_is_refused_by_name(config_file, field, value, message):
    from pqdjax.config_checks import validate_config, validate_streamed_config

    config = config_file.get_config("runlocal")
    config.evaluate.weighting[field] = value
    validate = validate_streamed_config if config_file is in1k else validate_config
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_negative_evaluation_seeds_are_refused():
    from pqdjax.config_checks import validate_config

    config = default.get_config("runlocal")
    config.evaluate.seeds = (0, -1)
    with pytest.raises(ConfigError, match="config.evaluate.seeds must be distinct non-negative integers"):
        validate_config(config)


# -- field types and ranges (pqdjax.config_fields) -------------------------------


def test_every_rule_names_a_field_of_some_config():
    """A misspelt path in the table would be skipped silently: each must exist in the default or the ImageNet config."""
    from pqdjax.config_fields import RULES, _expand, _lookup

    configs = [default.get_config("cross_arch"), in1k.get_config(), default.get_config("sweep")]
    configs.append(from_file(os.path.join(os.path.dirname(__file__), "..", "configs", "imagefolder.py")))
    configs[0].evaluate.cross_architectures.convnet5 = ml_collections.ConfigDict(dict(arch="convnet", width=32, depth=5))
    missing = [path for path, *_ in RULES if not any(_lookup(c, p)[0] for c in configs for p in _expand(c, path))
               and not path.endswith((".epochs", ".crop_padding", ".weight_decay", ".warmup_steps", ".steps"))]
    assert not missing
    # the per-trainer fields exist where each trainer counts them
    for path in ("prior.train.steps", "teacher.train.crop_padding", "evaluate.train.weight_decay", "denoiser.train.warmup_steps"):
        assert _lookup(default.get_config(), path)[0], path
    assert _lookup(in1k.get_config(), "evaluate.train.epochs")[0]


def _numeric_leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _numeric_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield f"{prefix}{key}"


def test_every_numeric_field_of_every_config_has_a_rule():
    """Each numeric field of each config file, with each option that adds fields, is checked by a rule of the table
    (or named in UNRULED with its reason): a field added without one fails here."""
    from pqdjax.config_fields import RULES, SPECIAL, UNRULED, _expand

    configs = [default.get_config(), default.get_config("cross_arch,runlocal"), default.get_config("weighting"),
               default.get_config("sweep"), in1k.get_config(), in1k.get_config("prior=dit")]
    for name in ("imagefolder", "cifar10", "imagenette", "imagewoof"):
        configs.append(from_file(os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.py")))
    uncovered = set()
    for config in configs:
        ruled = {path for pattern, *_ in RULES for path in _expand(config, pattern)} | {path for path, *_ in SPECIAL}
        uncovered |= {path for path in _numeric_leaves(config) if path not in ruled and path not in UNRULED}
    assert not uncovered, sorted(uncovered)


def test_a_rule_with_a_star_checks_every_entry():
    from pqdjax.config_checks import validate_config

    config = default.get_config("cross_arch,runlocal")
    config.evaluate.cross_architectures.resnet10.width = 0
    config.evaluate.cross_architectures.mobilenet_v2.width_multiplier = -0.5
    config.teacher.model.depth = -1
    config.data.channels = 2  # a field of configs/imagefolder.py, checked wherever it is
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    for expected in ("config.evaluate.cross_architectures.resnet10.width must be an integer >= 1, got 0",
                     "config.evaluate.cross_architectures.mobilenet_v2.width_multiplier must be a number > 0, got -0.5",
                     "config.teacher.model.depth must be an integer >= 1, got -1",
                     "config.data.channels must be 1 (grey) or 3 (RGB), got 2"):
        assert expected in str(error.value)


def test_every_bad_field_is_named_in_one_error():
    """The inputs a review found accepted silently or failing late, refused together before any work."""
    from pqdjax.config_checks import validate_config

    config = default.get_config("runlocal")
    validate_config(config)
    config.data.train_per_class = -1  # used to drop each class's last image
    config.data.test_size = -1  # used to fail ~100 s later with 'range() arg 3 must not be zero'
    config.quantize.tol = -1.0
    config.quantize.max_iter = 0
    config.prior.train.kl_weight = -1.0
    config.teacher.train.weight_decay = -0.1
    config.evaluate.train.warmup_steps = 50  # more than its 3 steps
    config.decode.figure_strengths = (0.5, 1.5)  # used to be clipped
    with pytest.raises(ConfigError) as error:
        validate_config(config)
    message = str(error.value)
    for expected in (
        "config.data.train_per_class must be an integer >= 0, got -1",
        "config.data.test_size must be an integer >= 0, got -1",
        "config.quantize.tol must be a number >= 0, got -1.0",
        "config.quantize.max_iter must be an integer >= 1, got 0",
        "config.prior.train.kl_weight must be a number >= 0, got -1.0",
        "config.teacher.train.weight_decay must be a number >= 0, got -0.1",
        "config.evaluate.train.warmup_steps must be at most its steps (3), got 50",
        "config.decode.figure_strengths must be numbers in [0, 1], got (0.5, 1.5)",
    ):
        assert expected in message
    assert "\n" not in message and message.count("; ") == 7


def test_epochs_and_learning_rate_of_the_imagenet_student():
    from pqdjax.config_checks import validate_streamed_config

    config = in1k.get_config("runlocal")
    config.evaluate.train.epochs = 0
    config.evaluate.train.learning_rate = 0.0
    with pytest.raises(ConfigError, match=r"config.evaluate.train.epochs must be an integer >= 1, got 0; "
                                          r"config.evaluate.train.learning_rate must be a number > 0, got 0.0"):
        validate_streamed_config(config)


@pytest.mark.parametrize("typed, meant", [("False", False), ("false", False), ("0", False), ("True", True), ("true", True), (True, True)])
def test_switches_read_as_typed_on_the_command_line(typed, meant):
    from pqdjax.config_checks import validate_config
    from pqdjax.models.fast_conv import wanted_on_this_backend

    assert wanted_on_this_backend(typed) is meant
    config = default.get_config("runlocal")
    config.fast_conv_gradients = typed if isinstance(typed, str) else "auto"
    validate_config(config)
    config.fast_conv_gradients = "perhaps"
    with pytest.raises(ConfigError, match="config.fast_conv_gradients must be True, False or 'auto', got 'perhaps'"):
        validate_config(config)


@pytest.mark.parametrize("field, value, message", [
    ("augment", "mixup", r"config.evaluate.train.augment must be one of \('crop_flip', 'rrc_cutmix'\), got 'mixup'"),
    ("labels", "soft", r"config.evaluate.train.labels must be one of \('teacher', 'hard'\), got 'soft'"),
])
def test_a_bad_student_protocol_is_refused_by_name(field, value, message):
    from pqdjax.config_checks import validate_config

    config = default.get_config("runlocal")
    config.evaluate.train[field] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
    config = default.get_config("runlocal")
    config.evaluate.train.update(augment="rrc_cutmix", labels="hard")
    with pytest.raises(ConfigError, match="cannot follow CutMix"):
        validate_config(config)
    config.evaluate.train.cutmix_beta = 0.0
    validate_config(config)


CONFIG_FILES = sorted(f for f in os.listdir(os.path.join(os.path.dirname(__file__), "..", "configs")) if f.endswith(".py") and f[0] != "_")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_file_builds_and_its_runlocal_passes_its_pipelines_checks(name):
    from pqdjax import pipeline
    from pqdjax.config_checks import validate_config, validate_streamed_config
    from pqdjax.config_options import from_file

    path = os.path.join(os.path.dirname(__file__), "..", "configs", name)
    full, local = from_file(path), from_file(path, "runlocal")
    assert pipeline.kind_of(full) == pipeline.kind_of(local)
    (validate_streamed_config if pipeline.kind_of(local) == "streamed" else validate_config)(local)
    assert set(pipeline.stage_components(local)) >= {"prior", "teacher", "encode", "quantize", "decode", "evaluate", "report"}
