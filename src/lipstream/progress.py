"""A one-line progress display with a rate, for long jobs run from a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """`step()` per item; redraws at most 4 times a second. Silent when `enabled` is False."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "frames",
        enabled: bool = True,
        stream: TextIO | None = None,
        done: int = 0,
    ) -> None:
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.stream = stream or sys.stderr
        self.done = self._first = done  # a resumed job starts part-way; its rate counts from here
        self.start = time.monotonic()
        self._last_draw = 0.0

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return (self.done - self._first) / elapsed if elapsed > 0 else 0.0

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self.enabled and now - self._last_draw >= 0.25:
            self._last_draw = now
            self._draw()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        eta = ""
        if self.total:
            filled = int(20 * self.done / self.total)
            bar = f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}"
            if self.rate > 0 and self.done < self.total:
                minutes, seconds = divmod(round((self.total - self.done) / self.rate), 60)
                eta = f", ETA {minutes}:{seconds:02d}"
        else:
            bar = str(self.done)
        self.stream.write(f"\r{self.label} {bar} {self.unit}, {self.rate:.2f} {self.unit}/s{eta}  ")
        self.stream.flush()
