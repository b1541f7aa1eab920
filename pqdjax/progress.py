"""Progress of long loops (training steps, encoding batches): rate and ETA.

On a terminal, a live line on stderr is redrawn at most a few times a
second; everywhere, a log line is written every `log_every` units and at the
end, so that a log file holds the progress without the live line's noise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

from absl import logging


def format_seconds(seconds: float) -> str:
    """12 -> '12s', 754 -> '12m34s', 7384 -> '2h03m'."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Reports `done` out of `total` units of a named loop, with its rate and ETA.

    `first` is where the loop starts (a resumed training run starts past 0);
    the rate counts only the units done by this process.
    """

    def __init__(self, name: str, total: int, *, unit: str = "steps", log_every: int = 0, first: int = 0,
                 stream=None, min_redraw_seconds: float = 0.25):
        self.name, self.total, self.unit, self.log_every = name, total, unit, log_every
        self.first = first
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_redraw_seconds = min_redraw_seconds
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        self._last_logged = first

    def rate(self, done: int) -> float:
        """Units per second done by this process so far (0 before the first)."""
        elapsed = time.perf_counter() - self.start
        return (done - self.first) / elapsed if elapsed > 0 and done > self.first else 0.0

    def line(self, done: int, metrics: Mapping[str, float] | None = None) -> str:
        """'name: 120/400 steps (30%)  loss=0.52  12.3 steps/s, ETA 23s'."""
        rate = self.rate(done)
        eta = format_seconds((self.total - done) / rate) if rate else "?"
        text = f"{self.name}: {done}/{self.total} {self.unit} ({100 * done / max(self.total, 1):.0f}%)"
        if metrics:
            text += "  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        return text + f"  {rate:.3g} {self.unit}/s, ETA {eta}"

    def update(self, done: int, metrics: Mapping[str, float] | None = None) -> None:
        """Call as units are done; logs each time `done` passes a multiple of log_every and at the end."""
        passed_multiple = self.log_every and done // self.log_every > self._last_logged // self.log_every
        if passed_multiple or done == self.total:
            self._clear()
            logging.info("%s", self.line(done, metrics))
            self._last_logged = done
        elif self.live and time.perf_counter() - self._last_draw >= self.min_redraw_seconds:
            self.stream.write("\r\x1b[K" + self.line(done, metrics))
            self.stream.flush()
            self._last_draw, self._drawn = time.perf_counter(), True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False
