"""The one option parser of every config file (pqdjax.config_options.parse_arg) and the configs built on it."""

import pytest

from configs import default, in1k
from pqdjax.config_options import parse_arg
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
