"""Hardening: tokens, ids that do not cross sessions, SDP and client limits, faults, fuzzing, leaks.

Every test runs the real server on a loopback port and talks to it over HTTP and real aiortc peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_server import Viewer, assert_25_fps, connect, serving, wait_for_frames

from lipstream.realtime.runtime import Runtime, build_runtime
from lipstream.realtime.security import InvalidTokensError, check_sdp, load_tokens
from lipstream.realtime.server import ROUTES, ServerSettings, create_app

TOKEN = "test-token-0123456789abcdef"


async def _call(http: aiohttp.ClientSession, method: str, url: str, **kwargs: object) -> tuple[int, str, dict]:
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.text(), dict(response.headers)


def test_tokens_guard_every_route_that_opens_drives_watches_or_ends_a_session(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime, tokens=(TOKEN,)) as base, aiohttp.ClientSession() as http:
            good = {"Authorization": f"Bearer {TOKEN}"}
            viewer = Viewer()
            sdp = await viewer.offer()
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
                code, text, answer_headers = await _call(
                    http, "POST", f"{base}/offer", json={"sdp": sdp, "type": "offer"}, headers=headers
                )
                assert code == 401 and "Authorization: Bearer" in text and TOKEN not in text
                assert answer_headers["WWW-Authenticate"].startswith("Bearer")
                assert ("invalid_token" in answer_headers["WWW-Authenticate"]) == bool(headers)
            async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}, headers=good) as response:
                assert response.status == 200
                answer = await response.json()
            session, watch = answer["session_id"], answer["watch_url"]
            guarded = [
                ("POST", "/whip"),
                ("DELETE", f"/whip/{session}"),
                ("POST", watch),
                ("DELETE", f"{watch}/someone"),
                ("POST", f"/sessions/{session}/audio?rate=16000"),
                ("POST", f"/sessions/{session}/interrupt"),
                ("GET", f"/sessions/{session}/ws?rate=16000"),
                ("GET", f"/sessions/{session}/frames"),
                ("GET", f"/sessions/{session}/events"),
                ("DELETE", f"/sessions/{session}"),
            ]
            for method, path in guarded:
                code, _, _ = await _call(http, method, base + path)
                assert code == 401, f"{method} {path} without a token: {code}"
            for path in ("/health", "/metrics", "/openapi.json", "/avatars", "/"):
                assert (await _call(http, "GET", base + path))[0] == 200, path
            assert (await _call(http, "POST", f"{base}/sessions/{session}/interrupt", headers=good))[0] == 200
            assert (await _call(http, "DELETE", f"{base}/sessions/{session}", headers=good))[0] == 200
            await viewer.close()

    asyncio.run(scenario())


def test_token_files_and_variables_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIPSTREAM_TOKENS", raising=False)
    path = tmp_path / "tokens"
    path.write_text(f"# deployment tokens\n{TOKEN}\n\n")
    monkeypatch.setenv("LIPSTREAM_TOKENS", "second-token-0123456789, ")
    assert load_tokens(path) == (TOKEN, "second-token-0123456789")
    path.write_text("short\n")
    with pytest.raises(InvalidTokensError, match="shorter than 16"):
        load_tokens(path)
    with pytest.raises(InvalidTokensError, match="cannot read"):
        load_tokens(tmp_path / "missing")


def test_one_sessions_ids_cannot_drive_or_end_another(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            first, second = Viewer(), Viewer()
            async with http.post(f"{base}/offer", json={"sdp": await first.offer(), "type": "offer"}) as response:
                a = await response.json()
            await connect(http, base, second)
            watch_a = a["watch_url"].rsplit("/", 1)[1]
            assert watch_a != a["session_id"] and len(a["session_id"]) >= 22  # 128 random bits
            # The watch id lets one watch; it does not reach the control routes.
            for method, path in (
                ("POST", f"/sessions/{watch_a}/interrupt"),
                ("DELETE", f"/sessions/{watch_a}"),
                ("DELETE", f"/whip/{watch_a}"),
                ("POST", f"/sessions/{watch_a}/audio?rate=16000"),
            ):
                assert (await _call(http, method, base + path))[0] == 404, path
            # A session id is not a watch id, and a viewer cannot end the session's own peer.
            code, _, _ = await _call(
                http,
                "POST",
                f"{base}/whep/{a['session_id']}",
                data=await Viewer().offer(),
                headers={"Content-Type": "application/sdp"},
            )
            assert code == 404
            for peer in ("nobody", "x" * 11):
                assert (await _call(http, "DELETE", f"{base}{a['watch_url']}/{peer}"))[0] == 404
            async with http.get(f"{base}/health") as response:
                assert (await response.json())["sessions"] == 2
            await first.close()
            await second.close()

    asyncio.run(scenario())


SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
AUDIO = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
VIDEO = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"


@pytest.mark.parametrize(
    ("sdp", "audio_in", "video_out", "message"),
    [
        ("", True, False, "starting with 'v=0'"),
        ("v=0\r\n" + "a=x\r\n" * 20_000, True, False, "at most 65536 bytes"),
        (SDP_HEAD + "garbage line\r\n" + AUDIO, True, False, "line 5 is not"),
        (SDP_HEAD, True, False, "1 to 8 media sections"),
        (SDP_HEAD + AUDIO * 9, True, False, "this one has 9"),
        (SDP_HEAD + "m=text 9 RTP/AVP 0\r\n", True, False, "unsupported media kind"),
        (SDP_HEAD + "m=audio\r\n", True, False, "malformed media line"),
        (SDP_HEAD + VIDEO, True, False, "no audio section with a codec"),
        (SDP_HEAD + "m=audio 9 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n", True, False, "opus, pcmu, pcma"),
        (SDP_HEAD + AUDIO, False, True, "no video section"),
    ],
)
def test_sdp_offers_are_checked_before_aiortc_sees_them(
    sdp: str, audio_in: bool, video_out: bool, message: str
) -> None:
    from aiohttp import web

    with pytest.raises(web.HTTPBadRequest) as caught:
        check_sdp(sdp, audio_in, video_out)
    assert message in json.loads(caught.value.text)["error"]


def test_sdp_check_accepts_real_offers() -> None:
    async def offers() -> list[str]:
        viewer = Viewer()
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        result = [await viewer.offer(), pc.localDescription.sdp]
        await viewer.close()
        await pc.close()
        return result

    receive, send = asyncio.run(offers())
    check_sdp(receive, need_audio_in=False, need_video_out=True)
    check_sdp(send, need_audio_in=True, need_video_out=False)


def test_sessions_per_client_are_limited_with_429(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime, max_sessions_per_client=1) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            await connect(http, base, viewer)
            code, text, headers = await _call(
                http, "POST", f"{base}/offer", json={"sdp": await Viewer().offer(), "type": "offer"}
            )
            assert code == 429 and "end one first" in text and headers["Retry-After"]
            await viewer.close()

    asyncio.run(scenario())


def test_openapi_describes_exactly_the_routes_the_server_has(runtime: Runtime) -> None:
    async def scenario() -> dict:
        async with serving(runtime, tokens=(TOKEN,)) as base, aiohttp.ClientSession() as http:
            code, text, _ = await _call(http, "GET", f"{base}/openapi.json")
            assert code == 200
            return json.loads(text)

    document = asyncio.run(scenario())
    assert document["openapi"].startswith("3.1")
    app = create_app(runtime)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        pages = {r.name for r in ROUTES if not r.api}  # the browser pages, not the API
        if route.method != "HEAD" and path and not path.startswith("/static") and route.name not in pages:
            served.add((route.method.lower(), path, route.name))
    documented = {
        (method, path, operation["operationId"])
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    assert {(m, p) for m, p, _ in served} == {(m, p) for m, p, _ in documented}
    secured = {name for _, _, name in documented if "security" in _operation(document, name)}
    assert secured == {r.name for r in ROUTES if not r.public}
    assert {"offer", "whip", "whep", "audio", "interrupt", "session-end"} <= secured


def test_a_route_nobody_declared_public_needs_a_token(runtime: Runtime) -> None:
    """Closed by default: a route added without thinking about tokens is not served to anyone without one."""

    async def scenario() -> tuple[int, int, int]:
        async def secret(_request: web.Request) -> web.Response:
            return web.Response(text="secret")

        app = create_app(runtime, ServerSettings(tokens=(TOKEN,), measured_admission=False))
        app.router.add_get("/added-later", secret, name="added-later")
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            async with aiohttp.ClientSession() as http:
                anonymous, _, _ = await _call(http, "GET", f"{base}/added-later")
                allowed, _, _ = await _call(
                    http, "GET", f"{base}/added-later", headers={"Authorization": f"Bearer {TOKEN}"}
                )
                health, _, _ = await _call(http, "GET", f"{base}/health")
        finally:
            await runner.cleanup()
        return anonymous, allowed, health

    assert asyncio.run(scenario()) == (401, 200, 200)


def _operation(document: dict, name: str) -> dict:
    return next(op for ops in document["paths"].values() for op in ops.values() if op["operationId"] == name)


class FrameTimes(Viewer):
    """A viewer that keeps only the arrival times and RTP timestamps of its video frames."""

    async def _read(self, track: object) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append((time.monotonic(), None))
                    self.stamps.append(frame.pts)
                    self.arrived.set()


def _serve_with_a_viewer(cache: str, pipe: Connection) -> None:
    """Child process: the server with one live session and its viewer. The fuzzing client runs in the
    parent, as an attacker would, so its Python work does not share the server's interpreter lock."""
    os.environ["LIPSTREAM_CACHE"] = cache

    async def main() -> None:
        runtime = build_runtime(None, engine="onnxruntime")
        async with serving(runtime, max_sessions=3) as base, aiohttp.ClientSession() as http:
            viewer = FrameTimes()
            session_id = await connect(http, base, viewer)
            await wait_for_frames(viewer, 10)
            pipe.send((base, session_id))
            while await asyncio.to_thread(pipe.recv) == "times":
                pipe.send([(t, stamp) for (t, _), stamp in zip(viewer.frames, viewer.stamps, strict=True)])
            await viewer.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def fuzz_target(runtime: Runtime, cache: Path) -> Iterator[dict]:
    """The default avatar is prepared in `cache` by `runtime`; the server process finds it there."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_with_a_viewer, args=(str(cache), child), daemon=True)
    process.start()
    if not parent.poll(120):
        process.kill()
        pytest.fail("the server process did not start in 120 s")
    base, session_id = parent.recv()

    def frame_times() -> list[tuple[float, int]]:
        parent.send("times")
        return parent.recv()

    yield {"base": base, "session": session_id, "frame_times": frame_times}
    parent.send("stop")
    process.join(30)
    if process.is_alive():
        process.kill()


CONTENT_TYPES = [
    "application/json", "application/sdp", "audio/pcm", "audio/wav", "application/octet-stream", "text/plain", "",
]  # fmt: skip
IDS = st.text(alphabet="abcXYZ019-_.%/", min_size=1, max_size=40)


@st.composite
def api_requests(draw: st.DrawFn, document: dict) -> tuple[str, str, dict, bytes, str]:
    """Mostly the API's own operations (method and path from /openapi.json) with random ids, query
    values, bodies and content types; sometimes a method the path does not have."""
    operations = [(m.upper(), path) for path, ops in document["paths"].items() for m in ops]
    method, path = draw(st.sampled_from(operations))
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
    for name in ("session", "watch", "viewer", "name"):
        path = path.replace("{" + name + "}", draw(st.one_of(st.just("{live}"), IDS)))
    values = st.one_of(st.integers(-10, 400_000).map(str), st.text(max_size=12), st.just("../../etc/passwd"))
    query = draw(st.dictionaries(st.sampled_from(["rate", "channels", "avatar"]), values, max_size=3))
    fields = st.dictionaries(
        st.sampled_from(["sdp", "type", "avatar"]), st.one_of(st.text(max_size=40), st.integers(), st.none())
    )
    body = draw(
        st.one_of(
            st.binary(max_size=3000),
            st.binary(max_size=500).map(lambda b: b"v=0\r\n" + b),
            st.binary(max_size=60).map(lambda b: b"RIFF" + b),
            fields.map(lambda v: json.dumps(v).encode()),
        )
    )
    return method, path, query, body, draw(st.sampled_from(CONTENT_TYPES))


def test_fuzzed_requests_get_4xx_never_5xx_and_the_live_session_keeps_25_fps(fuzz_target: dict) -> None:
    base, live_session = fuzz_target["base"], fuzz_target["session"]
    document = requests_get_json(f"{base}/openapi.json")
    codes: dict[int, int] = {}
    loop = asyncio.new_event_loop()
    http = loop.run_until_complete(_session())
    started = time.monotonic()

    @settings(
        max_examples=int(os.environ.get("LIPSTREAM_FUZZ_EXAMPLES", "1000")),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(api_requests(document))
    def one(request: tuple[str, str, dict, bytes, str]) -> None:
        method, path, query, body, content_type = request
        # The live session may be interrupted or fed noise, but not ended: its frame rate is measured.
        path = path.replace("{live}", "gone" if method == "DELETE" else live_session)
        headers = {"Content-Type": content_type} if content_type else {}

        async def send() -> int:
            async with asyncio.timeout(20):
                if path.endswith("/events"):  # a server-sent event stream never ends: its answer is the head
                    async with http.request(method, base + path, params=query, data=body, headers=headers) as answer:
                        return answer.status
                return (await _call(http, method, base + path, params=query, data=body, headers=headers))[0]

        try:
            code = loop.run_until_complete(send())
        except (TimeoutError, aiohttp.ClientError) as err:
            pytest.fail(f"{method} {path} {query} {content_type}: no answer ({err!r})")
        codes[code] = codes.get(code, 0) + 1
        assert code < 500, f"{method} {path} {query} {content_type} {body[:60]!r} -> {code}"

    try:
        one()
    finally:
        loop.run_until_complete(http.close())
        loop.close()
    seconds = time.monotonic() - started
    times = fuzz_target["frame_times"]()
    during = [(t, stamp) for t, stamp in times if started <= t <= started + seconds]
    tried = sum(codes.values())
    print(
        f"fuzz: {tried} requests in {seconds:.1f} s, status counts {dict(sorted(codes.items()))}; "
        f"live session {len(during)} frames"
    )
    assert tried >= 50 and len(during) > 25
    assert codes.get(405, 0) < tried / 3, "most requests reached a real handler"
    # The live session kept its 25 fps clock while the fuzzing went on.
    assert_25_fps([stamp for _, stamp in during], [t for t, _ in during])
    # The live session is still there (POST /sessions may have opened others, up to the limits).
    assert requests_get_json(f"{base}/health")["sessions"] >= 1
    alive = asyncio.run(_interrupt(f"{base}/sessions/{live_session}/interrupt"))
    assert alive == 200


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


async def _interrupt(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.post(url) as response:
        return response.status


def requests_get_json(url: str) -> dict:
    async def get() -> dict:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return await response.json()

    return asyncio.run(get())


class FailingEngine:
    """The real engine, with faults injected on demand: an exception, or a stall past the budget."""

    def __init__(self, engine: object) -> None:
        self.engine, self.fault = engine, None
        self.max_batch, self.kind, self.model_id = engine.max_batch, engine.kind, engine.model_id

    def run(self, feed: dict) -> dict:
        if self.fault == "raise":
            raise RuntimeError("injected engine failure")
        if self.fault == "stall":
            time.sleep(0.6)
        return self.engine.run(feed)


def test_engine_faults_fall_back_to_idle_frames_count_and_recover(runtime: Runtime, speech: np.ndarray) -> None:
    engine = FailingEngine(runtime.engine)

    async def scenario() -> tuple[list[dict], float]:
        runtime.engine, original = engine, runtime.engine
        try:
            async with serving(runtime) as base, aiohttp.ClientSession() as http:
                viewer = Viewer()
                session_id = await connect(http, base, viewer)
                await wait_for_frames(viewer, 5)
                pcm = (np.tile(speech[8000:40000], 4) * 32767).astype("<i2").tobytes()
                push = asyncio.create_task(
                    _call(
                        http,
                        "POST",
                        f"{base}/sessions/{session_id}/audio?rate=16000",
                        data=pcm,
                        headers={"Content-Type": "audio/pcm"},
                    )
                )
                snapshots = []
                for fault in ("raise", "stall", None):
                    engine.fault = fault
                    await wait_for_frames(viewer, len(viewer.frames) + 20)
                    snapshots.append(await metric_values(http, base))
                generated = "lipstream_frames_generated_total"
                for _ in range(8):  # a stalled call still holds the engine's thread until it returns
                    if snapshots[2][generated] > snapshots[1][generated] + 5:
                        break
                    await wait_for_frames(viewer, len(viewer.frames) + 10)
                    snapshots[2] = await metric_values(http, base)
                await push
                await viewer.close()
                return snapshots, viewer.stamps[-40:], [t for t, _ in viewer.frames[-40:]]
        finally:
            runtime.engine = original

    (failing, stalling, recovered), stamps, arrivals = asyncio.run(scenario())
    assert failing["lipstream_inference_errors_total"] >= 1
    assert stalling["lipstream_inference_timeouts_total"] >= 1
    generated = "lipstream_frames_generated_total"
    assert recovered[generated] > stalling[generated] + 5, "inference resumed by itself after the faults"
    assert_25_fps(stamps, arrivals)  # the session kept its frame clock through the faults


async def metric_values(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with http.get(f"{base}/metrics") as response:
        text = await response.text()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and line[0] != "#"}


def _resources() -> dict[str, float]:
    import gc
    import threading

    gc.collect()
    with open("/proc/self/statm") as handle:
        rss_pages = int(handle.read().split()[1])
    return {
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_mb": rss_pages * os.sysconf("SC_PAGE_SIZE") / 2**20,
    }


async def _open_and_close(http: aiohttp.ClientSession, base: str, index: int) -> None:
    """One full session: negotiated, first frame received, then ended by DELETE (even index) or by the
    client closing its peer connection without a word to the server (odd index)."""
    viewer = FrameTimes()
    session_id = await connect(http, base, viewer)
    await wait_for_frames(viewer, 1)
    if index % 2 == 0:
        assert (await _call(http, "DELETE", f"{base}/sessions/{session_id}"))[0] == 200
    await viewer.close()


def leak_check(runtime: Runtime, sessions: int) -> dict:
    async def scenario() -> dict:
        async with serving(runtime, max_sessions=4) as base, aiohttp.ClientSession() as http:

            async def drained() -> None:
                async with asyncio.timeout(15):  # a client that just vanished is freed within this
                    while True:
                        async with http.get(f"{base}/health") as response:
                            if (await response.json())["sessions"] == 0:
                                return
                        await asyncio.sleep(0.1)

            for index in range(10):  # warm-up: thread pools, codecs and caches reach their size
                await _open_and_close(http, base, index)
            await drained()
            before = _resources()
            started = time.monotonic()
            for index in range(sessions):
                await _open_and_close(http, base, index)
            await drained()
            await asyncio.sleep(1)
            after = _resources()
            return {"sessions": sessions, "seconds": time.monotonic() - started, "before": before, "after": after}

    return asyncio.run(scenario())


def _assert_no_leaks(report: dict) -> None:
    before, after = report["before"], report["after"]
    print(f"leaks over {report['sessions']} sessions in {report['seconds']:.0f} s: before {before}, after {after}")
    assert after["tasks"] <= before["tasks"] and after["fds"] <= before["fds"] + 2
    assert after["threads"] <= before["threads"] + 1
    assert after["rss_mb"] < 1.05 * before["rss_mb"], "resident memory grew by 5 % or more"


def test_sessions_opened_and_closed_in_a_loop_leak_nothing(runtime: Runtime) -> None:
    _assert_no_leaks(leak_check(runtime, 30))


@pytest.mark.slow
def test_200_sessions_opened_and_closed_leak_nothing(runtime: Runtime) -> None:
    _assert_no_leaks(leak_check(runtime, 200))


def test_ice_trickle_gets_a_clear_405_and_ice_servers_travel_as_link_headers(runtime: Runtime) -> None:
    from aiortc import RTCIceServer

    from lipstream.realtime.ice import link_header

    async def scenario() -> list[tuple[int, str, dict]]:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            return [
                await _call(
                    http, "PATCH", f"{base}/whip/some-session", data="a=candidate:1 1 udp 1 127.0.0.1 9 typ host"
                ),
                await _call(http, "PATCH", f"{base}/whep/watch/viewer"),
            ]

    for code, text, headers in asyncio.run(scenario()):
        assert code == 405 and "ICE trickle is not supported" in text and headers["Allow"] == "DELETE"
    servers = (RTCIceServer("stun:stun.example.net"), RTCIceServer(["turn:turn.example.net"], "user", "secret"))
    links = link_header(list(servers))["Link"]
    assert links == (
        '<stun:stun.example.net>; rel="ice-server", <turn:turn.example.net>; rel="ice-server"; '
        'username="user"; credential="secret"; credential-type="password"'
    )
    assert link_header([]) == {}
