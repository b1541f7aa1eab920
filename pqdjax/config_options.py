"""The one parser of the options after a config file's colon, shared by every file in configs/.

    python -m pqdjax.main --config=configs/in1k.py:ipc=50,quantizer=lloyd,runlocal

`parse_arg(arg, name, **defaults)` (in the spirit of big_vision's
configs/common.py) reads comma-separated options: `key=value` takes the type
of the default (int, float, str; a bool from true/false/1/0), and a bare
`key` sets a bool default to True. Any other name, a value of the wrong type
or a value outside `choices` is a one-line ConfigError naming the config file
and the known options.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence

import ml_collections

from pqdjax.errors import ConfigError

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _convert(name: str, key: str, value: str, default):
    if isinstance(default, bool):
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{name}: option {key} is a switch (write {key} or {key}=false), got {value!r}.")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                return kind(value)
            except ValueError:
                raise ConfigError(f"{name}: option {key} must be {'an int' if kind is int else 'a number'}, got {value!r}.") from None
    return value


def parse_arg(arg: str | None, name: str, /, choices: Mapping[str, Sequence] | None = None, **defaults) -> ml_collections.ConfigDict:
    """The options of `arg` ('a,b=3') over `defaults`; name: the config file, for messages.

    choices: option -> its allowed values (checked after conversion).
    """
    options = dict(defaults)
    for item in (a.strip() for a in (arg or "").split(",")):
        if not item:
            continue
        key, has_value, value = item.partition("=")
        if key not in defaults:
            continue  # collected below, all unknown names in one message
        if not has_value:
            if not isinstance(defaults[key], bool):
                raise ConfigError(f"{name}: option {key} needs a value ({key}=...), e.g. {key}={defaults[key]}.")
            options[key] = True
        else:
            options[key] = _convert(name, key, value, defaults[key])
    unknown = sorted({a.strip().partition("=")[0] for a in (arg or "").split(",") if a.strip()} - set(defaults))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {name}; known: {', '.join(defaults)}.")
    for key, allowed in (choices or {}).items():
        if options[key] not in allowed:
            raise ConfigError(f"{name}: {key} must be one of {tuple(allowed)}, got {options[key]!r}.")
    return ml_collections.ConfigDict(options)


def from_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of the config file at `path`: how one config file builds on another (configs/imagefolder.py on default.py)."""
    spec = importlib.util.spec_from_file_location(f"pqdjax_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def distributed_config() -> ml_collections.ConfigDict:
    """config.distributed of every config: how the processes of a multi-process run find each other
    (pqdjax.parallel.initialize_distributed).

    enabled: 'auto' (a cluster JAX detects: TPU pod, SLURM, Open MPI), True or False; by hand (or
    pqdjax.launch_local): coordinator_address HOST:PORT of process 0, num_processes, process_id. Timeouts in
    seconds: all processes must join within initialization_timeout; a process silent for
    heartbeat_timeout_seconds counts as dead and the others stop.
    """
    return ml_collections.ConfigDict(dict(
        enabled="auto", coordinator_address="", num_processes=-1, process_id=-1,
        initialization_timeout=300, heartbeat_timeout_seconds=100,
    ))
