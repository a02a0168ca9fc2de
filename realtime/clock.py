"""The clocks the media path runs on. Nothing in realtime/ reads the time any other way.

Pacing is by absolute deadlines (frame k at t0 + k / 25), never by sleeping a fixed period, so
lateness never accumulates. Tests drive a FakeClock by hand.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Returns at or after `deadline` (immediately if it has passed)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch: only for what other machines check, such as expiry times."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


class FakeClock:
    """Time moves only when `advance` is called; sleepers wake when their deadline is reached."""

    def __init__(self, start: float = 0.0, epoch: float = 1.8e9) -> None:
        self._now, self._epoch = start, epoch  # wall(): `epoch` Unix seconds at `start`
        self._start = start
        self._changed = asyncio.Condition()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._epoch + self._now - self._start

    async def sleep_until(self, deadline: float) -> None:
        async with self._changed:
            # a nanosecond of slack: 0.04 + 0.24 must reach a deadline of 7 / 25 in binary floating point
            await self._changed.wait_for(lambda: self._now >= deadline - 1e-9)

    async def advance(self, seconds: float) -> None:
        async with self._changed:
            self._now += seconds
            self._changed.notify_all()
        await asyncio.sleep(0)  # let the woken tasks run
