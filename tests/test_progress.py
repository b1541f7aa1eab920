import io
import logging

import numpy as np

from pqdjax import progress
from pqdjax.batching import map_batches


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (0, 12.4, 754, 7384)] == ["0s", "12s", "12m34s", "2h03m"]


def test_rate_and_eta_count_only_this_process(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    bar = progress.Progress("teacher", 1000, first=200, stream=io.StringIO())
    clock.now += 10.0  # 100 steps in 10 s since the resume at step 200
    assert bar.line(300, {"loss": 0.5}) == "teacher: 300/1000 steps (30%)  loss=0.5  10 steps/s, ETA 1m10s"


def test_live_line_on_a_terminal_only(monkeypatch, caplog):
    clock = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", clock)
    caplog.set_level(logging.INFO)
    terminal, pipe = Terminal(), io.StringIO()
    bars = [progress.Progress("vae", 10, log_every=5, stream=s) for s in (terminal, pipe)]
    for done in range(1, 11):
        clock.now += 1.0
        for bar in bars:
            bar.update(done)
    assert pipe.getvalue() == ""  # not a terminal: no live line
    assert "\r\x1b[K" in terminal.getvalue() and "vae: 3/10 steps" in terminal.getvalue()
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vae:")]
    # Each bar logs at 5 and 10 steps, whether or not on a terminal.
    assert [m.split("  ")[0] for m in logged] == ["vae: 5/10 steps (50%)"] * 2 + ["vae: 10/10 steps (100%)"] * 2


def test_map_batches_logs_every_tenth(caplog):
    caplog.set_level(logging.INFO)
    out = map_batches(lambda x: x * 2, np.arange(100), 7, progress="encode")
    np.testing.assert_array_equal(out, np.arange(100) * 2)
    logged = [r.getMessage().split(" items")[0] for r in caplog.records if r.getMessage().startswith("encode:")]
    # batches of 7 end at 7, 14, ...; a line each time a multiple of 10 is passed, and at the end.
    assert logged == [f"encode: {n}/100" for n in (14, 21, 35, 42, 56, 63, 70, 84, 91, 100)]
