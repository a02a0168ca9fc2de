"""The shared scheduler on a FakeClock with a stub engine: pacing, skipping when late, one batch for all
sessions, and what an engine failure or overrun shows. Milliseconds per test, no real waiting."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest
from fakes import FakeAssets, StubEngine, shown

from lipstream.realtime.clock import FakeClock
from lipstream.realtime.metrics import Metrics
from lipstream.realtime.scheduler import MAX_BEHIND, FrameScheduler
from lipstream.realtime.session import AvatarSession


def speaking_session(name: str, speech: np.ndarray, metrics: Metrics) -> AvatarSession:
    session = AvatarSession(name, FakeAssets(), metrics=metrics, queue_frames=500)
    session.push_audio(speech[8_000:40_000])  # 2 s of speech
    session.end_of_input()
    return session


async def frames(session: AvatarSession, count: int) -> list:
    async with asyncio.timeout(5):
        return [await session.next_frame() for _ in range(count)]


def test_ticks_follow_the_clock_and_late_ticks_are_skipped_and_counted(speech: np.ndarray) -> None:
    async def scenario() -> None:
        clock, metrics = FakeClock(), Metrics()
        session = speaking_session("a", speech, metrics)
        scheduler = FrameScheduler(StubEngine(), clock, metrics)
        scheduler.add(session)
        scheduler.start()
        await frames(session, 1)  # tick 0 is due at once
        await asyncio.sleep(0.01)
        assert session._out.empty(), "no second frame before its deadline"
        await clock.advance(0.04)
        await frames(session, 1)
        # The machine stalls for 6 frames: the 5 missed ticks are skipped, not made up in a burst, and
        # the one due now is made.
        await clock.advance(0.24)
        assert [f.number for f in await frames(session, 1)] == [2]
        assert metrics.frames_dropped.value == 5 >= MAX_BEHIND
        await asyncio.sleep(0.01)
        assert session._out.empty()
        await scheduler.stop()

    asyncio.run(scenario())


def test_every_session_speaking_goes_into_one_batch(speech: np.ndarray) -> None:
    async def scenario() -> None:
        clock, metrics, engine = FakeClock(), Metrics(), StubEngine()
        sessions = [speaking_session(name, speech, metrics) for name in "abc"]
        scheduler = FrameScheduler(engine, clock, metrics)
        for session in sessions:
            scheduler.add(session)
        for _ in range(30):
            await scheduler.tick()
        assert max(engine.batches) == 3 and set(engine.batches) <= {1, 2, 3}
        assert metrics.batch_size.count == len(engine.batches)

    asyncio.run(scenario())


def test_each_sample_gets_its_avatars_motion_gain_times_the_servers(speech: np.ndarray) -> None:
    async def scenario() -> None:
        clock, metrics, engine = FakeClock(), Metrics(), StubEngine()
        plain, lively = speaking_session("a", speech, metrics), speaking_session("b", speech, metrics)
        lively.assets.motion_gain = 1.5
        scheduler = FrameScheduler(engine, clock, metrics, motion_gain=1.2)
        scheduler.add(plain)
        scheduler.add(lively)
        for _ in range(10):
            await scheduler.tick()
        assert [1.2, 1.8] in [[round(g, 4) for g in call] for call in engine.gains]
        with pytest.raises(ValueError, match="motion gain must be in"):
            FrameScheduler(engine, clock, metrics, motion_gain=-1.0)

    asyncio.run(scenario())


def test_an_engine_failure_shows_template_frames_is_logged_and_the_next_batch_tries_again(
    speech: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        clock, metrics, engine = FakeClock(), Metrics(), StubEngine()
        session = speaking_session("a", speech, metrics)
        scheduler = FrameScheduler(engine, clock, metrics)
        scheduler.add(session)
        for _ in range(12):  # well into speech
            await scheduler.tick()
        await frames(session, 12)
        engine.fail = True
        with caplog.at_level(logging.ERROR, logger="lipstream.realtime"):
            for _ in range(3):
                await scheduler.tick()
        failed = await frames(session, 3)
        assert [shown(f.image) for f in failed] == [None] * 3
        assert metrics.inference_errors.value == 3
        assert len(caplog.records) == 1 and "stub engine was told to fail" in caplog.text  # rate-limited
        engine.fail = False
        await scheduler.tick()
        assert shown((await frames(session, 1))[0].image) is not None

    asyncio.run(scenario())


def test_an_overrun_is_abandoned_on_the_clock_and_later_batches_wait_for_it(speech: np.ndarray) -> None:
    async def scenario() -> None:
        clock, metrics, engine = FakeClock(), Metrics(), StubEngine()
        session = speaking_session("a", speech, metrics)
        scheduler = FrameScheduler(engine, clock, metrics, inference_timeout=0.1)
        scheduler.add(session)
        for _ in range(12):
            await scheduler.tick()
        await frames(session, 12)
        engine.hold = threading.Event()
        tick = asyncio.create_task(scheduler.tick())
        await asyncio.sleep(0.01)
        assert not tick.done(), "the inference is still within its budget"
        await clock.advance(0.1)
        await asyncio.wait_for(tick, 5)
        assert metrics.inference_timeouts.value == 1
        assert shown((await frames(session, 1))[0].image) is None
        await scheduler.tick()  # the overrun still holds the engine: this batch is not even tried
        assert metrics.inference_skipped.value == 1 and shown((await frames(session, 1))[0].image) is None
        engine.hold.set()
        await asyncio.sleep(0.05)
        await scheduler.tick()
        assert shown((await frames(session, 1))[0].image) is not None

    asyncio.run(scenario())


def test_a_compositing_failure_loses_its_frames_only_and_frames_stay_in_order(
    speech: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    """Compositing runs on while the next tick infers: a tick whose compositing fails is logged with its
    cause and its frames are lost, the frames after it still come, and in order."""

    class BrokenOnce(FakeAssets):
        calls = 0

        def composite(self, index: int, region: np.ndarray, blend: float = 1.0) -> np.ndarray:
            BrokenOnce.calls += 1
            if BrokenOnce.calls == 3:
                raise ValueError("a broken paste mask")
            return super().composite(index, region, blend)

    async def scenario() -> list[int]:
        clock, metrics = FakeClock(), Metrics()
        session = AvatarSession("a", BrokenOnce(), metrics=metrics, queue_frames=500)
        session.push_audio(speech[8_000:40_000])
        session.end_of_input()
        scheduler = FrameScheduler(StubEngine(), clock, metrics)
        scheduler.add(session)
        scheduler.start()
        numbers = []
        for _ in range(12):
            await clock.advance(0.04)
            await asyncio.sleep(0.01)
            while not session._out.empty():
                numbers.append((await session.next_frame()).number)
        await scheduler.stop()
        return numbers

    with caplog.at_level(logging.ERROR, logger="lipstream.realtime"):
        numbers = asyncio.run(scenario())
    assert numbers == sorted(numbers) and len(numbers) >= 10, numbers
    failures = [r for r in caplog.records if "compositing failed" in r.getMessage()]
    assert failures and "broken paste mask" in str(failures[0].exc_info[1])  # logged with its cause
