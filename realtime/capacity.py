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

What the last window saw understates the cost when its sessions were mostly silent: a session that
speaks costs an inference and a composite per frame. So admission also projects the worst case, every
session speaking at once, with a `TickModel` of this host: the engine's time per batch size (timed
when the server starts), and the compositing and encoding time per frame (timed at start, then taken
from the live window). One more session is refused when, all speaking, a tick would not fit its 40 ms
(inference and compositing run one after the other), or the cores it would need exceed the idle cores
plus this server's own.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass

import psutil

from lipstream.dsp import FPS

from .clock import Clock, MonotonicClock

WINDOW_S = 5.0
MARGIN = 1.25
FIRST_SESSION_CORES = 0.33


@dataclass(frozen=True)
class TickModel:
    """What a tick costs on this host when `n` sessions all speak."""

    inference: dict[int, float]  # batch size -> seconds of one engine call (median, timed at start)
    composite: float  # seconds to composite one generated frame
    encode: float  # seconds to encode one video frame for a viewer
    threads: int  # the engine's threads (cores busy while it runs)

    def inference_at(self, batch: int) -> float:
        """The timed figure, or beyond the largest timed batch a straight line through the last two."""
        if batch in self.inference:
            return self.inference[batch]
        sizes = sorted(self.inference)
        if len(sizes) == 1:
            return self.inference[sizes[0]] * batch / sizes[0]
        (a, ta), (b, tb) = ((n, self.inference[n]) for n in sizes[-2:])
        return tb + (tb - ta) / (b - a) * (batch - b)

    def tick_seconds(self, sessions: int) -> float:
        """The tick's critical path: one batched inference, then every frame composited."""
        return self.inference_at(sessions) + self.composite * sessions

    def cores(self, sessions: int) -> float:
        """CPU cores the sessions keep busy at 25 fps (the engine's threads while it runs, the rest on one)."""
        return FPS * (self.threads * self.inference_at(sessions) + (self.composite + self.encode) * sessions)

    def with_live(self, composite: float | None, encode: float | None) -> TickModel:
        """This model with the per-frame costs the live window measured, where it measured them."""
        return TickModel(
            self.inference,
            self.composite if composite is None else composite,
            self.encode if encode is None else encode,
            self.threads,
        )

    def refusal(self, sessions: int, available_cores: float | None) -> str | None:
        """Why `sessions` all speaking would not hold 25 fps here, or None."""
        tick, budget = self.tick_seconds(sessions), 1.0 / FPS
        if MARGIN * tick > budget:
            return (
                f"with {sessions} sessions speaking at once a frame would take {1e3 * tick:.0f} ms here "
                f"(inference {1e3 * self.inference_at(sessions):.0f} ms for the batch, compositing "
                f"{1e3 * self.composite:.1f} ms a frame) of its {1e3 * budget:.0f} ms: one more would not hold 25 fps"
            )
        need = self.cores(sessions)
        if available_cores is not None and MARGIN * need > available_cores:
            return (
                f"{sessions} sessions speaking at once would need {need:.2f} CPU cores here and this server can "
                f"use {available_cores:.2f} (idle and its own): one more would not hold 25 fps"
            )
        return None


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    busy: float  # machine CPU seconds not idle, all cores
    total: float  # machine CPU seconds, all cores
    own: float  # this process's CPU seconds
    dropped: float  # the scheduler's dropped-frames counter
    sessions: int
    generated: float = 0.0  # frames generated so far
    composite: float = 0.0  # seconds spent compositing so far
    encoded: float = 0.0  # frames encoded and sent so far
    encode: float = 0.0  # seconds spent encoding and sending so far


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
    composite_per_frame: float | None = None  # seconds per generated frame, where frames were generated
    encode_per_frame: float | None = None

    @property
    def available_cores(self) -> float | None:
        """Cores this server can count on: the idle ones and those it uses itself."""
        return None if self.idle_cores is None else self.idle_cores + self.own_cores

    def session_cores(self, first_session_cores: float) -> float:
        return self.own_cores / self.sessions if self.sessions else first_session_cores


class CapacityMonitor:
    def __init__(
        self,
        window: float = WINDOW_S,
        first_session_cores: float = FIRST_SESSION_CORES,
        clock: Clock | None = None,
        tick_model: TickModel | None = None,
    ) -> None:
        self.window = window
        self.clock = clock or MonotonicClock()
        self.first_session_cores = first_session_cores
        self.tick_model = tick_model  # None: no worst-case projection
        self._samples: deque[Sample] = deque()

    def sample(self, dropped: float, sessions: int, stages: dict[str, tuple[float, float]] | None = None) -> None:
        """stages: the metrics' running (seconds, calls) of "composite_frame" and "encode_send"."""
        machine = _machine_cpu()
        busy, total = machine if machine is not None else (float("nan"), float("nan"))
        times = os.times()
        now = self.clock.now()
        stages = stages or {}
        composite, generated = stages.get("composite_frame", (0.0, 0.0))
        encode, encoded = stages.get("encode_send", (0.0, 0.0))
        self._samples.append(
            Sample(
                now, busy, total, times.user + times.system, dropped, sessions, generated, composite, encoded, encode
            )
        )
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
        generated, encoded = last.generated - first.generated, last.encoded - first.encoded
        return Load(
            seconds=seconds,
            idle_cores=idle,
            own_cores=(last.own - first.own) / seconds,
            dropped=last.dropped - first.dropped,
            sessions=last.sessions,
            composite_per_frame=(last.composite - first.composite) / generated if generated > 0 else None,
            encode_per_frame=(last.encode - first.encode) / encoded if encoded > 0 else None,
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
        if self.tick_model is not None:
            model = self.tick_model.with_live(load.composite_per_frame, load.encode_per_frame)
            return model.refusal(load.sessions + 1, load.available_cores)
        return None
