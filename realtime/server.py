"""`lipstream serve`: the aiohttp application (built by `create_app`, state in typed app keys).

The routes are declared once, in ROUTES (method, path, handler, name, summary, public): the router,
the token check and /openapi.json are built from that table. In short: POST /offer (aiortc's
convention), WHIP ingest and WHEP viewers, sessions without a peer fed by HTTP or WebSocket audio,
interrupt, health, Prometheus metrics, and the browser page with its avatars and samples.

With tokens configured, every route not declared public needs `Authorization: Bearer <token>`
(security.py, routes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lipstream.avatars.errors import AvatarError
from lipstream.dsp import FPS, MelConfig
from lipstream.paths import InvalidNameError
from lipstream.web_client import ROOT as WEB_CLIENT

from . import jitter
from .audio_in import AudioFormatError, Resampler
from .capacity import CapacityMonitor
from .clock import Clock, MonotonicClock
from .log import logger, spawn
from .openapi import openapi_document
from .routes import Route, add_routes, public_names
from .runtime import Runtime
from .scheduler import FrameScheduler
from .security import MAX_SDP_BYTES, auth_middleware, check_sdp, error_response
from .session import AvatarSession
from .tracks import Broadcast


@dataclass
class ServerSettings:
    max_sessions: int = 4  # admission control: more would push two cores below 25 fps
    max_sessions_per_client: int = 2  # per remote address
    tokens: tuple[str, ...] = ()  # bearer tokens; empty: no authentication (loopback and trusted networks)
    ice_servers: tuple[RTCIceServer, ...] = ()  # STUN/TURN servers for the server's own ICE candidates
    push_ahead_seconds: float = 5.0  # how far an HTTP push may run ahead of playback before it is throttled
    jitter_frames: int = 1  # input frames buffered before playback starts (absorbs arrival jitter)
    abandoned_after: float = 60.0  # a session with no peer and no audio for this long is ended
    measured_admission: bool = True  # also refuse sessions the machine's measured spare CPU cannot hold


@dataclass
class LiveSession:
    session: AvatarSession
    broadcast: Broadcast
    client: str  # remote address that opened it
    watch_id: str  # addresses the session's WHEP resource: watching, not control
    clock: Clock
    peers: dict[str, RTCPeerConnection] = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    viewers: set[str] = field(default_factory=set)  # peer ids of WHEP viewers
    last_active: float = 0.0  # when audio came in or a peer attached, on `clock`

    def __post_init__(self) -> None:
        self.touch()

    def touch(self) -> None:
        self.last_active = self.clock.now()


class ServerState:
    def __init__(self, runtime: Runtime, settings: ServerSettings, clock: Clock) -> None:
        self.runtime, self.settings, self.clock = runtime, settings, clock
        self.scheduler: FrameScheduler = runtime.scheduler(clock)
        self.live: dict[str, LiveSession] = {}
        self.watched: dict[str, str] = {}  # watch id -> session id
        # What the pipeline adds between audio in and mouth out, before the network: the mel window's
        # look-ahead, the jitter buffer, and one tick for inference and compositing.
        self.pipeline_delay_ms = 1e3 * (MelConfig().lookahead_seconds + (settings.jitter_frames + 1) / FPS)
        self.capacity = CapacityMonitor(clock=clock)
        runtime.metrics.gauge("lipstream_sessions", "Open sessions", lambda: len(self.live))
        runtime.metrics.gauge(
            "lipstream_idle_cores",
            "Idle CPU cores of the machine over the last seconds (-1: unknown)",
            self._idle_cores,
        )
        runtime.metrics.gauge(
            "lipstream_buffered_frames",
            "Input frames waiting in all sessions' jitter buffers",
            lambda: sum(s.session.buffered_frames for s in self.live.values()),
        )

    def _idle_cores(self) -> float:
        load = self.capacity.load()
        return -1.0 if load is None or load.idle_cores is None else load.idle_cores

    async def measure(self, every: float = 1.0) -> None:
        """Samples the machine's load for admission (see capacity.py)."""
        while True:
            self.capacity.sample(self.runtime.metrics.frames_dropped.value, len(self.live))
            await asyncio.sleep(every)

    def _admit(self, client: str) -> None:
        limit = self.settings.max_sessions
        if len(self.live) >= limit:
            raise error_response(
                web.HTTPServiceUnavailable, f"the server is full ({limit} sessions); try again later", **RETRY
            )
        refusal = self.capacity.refusal() if self.settings.measured_admission else None
        if refusal is not None:
            raise error_response(web.HTTPServiceUnavailable, f"{refusal}; try again later", **RETRY)
        own = sum(live.client == client for live in self.live.values())
        if own >= self.settings.max_sessions_per_client:
            raise error_response(
                web.HTTPTooManyRequests,
                f"{own} sessions are open from {client}, the most one client may have; end one first",
                **RETRY,
            )

    async def open(self, client: str, avatar: str | None = None) -> LiveSession:
        self._admit(client)
        try:
            assets = await asyncio.to_thread(self.runtime.assets_for, avatar)
        except (AvatarError, InvalidNameError) as err:
            raise _error(web.HTTPNotFound, f"avatar {avatar!r} cannot be used: {err}") from err
        self._admit(client)  # others may have been admitted while the avatar loaded
        session_id, watch_id = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        session = AvatarSession(
            session_id, assets, jitter_frames=self.settings.jitter_frames, metrics=self.runtime.metrics
        )
        live = LiveSession(session, Broadcast(session), client, watch_id, self.clock)
        self.live[session_id] = live
        self.watched[watch_id] = session_id
        self.scheduler.add(session)
        return live

    def get(self, session_id: str) -> LiveSession:
        live = self.live.get(session_id)
        if live is None:
            raise _error(web.HTTPNotFound, "no such session")
        return live

    def watching(self, watch_id: str) -> LiveSession:
        return self.get(self.watched.get(watch_id, ""))

    async def close(self, session_id: str) -> None:
        live = self.live.pop(session_id, None)
        if live is None:
            return
        self.watched.pop(live.watch_id, None)
        self.scheduler.remove(session_id)
        live.session.close()
        tasks, live.tasks = list(live.tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, MediaStreamError):
                await task
        await live.broadcast.close()
        peers, live.peers = list(live.peers.values()), {}
        for pc in peers:
            await pc.close()

    async def reap(self) -> None:
        """Ends sessions nobody uses any more: no peer connected and no audio pushed for
        `abandoned_after` seconds (a client that created one and vanished)."""
        while True:
            await asyncio.sleep(min(5.0, self.settings.abandoned_after / 4))
            now = self.clock.now()
            for session_id, live in list(self.live.items()):
                if not live.peers and now - live.last_active > self.settings.abandoned_after:
                    await self.close(session_id)

    def spawn(self, live: LiveSession, coroutine: object, name: str) -> None:
        task = spawn(coroutine, f"{name}-{live.session.id}")
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)


STATE = web.AppKey("state", ServerState)
RETRY = {"Retry-After": "5"}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_CLIENT / "index.html")


async def list_avatars(request: web.Request) -> web.Response:
    names = await asyncio.to_thread(request.app[STATE].runtime.avatar_names)
    return web.json_response({"avatars": names})


def _samples(state: ServerState) -> dict[str, Path]:
    folder = state.runtime.samples_dir
    return {p.name: p for p in sorted(folder.glob("*.wav"))} if folder and folder.is_dir() else {}


async def list_samples(request: web.Request) -> web.Response:
    return web.json_response({"samples": list(await asyncio.to_thread(_samples, request.app[STATE]))})


async def sample(request: web.Request) -> web.FileResponse:
    files = await asyncio.to_thread(_samples, request.app[STATE])
    path = files.get(request.match_info["name"])  # only names listed: no path reaches outside the folder
    if path is None:
        raise _error(web.HTTPNotFound, "no such sample")
    return web.FileResponse(path)


_error = error_response


async def _ingest(live: LiveSession, track: object) -> None:
    """Feeds a received WebRTC audio track into the session until the track ends."""
    resampler = Resampler(48_000, 2)
    live.session.max_backlog_frames = live.session.jitter_frames + LIVE_BACKLOG_EXTRA_FRAMES
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        with live.session.metrics.timed("resample"):
            samples = resampler.push_frame(frame)
        live.session.push_audio(samples)


async def _answer(
    state: ServerState, live: LiveSession, offer: RTCSessionDescription, send: bool, ingest: bool
) -> tuple[str, RTCPeerConnection]:
    """Connects one peer to a session: it may send audio in (ingest), receive the avatar (send), or both."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=list(state.settings.ice_servers) or None))
    peer_id = secrets.token_urlsafe(8)
    live.peers[peer_id] = pc

    @pc.on("track")
    def on_track(track: object) -> None:
        if ingest and track.kind == "audio":
            state.spawn(live, _ingest(live, track), "ingest")

    @pc.on("datachannel")
    def on_datachannel(channel: object) -> None:
        @channel.on("message")
        def on_message(message: object) -> None:
            if message == "interrupt" or (isinstance(message, str) and '"interrupt"' in message):
                _interrupt(live)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            live.peers.pop(peer_id, None)
            if ingest:
                await state.close(live.session.id)
            else:
                live.viewers.discard(peer_id)
                live.broadcast.detach(peer_id)
                live.touch()  # the idle clock starts when the last viewer leaves

    try:
        await pc.setRemoteDescription(offer)
        # aiortc's own buffer waits 80 ms; without ours every ingest peer carries that delay
        if ingest and not jitter.install(pc, "audio", jitter.LowDelayAudioBuffer):
            state.runtime.metrics.jitter_patch_missing.inc()
            logger.error(
                "this aiortc has no receiver buffer field to replace: the low-delay audio buffer is "
                "not installed and ingest keeps aiortc's 80 ms of buffering; pin aiortc as pyproject.toml does"
            )
        if send:
            video, audio = live.broadcast.attach(peer_id)
            pc.addTrack(video)
            pc.addTrack(audio)
        await pc.setLocalDescription(await pc.createAnswer())
    except (ValueError, KeyError, TypeError) as err:
        live.peers.pop(peer_id, None)
        await pc.close()
        raise _error(web.HTTPBadRequest, f"the SDP offer could not be used: {err}") from err
    return peer_id, pc


def _offer_from(text: str, need_audio_in: bool, need_video_out: bool) -> RTCSessionDescription:
    check_sdp(text, need_audio_in, need_video_out)
    return RTCSessionDescription(sdp=text, type="offer")


async def _sdp_body(request: web.Request) -> str:
    try:
        return (await request.read()).decode("utf-8")
    except UnicodeDecodeError as err:
        raise _error(web.HTTPBadRequest, f"the SDP offer is not UTF-8 text (byte {err.start})") from err


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    try:
        body = await request.json()
        sdp, kind = body["sdp"], body["type"]
    except (ValueError, KeyError, TypeError) as err:
        raise _error(web.HTTPBadRequest, 'expected JSON {"sdp": "...", "type": "offer"}') from err
    avatar = body.get("avatar")
    if kind != "offer" or not isinstance(sdp, str) or not isinstance(avatar, str | None):
        raise _error(web.HTTPBadRequest, 'expected JSON {"sdp": "...", "type": "offer"} (and optionally "avatar")')
    description = _offer_from(sdp, need_audio_in=False, need_video_out=True)
    live = await state.open(request.remote or "", avatar)
    try:
        _, pc = await _answer(state, live, description, send=True, ingest=True)
    except web.HTTPException:
        await state.close(live.session.id)
        raise
    local = pc.localDescription
    return web.json_response(
        {"sdp": local.sdp, "type": local.type, "session_id": live.session.id, "watch_url": f"/whep/{live.watch_id}"}
    )


async def create_session(request: web.Request) -> web.Response:
    """A session without a peer of its own: audio comes by HTTP, WebSocket or `lipstream talk`,
    viewers by WHEP. JSON body (optional): {"avatar": NAME}."""
    state = request.app[STATE]
    avatar = None
    if request.can_read_body:
        expected = 'expected no body, or JSON {"avatar": "NAME"}'
        try:
            body = await request.json()
        except ValueError as err:
            raise _error(web.HTTPBadRequest, expected) from err
        if not isinstance(body, dict) or not isinstance(body.get("avatar"), str | None):
            raise _error(web.HTTPBadRequest, expected)
        avatar = body.get("avatar")
    live = await state.open(request.remote or "", avatar)
    return web.json_response(
        {"session_id": live.session.id, "watch_url": f"/whep/{live.watch_id}"},
        status=201,
        headers={"Location": f"/sessions/{live.session.id}"},
    )


async def whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.content_type != "application/sdp":
        raise _error(web.HTTPUnsupportedMediaType, "WHIP expects Content-Type: application/sdp")
    description = _offer_from(await _sdp_body(request), need_audio_in=True, need_video_out=False)
    live = await state.open(request.remote or "", request.query.get("avatar"))
    try:
        _, pc = await _answer(state, live, description, send=False, ingest=True)
    except web.HTTPException:
        await state.close(live.session.id)
        raise
    location = f"/whip/{live.session.id}"
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": location, "X-Session-Id": live.session.id, "X-Watch-Url": f"/whep/{live.watch_id}"},
    )


async def whep(request: web.Request) -> web.Response:
    state = request.app[STATE]
    live = state.watching(request.match_info["watch"])
    if request.content_type != "application/sdp":
        raise _error(web.HTTPUnsupportedMediaType, "WHEP expects Content-Type: application/sdp")
    offer = _offer_from(await _sdp_body(request), need_audio_in=False, need_video_out=True)
    peer_id, pc = await _answer(state, live, offer, send=True, ingest=False)
    live.viewers.add(peer_id)
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": f"/whep/{live.watch_id}/{peer_id}"},
    )


async def end_whep(request: web.Request) -> web.Response:
    live = request.app[STATE].watching(request.match_info["watch"])
    viewer = request.match_info["viewer"]
    pc = live.peers.pop(viewer, None) if viewer in live.viewers else None  # never the session's own peer
    if pc is None:
        raise _error(web.HTTPNotFound, "no such viewer")
    live.broadcast.detach(request.match_info["viewer"])
    live.viewers.discard(viewer)
    live.touch()
    await pc.close()
    return web.Response(status=200)


async def end_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.get(request.match_info["session"])
    await state.close(request.match_info["session"])
    return web.Response(status=200)


LIVE_BACKLOG_EXTRA_FRAMES = 2  # live input more than this far behind is dropped, not played late
INTERRUPT_DISCARD_SECONDS = 0.1  # audio a network client may have had in flight when it interrupted


def _interrupt(live: LiveSession) -> None:
    live.session.clear_buffer(discard_seconds=INTERRUPT_DISCARD_SECONDS)
    live.broadcast.clear()


async def interrupt(request: web.Request) -> web.Response:
    _interrupt(request.app[STATE].get(request.match_info["session"]))
    return web.json_response({"interrupted": True})


async def audio_socket(request: web.Request) -> web.WebSocketResponse:
    """WebSocket audio: binary messages are s16le PCM at ?rate= (&channels=); text "end" closes an
    utterance, "interrupt" interrupts. Each binary message is acknowledged with the seconds buffered."""
    state = request.app[STATE]
    live = state.get(request.match_info["session"])
    try:
        resampler = Resampler(int(request.query["rate"]), int(request.query.get("channels", "1")))
    except (KeyError, ValueError) as err:
        raise _error(web.HTTPBadRequest, "the audio WebSocket needs ?rate=<Hz> (and optionally &channels=1|2)") from err
    except AudioFormatError as err:
        raise _error(web.HTTPBadRequest, str(err)) from err
    socket = web.WebSocketResponse(max_msg_size=1 << 20)
    await socket.prepare(request)
    ahead = round(state.settings.push_ahead_seconds * FPS)
    async for message in socket:
        if message.type == web.WSMsgType.BINARY:
            with live.session.metrics.timed("resample"):
                samples = resampler.push_bytes(message.data)
            live.session.push_audio(samples)
            live.touch()
            await live.session.wait_until_buffered_at_most(ahead)
            await socket.send_json({"buffered_seconds": live.session.buffered_frames / FPS})
        elif message.type == web.WSMsgType.TEXT and message.data == "end":
            live.session.end_of_input()
        elif message.type == web.WSMsgType.TEXT and message.data == "interrupt":
            _interrupt(live)
        elif message.type == web.WSMsgType.TEXT:
            await socket.send_json({"error": 'send binary s16le PCM, or the text "end" or "interrupt"'})
    return socket


def _pcm_format(request: web.Request) -> tuple[bool, int, int]:
    """(is_wav, rate, channels) from the Content-Type and query."""
    kind = request.content_type
    if kind in ("audio/wav", "audio/x-wav", "audio/wave"):
        return True, 0, 0
    if kind not in ("audio/pcm", "application/octet-stream"):
        raise _error(
            web.HTTPUnsupportedMediaType,
            "send audio/wav, or raw s16le PCM as audio/pcm or application/octet-stream with ?rate=&channels=",
        )
    try:
        rate = int(request.query["rate"])
        channels = int(request.query.get("channels", "1"))
    except (KeyError, ValueError) as err:
        raise _error(web.HTTPBadRequest, "raw PCM needs ?rate=<Hz> (and optionally &channels=1|2)") from err
    return False, rate, channels


async def _wav_header(stream: web.StreamReader) -> tuple[int, int]:
    """Reads a PCM WAV header off the stream; returns (rate, channels), leaving the stream at the samples."""
    try:
        riff = await stream.readexactly(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise _error(web.HTTPBadRequest, "not a WAV stream (no RIFF/WAVE header)")
        rate = channels = 0
        while True:
            chunk_id, size = struct.unpack("<4sI", await stream.readexactly(8))
            if chunk_id == b"data":
                if not rate:
                    raise _error(web.HTTPBadRequest, "WAV data before its fmt chunk")
                return rate, channels
            if size > 1 << 16:
                raise _error(web.HTTPBadRequest, f"WAV header chunk {chunk_id!r} of {size} bytes is too large")
            payload = await stream.readexactly(size + size % 2)
            if chunk_id == b"fmt ":
                audio_format, channels, rate, _, _, bits = struct.unpack("<HHIIHH", payload[:16])
                if audio_format != 1 or bits != 16:
                    raise _error(
                        web.HTTPUnsupportedMediaType,
                        f"WAV format {audio_format}, {bits} bits; send 16-bit PCM (format 1)",
                    )
    except asyncio.IncompleteReadError as err:
        raise _error(web.HTTPBadRequest, "the WAV header is truncated") from err


async def push_audio(request: web.Request) -> web.Response:
    state = request.app[STATE]
    live = state.get(request.match_info["session"])
    is_wav, rate, channels = _pcm_format(request)
    if is_wav:
        rate, channels = await _wav_header(request.content)
    try:
        resampler = Resampler(rate, channels)
    except AudioFormatError as err:
        raise _error(web.HTTPBadRequest, str(err)) from err
    received, throttled = 0, 0.0
    ahead = round(state.settings.push_ahead_seconds * FPS)
    async for chunk in request.content.iter_chunked(4096):
        with live.session.metrics.timed("resample"):
            samples = resampler.push_bytes(chunk)
        live.session.push_audio(samples)
        live.touch()
        received += len(chunk)
        waited = state.clock.now()
        await live.session.wait_until_buffered_at_most(ahead)  # throttles a pusher faster than real time
        throttled += state.clock.now() - waited
    live.session.end_of_input()
    # throttled_seconds: how long reading was paused because the push ran more than
    # push_ahead_seconds ahead of playback (the client is told, and TCP back-pressure slowed it).
    return web.json_response({"seconds": received / (2 * channels * rate), "throttled_seconds": round(throttled, 3)})


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    runtime = state.runtime
    return web.json_response(
        {
            "status": "ok",
            "sessions": len(state.live),
            "max_sessions": state.settings.max_sessions,
            "admission": "measured" if state.settings.measured_admission else "count",
            "avatar": runtime.assets.avatar.name,
            "pipeline_delay_ms": round(state.pipeline_delay_ms, 1),
            "style_smoothing": state.scheduler.style_smoothing,
            "engine": runtime.engine.kind,
            "model_id": runtime.engine.model_id,
        }
    )


async def api_description(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(bool(request.app[STATE].settings.tokens), ROUTES))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[STATE].runtime.metrics.render(), content_type="text/plain")


ROUTES = (
    Route("POST", "/offer", offer, "offer", "Open a session: the peer sends its microphone and receives the avatar"),
    Route("POST", "/whip", whip, "whip", "WHIP (RFC 9725) audio ingest: opens a session driven by the offer's audio"),
    Route("DELETE", "/whip/{session}", end_session, "whip-end", "End a WHIP session"),
    Route("POST", "/whep/{watch}", whep, "whep", "WHEP viewer of a session, addressed by its watch id"),
    Route("DELETE", "/whep/{watch}/{viewer}", end_whep, "whep-end", "End a viewer"),
    Route("POST", "/sessions", create_session, "session-create", "Open a session without a peer (audio by HTTP/WS)"),
    Route("POST", "/sessions/{session}/audio", push_audio, "audio", "Stream PCM or WAV audio into a session"),
    Route("POST", "/sessions/{session}/interrupt", interrupt, "interrupt", "Drop queued audio and pending frames"),
    Route("GET", "/sessions/{session}/ws", audio_socket, "audio-socket", "WebSocket audio: PCM, 'end', 'interrupt'"),
    Route("DELETE", "/sessions/{session}", end_session, "session-end", "End a session"),
    Route("GET", "/openapi.json", api_description, "openapi", "This document", public=True),
    Route("GET", "/", index, "page", "The browser demo client", public=True, api=False),
    Route("GET", "/avatars", list_avatars, "avatars", "Avatars that can be chosen", public=True),
    Route("GET", "/samples", list_samples, "samples", "Speech samples the page can play", public=True),
    Route("GET", "/samples/{name}", sample, "sample", "One speech sample (WAV)", public=True),
    Route("GET", "/health", health, "health", "Status", public=True),
    Route("GET", "/metrics", metrics, "metrics", "Prometheus metrics", public=True),
)


def create_app(runtime: Runtime, settings: ServerSettings | None = None, clock: Clock | None = None) -> web.Application:
    settings = settings or ServerSettings()
    public = public_names(ROUTES) | {"static"}
    app = web.Application(client_max_size=MAX_SDP_BYTES, middlewares=[auth_middleware(settings.tokens, public)])
    state = ServerState(runtime, settings, clock or MonotonicClock())
    app[STATE] = state
    add_routes(app, ROUTES)
    app.router.add_static("/static", WEB_CLIENT, name="static")

    background: list[asyncio.Task] = []

    async def start(_app: web.Application) -> None:
        state.scheduler.start()
        background.append(spawn(state.reap(), "session-reaper"))
        background.append(spawn(state.measure(), "capacity-monitor"))

    async def stop(_app: web.Application) -> None:
        for task in background:
            task.cancel()
        for session_id in list(state.live):
            await state.close(session_id)
        await state.scheduler.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app
