"""Two real `lipstream serve` processes behind Debian's HAProxy on loopback (deploy/haproxy.py):
sessions spread by admission state, each request of a session reaches its owner, and a process that
stops takes only its own sessions with it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from test_server import Viewer, assert_25_fps, wait_for_frames

from lipstream.deploy.haproxy import Backend, LocalCluster, haproxy_config

if shutil.which("haproxy") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's haproxy; .ci/run installs it (make test)")
    pytest.skip("needs Debian's haproxy package (apt-get install haproxy)", allow_module_level=True)


def free_block(processes: int) -> int:
    """A port for HAProxy whose serve and agent ports (LocalCluster's layout) are all free too."""
    for _ in range(100):
        base = random.randrange(20_000, 30_000)
        ports = [base, *(base + 1 + i for i in range(processes)), *(base + 101 + i for i in range(processes))]
        try:
            with contextlib.ExitStack() as stack:
                for port in ports:
                    probe = stack.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports for the cluster")


def health(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def cluster(cache: Path) -> Iterator[LocalCluster]:
    serve = ("--engine", "onnxruntime", "--admission", "count", "--max-sessions", "3", "--max-sessions-per-client", "8")
    with LocalCluster(free_block(2), 2, serve, env={"LIPSTREAM_CACHE": str(cache)}, check_every="500ms") as running:
        yield running


def test_the_configuration_names_each_process_and_refuses_duplicates() -> None:
    backends = [Backend("b1", 8081, 8181), Backend("b2", 8082, 8182)]
    text = haproxy_config(8080, backends)
    assert "acl of_b2 path_beg /sessions/b2- /whip/b2- /whep/b2-" in text and "use-server b2 if of_b2" in text
    assert "server b1 127.0.0.1:8081 check" in text and "agent-port 8181" in text
    with pytest.raises(ValueError, match="unique"):
        haproxy_config(8080, [Backend("b1", 1, 2), Backend("b1", 3, 4)])
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert text.strip() in readme, "the README's HAProxy configuration is not what haproxy_config writes"


async def _open(http: aiohttp.ClientSession, base: str) -> tuple[int, dict]:
    async with http.post(f"{base}/sessions") as response:
        return response.status, await response.json()


async def _end(http: aiohttp.ClientSession, base: str, bodies: list[dict]) -> None:
    for body in filter(lambda body: "session_id" in body, bodies):
        async with http.delete(f"{base}/sessions/{body['session_id']}") as response:
            assert response.status in (200, 404), await response.text()


def owner(body: dict) -> str:
    return body["session_id"].split("-", 1)[0]


def test_sessions_spread_and_a_full_process_hands_new_ones_to_the_other(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            opened = [await _open(http, cluster.url) for _ in range(4)]
            bodies = [body for _, body in opened]
            try:
                assert [status for status, _ in opened] == [201] * 4, opened
                assert sorted(owner(body) for body in bodies) == ["b1", "b1", "b2", "b2"]
                assert [health(cluster.backend_url(n))["sessions"] for n in ("b1", "b2")] == [2, 2]
                # b1 is filled past the balancer: a new session it would refuse must be served by b2
                status, body = await _open(http, cluster.backend_url("b1"))
                bodies.append(body)
                assert status == 201 and not health(cluster.backend_url("b1"))["accepting"]
                status, body = await _open(http, cluster.url)
                bodies.append(body)
                assert status == 201 and owner(body) == "b2", body
                status, body = await _open(http, cluster.url)  # both full: a clear 503
                assert status == 503 and "full" in body["error"], body
                for body in bodies:  # each later request reaches the process that owns the session
                    async with http.post(f"{cluster.url}/sessions/{body['session_id']}/interrupt") as response:
                        assert response.status == 200, await response.text()
            finally:
                await _end(http, cluster.url, bodies)
            assert [health(cluster.backend_url(n))["sessions"] for n in ("b1", "b2")] == [0, 0]

    asyncio.run(scenario())


def test_a_stopped_process_takes_only_its_own_sessions(cluster: LocalCluster) -> None:
    pcm = (np.sin(np.arange(3200) * 0.05) * 8000).astype("<i2").tobytes()  # 0.2 s at 16 kHz
    failures: list[str] = []
    pushed = 0

    async def push_forever(http: aiohttp.ClientSession, session_id: str) -> None:
        nonlocal pushed
        while True:
            url = f"{cluster.url}/sessions/{session_id}/audio?rate=16000"
            try:
                async with http.post(url, data=pcm, headers={"Content-Type": "audio/pcm"}) as response:
                    if response.status != 200:
                        failures.append(f"{response.status} {await response.text()}")
            except aiohttp.ClientError as err:
                failures.append(repr(err))
            pushed += 1
            await asyncio.sleep(0.2)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            bodies = [(await _open(http, cluster.url))[1] for _ in range(2)]
            by_owner = {owner(body): body for body in bodies}
            assert sorted(by_owner) == ["b1", "b2"], bodies
            kept, lost = by_owner["b2"], by_owner["b1"]
            viewer = Viewer()
            offer = await viewer.offer()
            async with http.post(
                f"{cluster.url}{kept['watch_url']}", data=offer, headers={"Content-Type": "application/sdp"}
            ) as response:
                assert response.status == 201, await response.text()
                await viewer.pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
            pusher = asyncio.create_task(push_forever(http, kept["session_id"]))
            await wait_for_frames(viewer, 25)
            first = len(viewer.frames)
            await asyncio.to_thread(cluster.stop_backend, "b1")
            await asyncio.sleep(2.0)  # HAProxy has marked b1 down (checks every 0.5 s, 2 to fall)
            async with http.post(f"{cluster.url}/sessions/{lost['session_id']}/interrupt") as response:
                assert response.status == 404 and "(b1) is down" in (await response.json())["error"]
            started = time.monotonic()
            await asyncio.to_thread(cluster.start_backend, "b1")
            restart_s = time.monotonic() - started
            await asyncio.sleep(2.0)  # and up again (2 checks to rise)
            opened = [await _open(http, cluster.url) for _ in range(2)]
            assert [status for status, _ in opened] == [201, 201], opened
            (_, body), (_, body2) = opened
            assert "b1" in {owner(body), owner(body2)}, opened  # b1 takes new sessions again
            pusher.cancel()
            await viewer.close()
            await _end(http, cluster.url, [kept, body, body2])
        frames = viewer.frames[first:]
        fps = (len(frames) - 1) / (frames[-1][0] - frames[0][0])
        print(f"b1 restarted in {restart_s:.1f} s; b2's viewer: {len(frames)} frames at {fps:.2f} fps; {pushed} pushes")
        assert not failures, failures[:5]
        assert_25_fps(viewer.stamps[first:], [t for t, _ in frames])

    asyncio.run(scenario())
