"""The project's errors that describe a problem with a run's input, not a bug.

`pqdjax.main` shows these as one line (`pqdjax: error: ...`) and every other
exception with its traceback, so a bug in the code is never disguised as bad
input. A message names the problem and what to do about it.

    InputError          the base: config, data, weights, checkpoints, workdir
      ConfigError       a config value is out of range, unknown or inconsistent
      DatasetNotFoundError, DatasetFormatError   the data is missing, or unusable as it is
    NonFiniteError      a run diverged: a loss, a latent or a metric became NaN or inf
"""

from __future__ import annotations


class InputError(ValueError):
    """A run's input (config, data, weights, checkpoint, workdir) cannot be used; the message says how to fix it."""


class ConfigError(InputError):
    """A config value is out of range, unknown or inconsistent with another."""


class DatasetNotFoundError(InputError, FileNotFoundError):
    """The dataset is in none of the places the config names or pqdjax looks."""


class DatasetFormatError(InputError):
    """The images or labels have a shape, type or range the models cannot take, or a file cannot be read."""


class NonFiniteError(FloatingPointError):
    """A loss, latent or metric became NaN or inf."""
