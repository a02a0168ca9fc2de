"""Admission by measured capacity: the load measurement, the refusal rules, and the server's 503."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import aiohttp
import pytest
from test_hardening import _call
from test_server import serving

from lipstream.realtime import capacity
from lipstream.realtime.capacity import CapacityMonitor, TickModel
from lipstream.realtime.clock import FakeClock
from lipstream.realtime.runtime import Runtime


def _burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.mark.slow  # burns a core for 1.5 s of wall clock: a measure of real CPU time, not of the logic
def test_the_monitor_measures_this_process_and_the_machine() -> None:
    monitor = CapacityMonitor(window=10)
    assert monitor.load() is None and monitor.refusal() is None  # nothing measured yet: no refusal
    monitor.sample(dropped=0, sessions=1)
    burner = threading.Thread(target=_burn, args=(1.5,))
    burner.start()
    burner.join()
    monitor.sample(dropped=0, sessions=1)
    load = monitor.load()
    assert load is not None and 1.4 < load.seconds < 3
    assert 0.6 < load.own_cores < 1.3, load  # one busy thread
    assert load.session_cores(0.33) == load.own_cores
    if load.idle_cores is not None:
        assert load.idle_cores is not None and 0 <= load.idle_cores <= os.cpu_count() - 0.5, load


def test_dropped_frames_refuse_a_new_session_until_a_window_without_drops() -> None:
    async def scenario() -> None:
        clock = FakeClock()
        monitor = CapacityMonitor(window=0.3, first_session_cores=0.0, clock=clock)
        monitor.sample(dropped=10, sessions=2)
        await clock.advance(0.05)
        monitor.sample(dropped=14, sessions=2)
        assert "dropped 4 frames" in monitor.refusal()
        for _ in range(4):
            await clock.advance(0.15)
            monitor.sample(dropped=14, sessions=2)
        assert monitor.load().dropped == 0 and monitor.refusal() is None

    asyncio.run(scenario())


def test_a_session_that_needs_more_cores_than_are_idle_is_refused() -> None:
    needy, modest = CapacityMonitor(first_session_cores=os.cpu_count() + 1.0), CapacityMonitor(first_session_cores=0.0)
    for monitor in (needy, modest):
        monitor.sample(dropped=0, sessions=0)
    time.sleep(0.3)
    for monitor in (needy, modest):
        monitor.sample(dropped=0, sessions=0)
    assert "idle CPU cores" in needy.refusal() and "one more would not hold 25 fps" in needy.refusal()
    assert modest.refusal() is None


def test_the_server_refuses_sessions_while_it_drops_frames(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime, measured_admission=True) as base, aiohttp.ClientSession() as http:
            code, _, _ = await _call(http, "POST", f"{base}/sessions")
            assert code == 201  # an idle machine takes a session
            runtime.metrics.frames_dropped.inc(3)  # the scheduler fell behind
            await asyncio.sleep(2.5)  # sampled once a second
            code, text, headers = await _call(http, "POST", f"{base}/sessions")
            assert code == 503 and "dropped 3 frames" in text and headers["Retry-After"] == "5"
            code, text, _ = await _call(http, "GET", f"{base}/health")
            assert '"admission": "measured"' in text
            code, text, _ = await _call(http, "GET", f"{base}/metrics")
            assert "lipstream_idle_cores" in text

    asyncio.run(scenario())


def test_the_tick_model_refuses_what_would_not_fit_when_every_session_speaks() -> None:
    # 8 ms inference at batch 1, 6 ms more per frame of the batch; 3 ms to composite, 4 ms to encode a frame
    model = TickModel({1: 0.008, 2: 0.014, 3: 0.020}, composite=0.003, encode=0.004, threads=2)
    assert model.inference_at(5) == pytest.approx(0.032), "beyond the timed batches: the last slope"
    assert model.tick_seconds(2) == pytest.approx(0.020)
    assert model.cores(2) == pytest.approx(25 * (2 * 0.014 + 0.007 * 2))
    assert model.refusal(2, available_cores=1.8) is None
    tight = model.refusal(3, available_cores=1.8)  # 3 sessions: 1.525 cores, with the margin more than 1.8
    assert "3 sessions speaking at once would need 1.52 CPU cores here and this server can use 1.80" in tight
    slow = model.refusal(4, available_cores=8.0)  # a 26 ms inference + 12 ms compositing: over 40 / 1.25
    assert "a frame would take 38 ms here (inference 26 ms for the batch" in slow
    assert model.refusal(3, available_cores=None) is None, "no CPU reading: the tick's time alone decides"


def test_the_monitor_projects_its_sessions_all_speaking_with_what_it_measured_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    # A machine with two idle cores on the fake clock: this is about the projection from the measured
    # stage costs, not about how busy the shared test host happens to be (it once read 0 idle cores).
    monkeypatch.setattr(capacity, "_machine_cpu", lambda: (0.0, 2.0 * clock.now()))

    async def scenario() -> None:
        model = TickModel({1: 0.004, 2: 0.006}, composite=0.002, encode=0.002, threads=1)
        monitor = CapacityMonitor(window=1.0, first_session_cores=0.0, clock=clock, tick_model=model)
        monitor.sample(0, 1, {"composite_frame": (0.0, 0.0), "encode_send": (0.0, 0.0)})
        await clock.advance(0.5)
        monitor.sample(0, 1, {"composite_frame": (0.0, 0.0), "encode_send": (0.0, 0.0)})
        assert monitor.refusal() is None, "2 sessions: 8 ms of the 40"
        # The one session then speaks, and its frames cost 20 ms each to composite (an hd avatar, say).
        await clock.advance(0.5)
        monitor.sample(0, 1, {"composite_frame": (0.5, 25.0), "encode_send": (0.05, 25.0)})
        load = monitor.load()
        assert load.composite_per_frame == pytest.approx(0.02) and load.encode_per_frame == pytest.approx(0.002)
        assert "with 2 sessions speaking at once a frame would take 46 ms" in monitor.refusal()

    asyncio.run(scenario())


def test_the_server_times_its_tick_at_start(runtime: Runtime) -> None:
    from lipstream.realtime.runtime import time_tick

    model = time_tick(runtime, 3, runs=2)
    assert sorted(model.inference) == [1, 2, 3] and all(0 < t < 1 for t in model.inference.values())
    assert 0 < model.composite < 0.5 and 0 < model.encode < 0.5 and model.threads == runtime.engine.threads
