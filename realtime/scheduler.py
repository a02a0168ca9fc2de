"""The shared inference worker: one batch per 40 ms tick across every session on one engine.

Each tick takes one frame plan from every session, runs the speech frames of all of them through the
engine in one batch on a worker thread, composites every frame (also off the event loop), and
delivers. Ticks are paced by absolute deadlines on the injected clock; when the machine falls more
than MAX_BEHIND ticks behind, the missed ticks are skipped and counted as dropped frames, so time
stamps stay true to the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from lipstream.engines.base import Engine

from .clock import Clock
from .metrics import Metrics
from .session import AvatarSession, FramePlan

FPS = 25
MAX_BEHIND = 3
# An inference still running after this is abandoned for its frames (idle ones are shown). Normal
# batches take 5-20 ms on two cores; 100 ms (2.5 frames) leaves room for a busy machine.
INFERENCE_TIMEOUT_S = 0.1


def _fall_back(plans: list[FramePlan]) -> list[np.ndarray]:
    for plan in plans:
        plan.mel = None  # composited as an idle frame
    return []


def _consume_result(job: asyncio.Future) -> None:
    """Retrieves an abandoned inference's result or error, so asyncio does not report it as lost."""
    if not job.cancelled():
        job.exception()


class FrameScheduler:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        metrics: Metrics | None = None,
        fps: int = FPS,
        inference_timeout: float = INFERENCE_TIMEOUT_S,
    ) -> None:
        self.engine, self.clock, self.fps = engine, clock, fps
        self.metrics = metrics or Metrics()
        self.inference_timeout = inference_timeout
        self.sessions: dict[str, AvatarSession] = {}
        self._task: asyncio.Task | None = None
        self._overrun: asyncio.Future | None = None  # an inference abandoned at its timeout, still running
        self.ticks = 0

    def add(self, session: AvatarSession) -> None:
        self.sessions[session.id] = session

    def remove(self, session_id: str) -> AvatarSession | None:
        return self.sessions.pop(session_id, None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="frame-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        start = self.clock.now()
        tick = 0
        while True:
            deadline = start + tick / self.fps
            await self.clock.sleep_until(deadline)
            behind = int((self.clock.now() - deadline) * self.fps)
            if behind >= MAX_BEHIND:
                self.metrics.frames_dropped.inc(behind * len(self.sessions))
                tick += behind
                continue
            await self.tick()
            tick += 1

    async def tick(self) -> None:
        """One frame for every session."""
        sessions = list(self.sessions.values())
        if not sessions:
            return
        plans = [s.plan() for s in sessions]
        speech = [p for p in plans if p.mel is not None]
        regions: list[np.ndarray] = []
        if speech:
            regions = await self._infer_or_fall_back(speech)
        composite_started = time.perf_counter()
        images = await asyncio.to_thread(self._composite, plans, regions)
        self.metrics.stage_seconds.observe("composite", time.perf_counter() - composite_started)
        for plan, image in zip(plans, images, strict=True):
            plan.session.deliver(plan, image)
            (self.metrics.frames_generated if plan.mel is not None else self.metrics.frames_idle).inc()
        self.ticks += 1

    async def _infer_or_fall_back(self, speech: list[FramePlan]) -> list[np.ndarray]:
        """The batch's mouths; on an engine error, an inference over its time budget, or while an
        earlier overrun is still running, none: those frames show the idle rendering instead (the
        sessions go on, the error is counted, and the next batch tries again)."""
        if self._overrun is not None and not self._overrun.done():
            self.metrics.inference_skipped.inc()
            return _fall_back(speech)
        started = time.perf_counter()
        job = asyncio.ensure_future(asyncio.to_thread(self._infer, speech))
        try:
            regions = await asyncio.wait_for(asyncio.shield(job), self.inference_timeout)
        except TimeoutError:
            self.metrics.inference_timeouts.inc()
            self._overrun = job
            job.add_done_callback(_consume_result)
            return _fall_back(speech)
        except Exception:  # an engine failure must not end every session
            self.metrics.inference_errors.inc()
            return _fall_back(speech)
        finally:
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.stage_seconds.observe("inference", time.perf_counter() - started)
            self.metrics.batch_size.observe(len(speech))
        return regions

    def _infer(self, plans: list[FramePlan]) -> list[np.ndarray]:
        regions = []
        for start in range(0, len(plans), self.engine.max_batch):
            chunk = plans[start : start + self.engine.max_batch]
            features = [p.session.assets.features(p.index) for p in chunk]
            feed = {name: np.stack([f[name] for f in features]) for name in features[0]}
            feed["mel"] = np.stack([p.mel for p in chunk]).astype(np.float32)
            regions.extend(self.engine.run(feed)["region"])
        return regions

    @staticmethod
    def _composite(plans: list[FramePlan], regions: list[np.ndarray]) -> list[np.ndarray]:
        generated = iter(regions)
        return [
            p.session.assets.composite(p.index, next(generated))
            if p.mel is not None
            else p.session.assets.idle(p.index)
            for p in plans
        ]
