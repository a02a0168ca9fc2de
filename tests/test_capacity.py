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

from lipstream.realtime.capacity import CapacityMonitor
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
