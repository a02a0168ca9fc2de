"""Fan-out through Janus (Debian's `janus`), the SFU: a session's stream is encoded once and published
into a VideoRoom of its own, and any number of viewers watch it through Janus, which forwards the
packets without encoding anything. We build no forwarding of our own.

`JanusSession` speaks Janus's HTTP API (requests by POST, events by long poll); `publish` sends a live
session's tracks into a new room (`serve --janus URL`, then `POST /sessions/{id}/publish`); `subscribe`
is a viewer (the fan-out benchmark's, a test's, or any client's). A Janus for this machine is configured
and started by deploy/janus.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from .log import logger

if TYPE_CHECKING:
    from .registry import LiveSession, ServerState

VIDEOROOM = "janus.plugin.videoroom"
REQUEST_TIMEOUT_S = 15.0


class JanusError(RuntimeError):
    """Janus refused a request, or did not answer: the message says which and why."""


class JanusSession:
    """One Janus session over HTTP: requests by POST; a long poll receives the events that answer
    asynchronous requests (join, publish, start) and keeps the session alive."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._poll: asyncio.Task | None = None
        self.ended = False  # Janus no longer knows this session (it restarted, or timed it out)

    async def open(self) -> JanusSession:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S + 35))
        try:
            self.id = (await self._post(self.url, {"janus": "create"}))["data"]["id"]
        except BaseException:
            await self._http.close()
            raise
        self._poll = asyncio.create_task(self._long_poll(), name=f"janus-poll-{self.id}")
        return self

    async def _post(self, url: str, message: dict) -> dict:
        message = {**message, "transaction": message.get("transaction") or secrets.token_hex(8)}
        try:
            async with self._http.post(url, json=message) as response:
                reply = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise JanusError(f"Janus at {self.url} did not answer {message['janus']!r}: {err!r}") from err
        if reply.get("janus") == "error":
            raise JanusError(f"Janus refused {message['janus']!r}: {reply['error'].get('reason')}")
        return reply

    async def _long_poll(self) -> None:
        while True:
            try:
                async with self._http.get(f"{self.url}/{self.id}?maxev=10") as response:
                    # Janus answers 404, empty, for a session it does not know (it restarted, or timed it out)
                    gone = {"janus": "error", "error": {"reason": "no such session (404)"}}
                    events = gone if response.status == 404 else await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as err:
                logger.warning("Janus long poll of session %s failed: %r; polling again", self.id, err)
                await asyncio.sleep(1.0)
                continue
            if not isinstance(events, dict | list):  # an empty answer (Janus stopping): not an event
                await asyncio.sleep(1.0)
                continue
            if isinstance(events, dict) and events.get("janus") == "error":  # e.g. Janus restarted: no such session
                logger.error("Janus ended session %s: %s", self.id, events.get("error", {}).get("reason"))
                self.ended = True
                for waiter in self._waiting.values():
                    if not waiter.done():
                        waiter.set_exception(JanusError(f"Janus ended session {self.id}"))
                return
            for event in events if isinstance(events, list) else [events]:
                if not isinstance(event, dict):
                    continue
                waiter = self._waiting.pop(event.get("transaction") or "", None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(event)
                elif event.get("janus") in ("hangup", "detached"):
                    logger.warning("Janus ended a peer of session %s: %s", self.id, event.get("reason", event["janus"]))

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        return (await self._post(f"{self.url}/{self.id}", {"janus": "attach", "plugin": plugin}))["data"]["id"]

    async def request(self, handle: int, body: dict, jsep: dict | None = None) -> tuple[dict, dict | None]:
        """A plugin request; returns the plugin's data and its JSEP (SDP), waiting for the event that
        answers it where Janus only acknowledges at first."""
        transaction = secrets.token_hex(8)
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = waiter
        message = {"janus": "message", "body": body, "transaction": transaction} | ({"jsep": jsep} if jsep else {})
        try:
            reply = await self._post(f"{self.url}/{self.id}/{handle}", message)
            if reply.get("janus") == "ack":
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    reply = await waiter
        except TimeoutError as err:
            raise JanusError(f"Janus did not answer {body.get('request')!r} within {REQUEST_TIMEOUT_S:.0f} s") from err
        finally:
            self._waiting.pop(transaction, None)
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"the VideoRoom refused {body.get('request')!r}: {data['error']}")
        return data, reply.get("jsep")

    async def close(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        if self.id is not None:
            with contextlib.suppress(JanusError):
                await self._post(f"{self.url}/{self.id}", {"janus": "destroy"})
        await self._http.close()


@dataclass
class Publication:
    """A session's stream in a Janus room: where viewers find it (room and feed), and what to close."""

    url: str
    room: int
    feed: int
    janus: JanusSession
    handle: int
    pc: RTCPeerConnection
    detach: Callable[[], None]  # takes the publishing peer off the session's broadcast
    closed: bool = False

    @property
    def alive(self) -> bool:
        return not self.closed and not self.janus.ended and self.pc.connectionState not in ("failed", "closed")

    def to_json(self) -> dict:
        query = urllib.parse.urlencode({"janus": self.url, "room": self.room, "feed": self.feed})
        return {"janus": self.url, "room": self.room, "feed": self.feed, "watch_page": f"/watch?{query}"}

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.detach()
        await self.pc.close()
        with contextlib.suppress(JanusError):
            await self.janus.request(self.handle, {"request": "destroy", "room": self.room})
        await self.janus.close()


async def publish(state: ServerState, live: LiveSession, url: str) -> Publication:
    """Publishes the session's video and audio once into a new VideoRoom (VP8 and Opus, as encoded
    for every viewer); Janus forwards them to each of its subscribers."""
    janus = await JanusSession(url).open()
    pc: RTCPeerConnection | None = None
    peer_id = f"janus-{secrets.token_hex(4)}"
    try:
        handle = await janus.attach()
        created, _ = await janus.request(
            handle,
            {
                "request": "create",
                "description": f"lipstream session {live.session.id[:12]}",
                "publishers": 1,
                "videocodec": "vp8",
                "audiocodec": "opus",
                "is_private": True,
            },
        )
        room = created["room"]
        joined, _ = await janus.request(handle, {"request": "join", "ptype": "publisher", "room": room})
        pc = RTCPeerConnection(state.peer_configuration(live.session.id))
        video, audio = live.broadcast.attach(peer_id)
        pc.addTrack(video)
        pc.addTrack(audio)
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"type": "offer", "sdp": pc.localDescription.sdp}
        _, answer = await janus.request(handle, {"request": "publish", "audio": True, "video": True}, offer)
        if answer is None:
            raise JanusError("Janus accepted the publication but sent no SDP answer")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await _connected(pc)  # Janus lists the feed to subscribers only once its media is up
    except BaseException:
        live.broadcast.detach(peer_id)
        if pc is not None:
            await pc.close()
        await janus.close()
        raise
    return Publication(url, room, joined["id"], janus, handle, pc, lambda: live.broadcast.detach(peer_id))


async def _connected(pc: RTCPeerConnection) -> None:
    up = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            up.set()

    on_state()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(REQUEST_TIMEOUT_S):
            await up.wait()
    if pc.connectionState != "connected":
        raise JanusError(
            f"the WebRTC connection to Janus is {pc.connectionState} after {REQUEST_TIMEOUT_S:.0f} s: Janus's ICE "
            "candidates must be reachable from this server (see janus.jcfg's nat settings)"
        )


async def subscribe(url: str, room: int, feed: int, pc: RTCPeerConnection) -> JanusSession:
    """Makes `pc` a viewer of a publication: Janus offers the feed's tracks, `pc` answers. The caller
    reads the tracks (pc.on("track")) and closes the returned session when done."""
    janus = await JanusSession(url).open()
    try:
        handle = await janus.attach()
        _, offer = await janus.request(
            handle, {"request": "join", "ptype": "subscriber", "room": room, "streams": [{"feed": feed}]}
        )
        if offer is None:
            raise JanusError(f"Janus sent no offer for feed {feed} of room {room}")
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], offer["type"]))
        await pc.setLocalDescription(await pc.createAnswer())
        await janus.request(handle, {"request": "start"}, {"type": "answer", "sdp": pc.localDescription.sdp})
    except BaseException:
        await janus.close()
        raise
    return janus
