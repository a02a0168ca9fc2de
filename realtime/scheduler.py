"""The shared inference worker: one batch per 40 ms tick across every session on one engine.

Each tick takes one frame plan from every session, runs the speech frames of all of them through the
engine in one batch on a worker thread, composites every frame (also off the event loop), and
delivers. Ticks are paced by absolute deadlines on the injected clock; when the machine falls more
than MAX_BEHIND ticks behind, the missed ticks are skipped and counted as dropped frames, so time
stamps stay true to the clock. While running, one tick's compositing overlaps the next tick's
inference (the two use different cores when one is free); frames still leave in order, and at most
one tick's compositing is outstanding when the next tick begins.

Style smoothing (optional, `style_smoothing` a > 0): every session's styles are averaged over its
frames inside the frame graph (see models.mapping.StyleSmoothing); the scheduler keeps each session's
last smoothed styles and starts afresh after every idle frame, so speech never blends into the next
utterance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np

from lipstream.dsp import FPS
from lipstream.engines.base import Engine

from .clock import Clock
from .log import RateLimitedLog, spawn
from .metrics import Metrics
from .session import AvatarSession, FramePlan
from .settings import MAX_MOTION_GAIN, MOTION_GAIN

MAX_BEHIND = 3
# An inference still running after this is abandoned for its frames (template frames are shown). Normal
# batches take 5-20 ms on two cores; 100 ms (2.5 frames) leaves room for a busy machine.
INFERENCE_TIMEOUT_S = 0.1


def _fall_back(plans: list[FramePlan]) -> list[np.ndarray]:
    for plan in plans:
        plan.mel = None  # composited as an idle frame
    return []


UPSAMPLE_LOG = RateLimitedLog(logging.ERROR)


def upsample(plans: list[FramePlan], regions: list[np.ndarray]) -> list[np.ndarray]:
    """The regions of hd avatars' frames made 2x larger, in one call per upsampler (the others as they are).
    `regions` go with the plans that have speech (mel), in order."""
    speaking = [p for p in plans if p.mel is not None]
    regions = list(regions)
    groups: dict[int, list[int]] = {}
    for i, plan in enumerate(speaking):
        if plan.session.assets.upsampler is not None:
            groups.setdefault(id(plan.session.assets.upsampler), []).append(i)
    for members in groups.values():
        upsampler = speaking[members[0]].session.assets.upsampler
        features = np.stack([speaking[i].session.assets.hd_features for i in members])
        try:
            larger = upsampler.run(np.stack([regions[i] for i in members]), features)
        except Exception as err:  # ONNX Runtime raises its own kinds; these frames are composited at 1x instead
            UPSAMPLE_LOG(f"the region upsampler failed for {len(members)} frames ({err}); they are shown at 1x", err)
            continue
        for i, region in zip(members, larger, strict=True):
            regions[i] = region
    return regions


def _consume_result(job: asyncio.Future) -> None:
    """Retrieves an abandoned inference's result or error, so asyncio does not report it as lost."""
    if not job.cancelled():
        job.exception()


def frame_feed(
    features: list[dict[str, np.ndarray]],
    mels: list[np.ndarray],
    previous: list[np.ndarray | None],
    smoothing: float,
    gains: list[float],
) -> dict[str, np.ndarray]:
    """The frame graph's inputs for a batch: each sample's avatar features (AvatarAssets.features), mel
    window, styles of its frame before (None: no smoothing) and motion gain."""
    feed = {name: np.stack([f[name] for f in features]) for name in features[0]}
    feed["mel"] = np.stack(mels).astype(np.float32)
    blank = np.zeros_like(features[0]["delta_w"])
    feed["ws_prev"] = np.stack([blank if ws is None else ws for ws in previous])
    feed["smoothing"] = np.array([[0.0 if ws is None else smoothing] for ws in previous], np.float32)
    feed["motion_gain"] = np.array([[gain] for gain in gains], np.float32)
    return feed


class FrameScheduler:
    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        metrics: Metrics | None = None,
        fps: int = FPS,
        inference_timeout: float = INFERENCE_TIMEOUT_S,
        style_smoothing: float = 0.0,
        motion_gain: float = MOTION_GAIN,
    ) -> None:
        if not 0.0 <= style_smoothing < 1.0:
            raise ValueError(f"style smoothing must be in [0, 1) (0: off); got {style_smoothing}")
        if not 0.0 <= motion_gain <= MAX_MOTION_GAIN:
            raise ValueError(f"motion gain must be in [0, {MAX_MOTION_GAIN}] (1: as trained); got {motion_gain}")
        self.engine, self.clock, self.fps = engine, clock, fps
        self.style_smoothing = style_smoothing
        self.motion_gain = motion_gain
        self._styles: dict[str, np.ndarray] = {}  # session id -> its last frame's smoothed styles
        self.metrics = metrics or Metrics()
        self.inference_timeout = inference_timeout
        self.sessions: dict[str, AvatarSession] = {}
        self._task: asyncio.Task | None = None
        self._finishing: asyncio.Future | None = None  # the latest tick's compositing and delivery
        self._overrun: asyncio.Future | None = None  # an inference abandoned at its timeout, still running
        self._log_error = RateLimitedLog(logging.ERROR, now=clock.now)
        self._log_overrun = RateLimitedLog(logging.WARNING, now=clock.now)

    def add(self, session: AvatarSession) -> None:
        self.sessions[session.id] = session

    def remove(self, session_id: str) -> AvatarSession | None:
        self._styles.pop(session_id, None)
        return self.sessions.pop(session_id, None)

    def start(self) -> None:
        if self._task is None:
            self._task = spawn(self.run(), "frame-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._finishing is not None:
            self._finishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._finishing
            self._finishing = None

    async def run(self) -> None:
        start = self.clock.now()
        tick = 0
        previous: asyncio.Future | None = None
        while True:
            deadline = start + tick / self.fps
            await self.clock.sleep_until(deadline)
            behind = int((self.clock.now() - deadline) * self.fps + 1e-6)  # 5 frames late is 5, not 4.999
            if behind >= MAX_BEHIND:
                self.metrics.frames_dropped.inc(behind * len(self.sessions))
                tick += behind
                continue
            finishing = await self._infer_tick()
            if previous is not None:  # the tick before is delivered before the next one begins
                await previous
            previous = finishing
            tick += 1

    async def tick(self) -> None:
        """One frame for every session, delivered when this returns."""
        finishing = await self._infer_tick()
        if finishing is not None:
            await finishing

    async def _infer_tick(self) -> asyncio.Future | None:
        """Plans and inference of one tick; its compositing and delivery run on as the returned future
        (after the tick before has delivered), None without sessions."""
        sessions = list(self.sessions.values())
        if not sessions:
            return None
        plans = [s.plan() for s in sessions]
        speech = [p for p in plans if p.mel is not None]
        regions: list[np.ndarray] = []
        if speech:
            regions = await self._infer_or_fall_back(speech)
        for plan in plans:
            if plan.mel is None:  # idle (or fallen back): the next speech frame starts unsmoothed
                self._styles.pop(plan.session.id, None)
        self._finishing = asyncio.ensure_future(self._finish(plans, speech, regions, self._finishing))
        return self._finishing

    async def _finish(
        self,
        plans: list[FramePlan],
        speech: list[FramePlan],
        regions: list[np.ndarray],
        before: asyncio.Future | None,
    ) -> None:
        """Composites a tick's frames and delivers them, after the tick before has delivered its own."""
        if before is not None:
            await before  # never raises: each finish catches its own errors
        try:
            await self._composite_and_deliver(plans, speech, regions)
        except Exception as error:  # a failed composite must not stop the frames after it
            self._log_error("compositing failed; the tick's frames are lost", error)

    async def _composite_and_deliver(
        self, plans: list[FramePlan], speech: list[FramePlan], regions: list[np.ndarray]
    ) -> None:
        composite_started = time.perf_counter()
        images = await asyncio.to_thread(self._composite, plans, regions)
        composite_seconds = time.perf_counter() - composite_started
        self.metrics.stage("composite", composite_seconds)
        if speech:  # what a generated frame costs to composite (idle ones cost next to nothing)
            self.metrics.add_total("composite_frame", composite_seconds, len(speech))
        for plan, image in zip(plans, images, strict=True):
            plan.session.deliver(plan, image)
            (self.metrics.frames_generated if plan.mel is not None else self.metrics.frames_idle).inc()

    async def _infer_or_fall_back(self, speech: list[FramePlan]) -> list[np.ndarray]:
        """The batch's mouths; on an engine error, an inference over its time budget, or while an
        earlier overrun is still running, none: those frames show their template frame instead (the
        sessions go on, the error is counted, and the next batch tries again)."""
        if self._overrun is not None and not self._overrun.done():
            self.metrics.inference_skipped.inc()
            return _fall_back(speech)
        started = time.perf_counter()
        previous = [self._styles.get(p.session.id) for p in speech]
        job = asyncio.ensure_future(asyncio.to_thread(self._infer, speech, previous))
        # The budget runs on the injected clock, so tests can overrun it without waiting.
        budget = asyncio.ensure_future(self.clock.sleep_until(self.clock.now() + self.inference_timeout))
        try:
            await asyncio.wait({job, budget}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                self.metrics.inference_timeouts.inc()
                self._log_overrun(
                    f"inference of {len(speech)} frames overran its {1000 * self.inference_timeout:.0f} ms budget; "
                    "they show their template frames"
                )
                self._overrun = job
                job.add_done_callback(_consume_result)
                return _fall_back(speech)
            regions, styles = job.result()
        except Exception as error:  # an engine failure must not end every session
            self.metrics.inference_errors.inc()
            self._log_error("inference failed; the batch's frames show their template frames", error)
            return _fall_back(speech)
        finally:
            budget.cancel()
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
            self.metrics.stage("inference", time.perf_counter() - started)
            self.metrics.batch_size.observe(len(speech))
        if self.style_smoothing:
            live = (p.session.id for p in speech)  # a session may have ended meanwhile
            self._styles.update((i, ws) for i, ws in zip(live, styles, strict=True) if i in self.sessions)
        return regions

    def _infer(
        self, plans: list[FramePlan], previous: list[np.ndarray | None]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(regions, smoothed styles) of the speech frames; `previous` holds each one's session's
        styles of the frame before (None: no smoothing for this frame)."""
        regions: list[np.ndarray] = []
        styles: list[np.ndarray] = []
        for start in range(0, len(plans), self.engine.max_batch):
            chunk = plans[start : start + self.engine.max_batch]
            before = previous[start : start + self.engine.max_batch]
            feed = frame_feed(
                [p.session.assets.features(p.index) for p in chunk],
                [p.mel for p in chunk],
                before,
                self.style_smoothing,
                [self.motion_gain * p.session.assets.motion_gain for p in chunk],  # the server's x the avatar's
            )
            out = self.engine.run(feed)
            regions.extend(out["region"])
            styles.extend(out["ws"])
        return regions, styles

    @staticmethod
    def _composite(plans: list[FramePlan], regions: list[np.ndarray]) -> list[np.ndarray]:
        regions = upsample(plans, regions)
        generated = iter(regions)
        return [
            p.session.assets.composite(p.index, next(generated), p.blend)
            if p.mel is not None
            else p.session.assets.template(p.index)
            for p in plans
        ]
