r"""Runs a pqdjax experiment: distil a dataset and evaluate it.

    python -m pqdjax.main --config=configs/default.py --workdir=runs/default
    python -m pqdjax.main --config=configs/default.py:table --workdir=runs/table
    python -m pqdjax.main --config=configs/default.py --workdir=runs/x --config.evaluate.seeds=0,1,2

Every stage writes its artifact under --workdir; rerunning the same command
skips the stages that are complete, so an interrupted run resumes.
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from pqdjax import parallel, pipeline
from pqdjax.models import silence_diffusers_deprecation

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
    parallel.initialize_distributed(_CONFIG.value.get("distributed"))  # multi-host: before any device is used
    results = pipeline.run(_CONFIG.value, _WORKDIR.value)
    print(results["table"])


if __name__ == "__main__":
    app.run(main)
