r"""Runs a pqdjax experiment: distil a dataset and evaluate it.

    python -m pqdjax.main --config=configs/default.py --workdir=runs/default
    python -m pqdjax.main --config=configs/default.py:table --workdir=runs/table
    python -m pqdjax.main --config=configs/default.py --workdir=runs/x --config.evaluate.seeds=0,1,2
    python -m pqdjax.main --config=configs/default.py:sweep --workdir=runs/sweep       (pqdjax.sweep)
    python -m pqdjax.main --config=configs/default.py:weighting --workdir=runs/weighting (pqdjax.weighting_ablation)
    python -m pqdjax.main --config=configs/default.py:pretrain --workdir=runs/pretrain (the shipped weights)

Every stage writes its artifact under --workdir; rerunning the same command
skips the stages that are complete, so an interrupted run resumes.
"""

import logging as std_logging
import os
import re
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pqdjax import parallel, pipeline, sweep, weighting_ablation
from pqdjax.errors import InputError, NonFiniteError
from pqdjax.models import silence_diffusers_deprecation

# The project's errors about a run's input (config, data, weights, workdir) and a
# diverging run say how to fix them: shown as one line. Anything else is a bug
# and keeps its traceback.
INPUT_ERRORS = (InputError, NonFiniteError)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, with an optional ':arg'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for the run's artifacts and results.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_third_party_info(record) -> bool:
    """Drops INFO records of orbax (a dozen lines per checkpoint) from the log."""
    return record.levelno > std_logging.INFO or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_quiet_third_party_info)
    silence_diffusers_deprecation()
    try:
        if not (_CONFIG.value.get("sweep") or _CONFIG.value.get("weighting_ablation")):
            pipeline.check_config(_CONFIG.value)  # before the processes connect: each stops at a bad config itself
        parallel.initialize_distributed(_CONFIG.value.get("distributed"))  # multi-host: before any device is used
        if _CONFIG.value.get("sweep"):
            results = sweep.run(_CONFIG.value, _WORKDIR.value)
        elif _CONFIG.value.get("weighting_ablation"):
            results = weighting_ablation.run(_CONFIG.value, _WORKDIR.value)
        else:
            results = pipeline.run(_CONFIG.value, _WORKDIR.value)
    except INPUT_ERRORS as e:
        logging.debug("the run stopped", exc_info=True)
        _stop(f"pqdjax: error: {_one_line(e)}")
    except jax.errors.JaxRuntimeError as e:
        if not lost_peer(e):
            _stop_on_bug()
            raise
        logging.info("the run stopped", exc_info=True)
        cause = " ".join(re.sub(r"\[[^\]]*\]", "", str(e).splitlines()[0]).split())[:160]
        _stop(f"pqdjax: error: process {jax.process_index()} of {jax.process_count()} lost contact with another process "
              f"({cause}); see the other processes' logs, then start all of them again: completed stages are reused.")
    except Exception:
        _stop_on_bug()
        raise
    print(results["table"])


def _multi_process() -> bool:
    return jax.distributed.is_initialized() and jax.process_count() > 1


def _stop(message: str) -> None:
    """Ends the run with a one-line error. In a multi-process run not by sys.exit: JAX's exit handler would wait at
    the distributed shutdown barrier for the other processes (stuck in a collective of their own) until its timeout;
    exiting at once lets their next collective or heartbeat fail, and them stop with their own line."""
    if not _multi_process():
        sys.exit(message)
    print(message, file=sys.stderr, flush=True)
    os._exit(1)


def _stop_on_bug() -> None:
    """A bug in a multi-process run: its traceback, then the process exits at once (see _stop)."""
    if _multi_process():
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)


# A collective or barrier of a multi-process run that failed because a peer went away (gloo, the coordination service).
_PEER_FAILURES = ("gloo", "DEADLINE_EXCEEDED", "UNAVAILABLE", "Connection reset", "Connection closed", "heartbeat", "barrier")


def lost_peer(error: BaseException) -> bool:
    """Whether a JaxRuntimeError of a multi-process run is a lost peer (shown as one line) rather than a bug."""
    return jax.process_count() > 1 and any(marker.lower() in str(error).lower() for marker in _PEER_FAILURES)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _deepest_input_error(error: BaseException | None) -> InputError | None:
    """The innermost InputError in an exception's context chain (ml_collections re-raises get_config's errors wrapped)."""
    found = None
    while error is not None:
        if isinstance(error, InputError):
            found = error
        error = error.__context__
    return found


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error for a mistyped --config.field override."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        cause = _deepest_input_error(e)  # raised by the config file's get_config (e.g. an unknown option)
        if cause is not None:
            sys.exit(f"pqdjax: error: {_one_line(cause)}")
        sys.exit(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.")
    except (KeyError, AttributeError) as e:  # ml_collections: an override names no field of the config
        message = e
        while isinstance(message, BaseException) and message.args:
            message = message.args[0]
        field, _, hint = str(message).partition("\n")
        overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        sys.exit(
            f"pqdjax: error: the config has no field {field} (in {', '.join(overrides)}). "
            + (f"{hint} " if hint else "") + "Override only fields the config file defines (see its get_config)."
        )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
