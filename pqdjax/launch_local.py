r"""Starts one pqdjax run as N JAX processes on this machine (jax.distributed over 127.0.0.1, gloo collectives on CPU).

    python -m pqdjax.launch_local --processes=2 --devices_per_process=2 -- \
        --config=configs/in1k.py:runlocal --workdir=runs/in1k_2proc

Everything after `--` goes to `python -m pqdjax.main` in every process, with
--config.distributed.{enabled, coordinator_address, num_processes, process_id}
added (a free port on 127.0.0.1) and, with --devices_per_process on a CPU,
XLA_FLAGS=--xla_force_host_platform_device_count=N. This is what a cluster's
launcher (srun, a TPU pod's gcloud ... --worker=all) does across machines; here
it serves tests, debugging and a machine's several accelerators.

Each process's output goes to {process_logs}/process{i}.log (default: the
workdir's launch/ folder). When a process fails, the others get
--grace_seconds to stop by themselves (the run's own barriers and collectives
notice a lost peer), then are terminated; the launcher exits with the first
failure's one-line error and the logs' paths. Exit status 0 only if every
process succeeded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import app, flags

_PROCESSES = flags.DEFINE_integer("processes", 2, "Number of JAX processes.", lower_bound=1)
_DEVICES = flags.DEFINE_integer("devices_per_process", 0, "CPU devices per process (XLA's host platform device count); 0: leave as is.", lower_bound=0)
_PORT = flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1; 0: a free one.", lower_bound=0)
_LOG_DIR = flags.DEFINE_string("process_logs", None, "Where process{i}.log go; default: {workdir}/launch.")
_GRACE = flags.DEFINE_float("grace_seconds", 30.0, "After a process fails, how long the others may take to stop before they are terminated.")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_command(main_args: Sequence[str], process_id: int, num_processes: int, port: int) -> list[str]:
    """The command line of process `process_id` of `num_processes`."""
    return [sys.executable, "-m", "pqdjax.main", *main_args,
            "--config.distributed.enabled=True", f"--config.distributed.coordinator_address=127.0.0.1:{port}",
            f"--config.distributed.num_processes={num_processes}", f"--config.distributed.process_id={process_id}"]


def process_env(devices_per_process: int) -> dict[str, str]:
    env = dict(os.environ)
    if devices_per_process:
        flags_ = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags_ + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    return env


_JAX_ABORT = "Terminating process because the JAX distributed service detected fatal errors"


def error_line(log_path: str) -> str:
    """What stopped a process, in one line: its last 'pqdjax: error: ...' line; JAX's abort when a peer died or
    never joined; else the log's last non-empty line."""
    try:
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("pqdjax: error:")]
    if errors:
        return errors[-1]
    if any(_JAX_ABORT in line for line in lines):
        return ("JAX's distributed service stopped the process: another process died, or not all processes joined within "
                "config.distributed.initialization_timeout")
    return lines[-1] if lines else ""


def launch(main_args: Sequence[str], num_processes: int, devices_per_process: int = 0, port: int = 0,
           log_dir: str | None = None, grace_seconds: float = 30.0, poll_seconds: float = 0.2) -> tuple[int, list[str]]:
    """Runs the processes to the end; returns (exit status, one line per failed process)."""
    workdir = next((a.split("=", 1)[1] for a in main_args if a.startswith("--workdir=")), None)
    log_dir = log_dir or (os.path.join(workdir, "launch") if workdir else "launch_logs")
    os.makedirs(log_dir, exist_ok=True)
    port = port or free_port()
    env = process_env(devices_per_process)
    logs = [os.path.join(log_dir, f"process{i}.log") for i in range(num_processes)]
    procs = []
    for i in range(num_processes):
        with open(logs[i], "w") as log:
            procs.append(subprocess.Popen(process_command(main_args, i, num_processes, port), stdout=log, stderr=subprocess.STDOUT,
                                          env=env, start_new_session=True))
    failed_at = None
    while True:
        codes = [p.poll() for p in procs]  # every process polled, so a failure is seen whichever one it is
        if all(code is not None for code in codes):
            break
        if failed_at is None and any(code not in (None, 0) for code in codes):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_seconds:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            break
        time.sleep(poll_seconds)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    failures = [f"process {i} (exit {p.returncode}, log {logs[i]}): {error_line(logs[i])}" for i, p in enumerate(procs) if p.returncode != 0]
    return (1 if failures else 0), failures


def main(argv: list[str]) -> None:
    main_args = argv[1:]
    if not any(a.startswith("--workdir=") for a in main_args) or not any(a.startswith("--config=") for a in main_args):
        raise app.UsageError("pass pqdjax.main's --config=... and --workdir=... after `--`.")
    status, failures = launch(main_args, _PROCESSES.value, _DEVICES.value, _PORT.value, _LOG_DIR.value, _GRACE.value)
    for line in failures:
        print(f"pqdjax.launch_local: {line}", file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    app.run(main)
