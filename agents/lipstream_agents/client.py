"""A client of one avatar session on a running `lipstream serve`, for a process that is not a WebRTC
peer: it sends speech over the audio WebSocket and reads the composed frames, each with the audio that
plays with it, and the playback events, from the frames WebSocket.

    async with await AvatarConnection.open("http://127.0.0.1:8080") as avatar:
        await avatar.send_audio(pcm_s16le, rate=24_000)
        await avatar.end_utterance()
        async for frame in avatar.frames():   # 25 per second, speaking or not
            show(frame.rgb, frame.width, frame.height); play(frame.audio, frame.audio_rate)

The wire format of the frames socket is the server's (lipstream.realtime.frames); the server's tests
check that this module reads what the server writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

import aiohttp

HEADER = struct.Struct("<4sIBBBxHHH")
FROM_INPUT = 1  # flag: the audio is an utterance's
MAGIC = b"LSF1"
KINDS = ("idle", "blend", "speech")
PLAYBACK_RATE = 48_000  # the audio that comes back with the frames: the input's full band
FPS = 25


class LipstreamError(Exception):
    """The server refused or ended something; the message says what and why."""


@dataclass(frozen=True)
class AvatarFrame:
    number: int  # the session's frame counter (25 per second); a gap means frames this client lost
    kind: str  # "speech" (generated), "blend" (to or from the template) or "idle" (the template itself)
    width: int
    height: int
    rgb: bytes  # width x height x 3
    audio: bytes  # s16le mono: what plays with this frame
    utterance: bool  # the audio is speech sent to the session (pauses included), not filler silence
    audio_rate: int = PLAYBACK_RATE


def parse_frame(message: bytes) -> AvatarFrame:
    """One binary message of the frames socket."""
    if len(message) < HEADER.size:
        raise LipstreamError(f"a frame message of {len(message)} bytes is shorter than its header")
    magic, number, kind, picture_format, flags, width, height, samples = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise LipstreamError(f"not a lipstream frame (magic {magic!r}); is the server a different version?")
    audio = message[len(message) - 2 * samples :]
    picture = message[HEADER.size : len(message) - 2 * samples]
    if picture_format == 1:
        from PIL import Image

        rgb = Image.open(io.BytesIO(picture)).convert("RGB").tobytes()
    else:
        rgb = picture
    if len(rgb) != width * height * 3:
        raise LipstreamError(f"frame {number}: {len(rgb)} bytes of picture for {width}x{height} RGB")
    return AvatarFrame(number, KINDS[kind], width, height, rgb, audio, bool(flags & FROM_INPUT))


class AvatarConnection:
    """One session: opened by `open` (or joined, with session=), ended by `close` if this opened it."""

    def __init__(self, http: aiohttp.ClientSession, base: str, session: str, owned: bool, picture: str) -> None:
        self.http, self.base, self.session, self.owned, self.picture = http, base, session, owned, picture
        self.events: asyncio.Queue[dict] = asyncio.Queue()  # playback events, in order
        self._audio: aiohttp.ClientWebSocketResponse | None = None
        self._audio_format: tuple[int, int] | None = None  # (rate, channels) of the audio socket
        self._audio_reader: asyncio.Task | None = None
        self._frames: aiohttp.ClientWebSocketResponse | None = None
        self.last_error: str | None = None  # the audio socket's last complaint

    @classmethod
    async def open(
        cls,
        server: str,
        avatar: str | None = None,
        token: str | None = None,
        session: str | None = None,
        picture: str = "jpeg",
    ) -> AvatarConnection:
        """Opens a session on `server` (or joins `session`). picture: "jpeg" (default) or "rgb" (raw,
        20x the bytes: for a server on the same machine)."""
        base = server.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = aiohttp.ClientSession(headers=headers)
        try:
            owned = session is None
            if session is None:
                async with http.post(f"{base}/sessions", json={"avatar": avatar} if avatar else {}) as answer:
                    body = await _json_or_text(answer)
                    if answer.status != 201:
                        raise LipstreamError(f"the server did not open a session ({answer.status}): {body}")
                    session = body["session_id"]
            return cls(http, base, session, owned, picture)
        except BaseException:
            await http.close()
            raise

    async def send_audio(self, pcm: bytes, rate: int, channels: int = 1) -> None:
        """Speech as s16le PCM at `rate` Hz. Sends as fast as the server takes it: the server holds back
        a sender that runs far ahead of playback."""
        if self._audio is None or self._audio_format != (rate, channels):
            await self._close_audio()
            url = f"{self.base}/sessions/{self.session}/ws?rate={rate}&channels={channels}"
            self._audio = await self.http.ws_connect(url)
            self._audio_format = (rate, channels)
            self._audio_reader = asyncio.create_task(self._read_audio_socket(self._audio))
        await self._audio.send_bytes(pcm)

    async def end_utterance(self) -> None:
        """The speech sent so far is a whole utterance: play it out, then go idle."""
        if self._audio is not None:
            await self._audio.send_str("end")

    async def interrupt(self) -> None:
        """Drops the speech not yet played: the avatar goes quiet within a frame or two."""
        async with self.http.post(f"{self.base}/sessions/{self.session}/interrupt") as answer:
            if answer.status >= 400:
                raise LipstreamError(f"interrupt refused ({answer.status}): {await _json_or_text(answer)}")

    async def frames(self) -> AsyncIterator[AvatarFrame]:
        """The session's frames as they are shown, 25 per second, until the session or this client ends.
        Playback events read on the way go to `events`."""
        url = f"{self.base}/sessions/{self.session}/frames?format={self.picture}"
        try:
            self._frames = await self.http.ws_connect(url, max_msg_size=64 << 20)
        except aiohttp.WSServerHandshakeError as err:
            raise LipstreamError(f"the server refused the frames socket ({err.status}): {err.message}") from err
        loop = asyncio.get_running_loop()
        async for message in self._frames:
            if message.type == aiohttp.WSMsgType.BINARY:
                if self.picture == "jpeg":  # a few ms of decoding: off the event loop
                    yield await loop.run_in_executor(None, parse_frame, message.data)
                else:
                    yield parse_frame(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                if "event" in data:
                    self.events.put_nowait(data)
            elif message.type == aiohttp.WSMsgType.ERROR:
                raise LipstreamError(f"the frames socket failed: {self._frames.exception()}")

    async def _read_audio_socket(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        """The audio socket answers each message with the seconds buffered, and repeats the events (read
        from the frames socket): only its complaints are kept."""
        async for message in socket:
            if message.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(message.data)
                if "error" in data:
                    self.last_error = data["error"]

    async def _close_audio(self) -> None:
        if self._audio is not None:
            await self._audio.close()
        if self._audio_reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._audio_reader
        self._audio = self._audio_reader = None

    async def close(self) -> None:
        """Closes the sockets and, if this client opened the session, ends it."""
        try:
            await self._close_audio()
            if self._frames is not None:
                await self._frames.close()
            if self.owned:
                async with self.http.delete(f"{self.base}/sessions/{self.session}"):
                    pass
        finally:
            await self.http.close()

    async def __aenter__(self) -> AvatarConnection:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()


async def _json_or_text(answer: aiohttp.ClientResponse) -> dict | str:
    text = await answer.text()
    try:
        return json.loads(text)
    except ValueError:
        return text
