"""The open sessions of one server process: the registry, admission (a fixed ceiling, the machine's
measured capacity, a limit per client), and what belongs to one live session (its peers, its tasks,
its viewers)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass, field

from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from lipstream.avatars.errors import AvatarError
from lipstream.dsp import FPS, serving_config
from lipstream.paths import InvalidNameError

from .capacity import CapacityMonitor
from .clock import Clock
from .janus import Publication
from .log import spawn
from .runtime import Runtime, time_tick
from .scheduler import FrameScheduler
from .security import error_response
from .session import AvatarSession
from .settings import ServerSettings
from .tracks import Broadcast

INTERRUPT_DISCARD_SECONDS = 0.1  # audio a network client may have had in flight when it interrupted


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
    publication: Publication | None = None  # the stream in a Janus room, once published (janus.py)
    publishing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one publication, however many ask

    def __post_init__(self) -> None:
        self.touch()

    def touch(self) -> None:
        self.last_active = self.clock.now()

    def interrupt(self) -> None:
        """Drops queued audio and pending frames (also those waiting for each viewer's sender)."""
        self.session.clear_buffer(discard_seconds=INTERRUPT_DISCARD_SECONDS)
        self.broadcast.clear()


class ServerState:
    def __init__(self, runtime: Runtime, settings: ServerSettings, clock: Clock) -> None:
        self.runtime, self.settings, self.clock = runtime, settings, clock
        self.scheduler: FrameScheduler = runtime.scheduler(clock)
        self.live: dict[str, LiveSession] = {}
        self.watched: dict[str, str] = {}  # watch id -> session id
        # What the pipeline adds between audio in and mouth out, before the network: the mel window's
        # look-ahead, the jitter buffer, and one tick for inference and compositing.
        self.pipeline_delay_ms = 1e3 * (serving_config().lookahead_seconds + (settings.jitter_frames + 1) / FPS)
        tick_model = time_tick(runtime, settings.max_sessions + 1) if settings.measured_admission else None
        self.capacity = CapacityMonitor(clock=clock, tick_model=tick_model)
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
            metrics = self.runtime.metrics
            self.capacity.sample(metrics.frames_dropped.value, len(self.live), metrics.totals())
            await asyncio.sleep(every)

    def refusal(self) -> str | None:
        """Why a new session would be refused now, whoever asks, or None while one would be admitted:
        what /health and the load balancer's agent (deploy/haproxy.py) report."""
        limit = self.settings.max_sessions
        if len(self.live) >= limit:
            return f"the server is full ({limit} sessions)"
        return self.capacity.refusal() if self.settings.measured_admission else None

    def _admit(self, client: str) -> None:
        refusal = self.refusal()
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
            raise error_response(web.HTTPNotFound, f"avatar {avatar!r} cannot be used: {err}") from err
        self._admit(client)  # others may have been admitted while the avatar loaded
        session_id, watch_id = self._new_id(), self._new_id()
        session = AvatarSession(
            session_id,
            assets,
            jitter_frames=self.settings.jitter_frames,
            metrics=self.runtime.metrics,
            voice_warp=self.runtime.voice_warp,
            voice_norm=self.runtime.voice_norm,
        )
        live = LiveSession(session, Broadcast(session), client, watch_id, self.clock)
        self.live[session_id] = live
        self.watched[watch_id] = session_id
        self.scheduler.add(session)
        return live

    def client_of(self, request: web.Request) -> str:
        """The client's address: the peer's, or the last hop a trusted proxy added to X-Forwarded-For."""
        remote = request.remote or ""
        forwarded = request.headers.get("X-Forwarded-For", "")
        if remote in self.settings.trusted_proxies and forwarded:
            return forwarded.rsplit(",", 1)[-1].strip()
        return remote

    def ice_servers(self, name: str) -> list[RTCIceServer]:
        """The ICE servers for the peer or client called `name` (a session id, or one made up for a
        client), with its own short-lived TURN credential where a secret is set (ice.py)."""
        return self.settings.ice.servers(name, self.clock.wall())

    def peer_configuration(self, name: str) -> RTCConfiguration:
        return self.settings.ice.configuration(name, self.clock.wall())

    def _new_id(self) -> str:
        token = secrets.token_urlsafe(16)
        return f"{self.settings.instance}-{token}" if self.settings.instance else token

    def get(self, session_id: str) -> LiveSession:
        live = self.live.get(session_id)
        if live is None:
            raise error_response(web.HTTPNotFound, "no such session")
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
        if live.publication is not None:
            await live.publication.close()
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

    def spawn(self, live: LiveSession, coroutine: object, name: str) -> asyncio.Task:
        """A task of the session's: closing the session cancels it."""
        task = spawn(coroutine, f"{name}-{live.session.id}")
        live.tasks.add(task)
        task.add_done_callback(live.tasks.discard)
        return task


STATE = web.AppKey("state", ServerState)
RETRY = {"Retry-After": "5"}
