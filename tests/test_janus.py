"""Fan-out through a real Janus (Debian's `janus`) on loopback: a session published once into a
VideoRoom, watched by viewers that subscribe through Janus (realtime/janus.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from test_server import Viewer, assert_25_fps, mouth_change, push_wav, serving, wait_for_frames
from test_web_client import free_port

from lipstream.benchmarks.motion import SPEAKING
from lipstream.deploy.janus import start_janus
from lipstream.realtime.janus import JanusError, JanusSession, subscribe
from lipstream.realtime.runtime import Runtime

if shutil.which("janus") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's janus; .ci/run installs it (make test)")
    pytest.skip("needs Debian's janus package (apt-get install janus)", allow_module_level=True)


@pytest.fixture(scope="module")
def janus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_janus(tmp_path_factory.mktemp("janus"), port)
    yield f"http://127.0.0.1:{port}/janus"
    process.terminate()
    process.wait(timeout=10)


def test_a_session_published_once_reaches_viewers_through_janus(
    runtime: Runtime, janus_url: str, speech_then_silence: Path
) -> None:
    async def scenario() -> tuple[list[Viewer], dict, dict]:
        async with serving(runtime, janus_url=janus_url) as base, aiohttp.ClientSession() as http:
            async with http.post(f"{base}/sessions") as response:
                session_id = (await response.json())["session_id"]
            async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                assert response.status == 200, await response.text()
                where = await response.json()
            async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                again = await response.json()  # published once, whoever asks again
            viewers = [Viewer() for _ in range(2)]  # Janus offers, they answer
            subscriptions = [await subscribe(where["janus"], where["room"], where["feed"], v.pc) for v in viewers]
            await wait_for_frames(viewers[0], 10)
            await push_wav(http, base, session_id, speech_then_silence)
            for viewer in viewers:
                await wait_for_frames(viewer, 100)
            for viewer, janus in zip(viewers, subscriptions, strict=True):
                await viewer.close()
                await janus.close()
            async with http.delete(f"{base}/sessions/{session_id}") as response:
                assert response.status == 200
            # the room went with the session
            janus = await JanusSession(where["janus"]).open()
            try:
                handle = await janus.attach()
                exists, _ = await janus.request(handle, {"request": "exists", "room": where["room"]})
            finally:
                await janus.close()
        return viewers, where, again | {"exists": exists["exists"]}

    viewers, where, again = asyncio.run(scenario())
    assert again["room"] == where["room"] and again["feed"] == where["feed"] and again["exists"] is False
    for viewer in viewers:
        assert_25_fps(viewer.stamps[5:], [t for t, _ in viewer.frames[5:]])
        speaking = sum(mouth_change(runtime, image) > SPEAKING for _, image in viewer.frames)
        assert speaking >= 20, f"the avatar spoke in only {speaking} frames seen through Janus"


def test_publish_without_janus_or_with_janus_down_says_why(runtime: Runtime) -> None:
    async def scenario() -> list[tuple[int, str]]:
        results = []
        for settings in ({}, {"janus_url": f"http://127.0.0.1:{free_port()}/janus"}):
            async with serving(runtime, **settings) as base, aiohttp.ClientSession() as http:
                async with http.post(f"{base}/sessions") as response:
                    session_id = (await response.json())["session_id"]
                async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                    results.append((response.status, (await response.json())["error"]))
        return results

    (status, error), (status_down, error_down) = asyncio.run(scenario())
    assert status == 409 and "--janus" in error
    assert status_down == 502 and "did not answer" in error_down


def test_a_viewer_of_a_feed_that_does_not_exist_gets_janus_reason(janus_url: str) -> None:
    async def scenario() -> str:
        pc = RTCPeerConnection()
        try:
            with pytest.raises(JanusError) as caught:
                await subscribe(janus_url, 1234567, 7654321, pc)
        finally:
            await pc.close()
        return str(caught.value)

    assert "No such room" in asyncio.run(scenario())


def test_publishing_again_after_janus_restarts_makes_a_new_room(
    runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/janus"
    janus = start_janus(tmp_path_factory.mktemp("janus-restart"), port)

    async def scenario() -> tuple[dict, dict, dict]:
        nonlocal janus
        async with serving(runtime, janus_url=url) as base, aiohttp.ClientSession() as http:
            async with http.post(f"{base}/sessions") as response:
                session_id = (await response.json())["session_id"]
            async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                first = await response.json()
            janus.terminate()
            janus.wait(timeout=10)
            janus = start_janus(tmp_path_factory.mktemp("janus-again"), port)
            await asyncio.sleep(3.0)  # the long poll finds its session gone
            async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                second = await response.json()
            async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                third = await response.json()
        return first, second, third

    try:
        first, second, third = asyncio.run(scenario())
    finally:
        janus.terminate()
        janus.wait(timeout=10)
    assert "room" in second and second["room"] != first["room"], (first, second)
    assert third["room"] == second["room"]  # and it is kept while it lives
