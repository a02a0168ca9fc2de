"""Admission by measured capacity: would one more session push this machine below 25 fps?

The session limit (`max_sessions`) is a fixed ceiling; this measures. Every second it samples, from
psutil:
- the machine's idle CPU (all processes count: a trainer or another server takes cores too),
- this process's own CPU, which divided by the open sessions is what a session costs here,
- the frames the scheduler dropped (it falls behind before anyone sees fewer than 25 fps).

A new session is refused while frames were dropped in the last window, or when the idle cores are
fewer than one more session's cost with a margin. With no session open yet, a session is assumed to
cost `first_session_cores` (0.33 cores measured for the `rt` profile on ONNX Runtime; see
benchmarks/RESULTS.md). Where the machine's CPU times cannot be read, only the dropped-frames rule applies.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

import psutil

from .clock import Clock, MonotonicClock

WINDOW_S = 5.0
MARGIN = 1.25
FIRST_SESSION_CORES = 0.33


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    busy: float  # machine CPU seconds not idle, all cores
    total: float  # machine CPU seconds, all cores
    own: float  # this process's CPU seconds
    dropped: float  # the scheduler's dropped-frames counter
    sessions: int


def _machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot (psutil), or None where unreadable."""
    try:
        times = psutil.cpu_times()
    except (OSError, RuntimeError):
        return None
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)  # iowait: Linux only
    return total - idle, total


@dataclass(frozen=True)
class Load:
    """What the last window measured."""

    seconds: float
    idle_cores: float | None  # None where the machine's CPU cannot be read
    own_cores: float
    dropped: float
    sessions: int

    def session_cores(self, first_session_cores: float) -> float:
        return self.own_cores / self.sessions if self.sessions else first_session_cores


class CapacityMonitor:
    def __init__(
        self, window: float = WINDOW_S, first_session_cores: float = FIRST_SESSION_CORES, clock: Clock | None = None
    ) -> None:
        self.window = window
        self.clock = clock or MonotonicClock()
        self.first_session_cores = first_session_cores
        self._samples: deque[Sample] = deque()

    def sample(self, dropped: float, sessions: int) -> None:
        machine = _machine_cpu()
        busy, total = machine if machine is not None else (float("nan"), float("nan"))
        times = os.times()
        now = self.clock.now()
        self._samples.append(Sample(now, busy, total, times.user + times.system, dropped, sessions))
        while len(self._samples) > 2 and now - self._samples[1].at >= self.window:
            self._samples.popleft()

    def load(self) -> Load | None:
        """The last window's load, or None before two samples (nothing measured yet)."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        seconds = last.at - first.at
        if seconds <= 0:
            return None
        idle = None
        if last.total > first.total:  # NaN where the CPU times were unreadable: the comparison is False
            cores = (last.total - first.total) / seconds
            # max: a fully busy machine comes out a rounding error below zero (seen: -1.5e-13)
            idle = max(0.0, cores * (1 - (last.busy - first.busy) / (last.total - first.total)))
        return Load(
            seconds=seconds,
            idle_cores=idle,
            own_cores=(last.own - first.own) / seconds,
            dropped=last.dropped - first.dropped,
            sessions=last.sessions,
        )

    def refusal(self) -> str | None:
        """Why one more session would not hold 25 fps, or None when it would (or nothing is known yet)."""
        load = self.load()
        if load is None:
            return None
        if load.dropped > 0:
            return f"the server dropped {load.dropped:.0f} frames in the last {load.seconds:.0f} s: it is at capacity"
        need = MARGIN * load.session_cores(self.first_session_cores)
        if load.idle_cores is not None and load.idle_cores < need:
            return (
                f"the machine has {load.idle_cores:.2f} idle CPU cores and a session here takes about "
                f"{need / MARGIN:.2f}: one more would not hold 25 fps"
            )
        return None
