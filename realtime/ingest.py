"""Audio into a session, one path for every source: a WebRTC track (live: late input is dropped, never
played late), and HTTP or WebSocket pushes of PCM or WAV (faster than real time: held back once they
run push_ahead_seconds ahead of playback). `Ingest` owns the resampling to the features' rate and that
back-pressure."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiohttp import web
from aiortc.mediastreams import MediaStreamError

from lipstream.dsp import FPS

from .audio_in import SAMPLE_RATE, AudioFormatError, Resampler
from .log import logger, spawn
from .registry import STATE, LiveSession
from .security import error_response
from .tts import MAX_TEXT_CHARS, TTSError, decode_speech

LIVE_BACKLOG_EXTRA_FRAMES = 2  # live input more than this far behind is dropped, not played late
WEBRTC_RATE, WEBRTC_CHANNELS = 48_000, 2  # what aiortc's Opus decoder hands over


class Ingest:
    """One source feeding one session. ahead_frames: back-pressure for a pusher, which waits while more
    than this many frames are queued; None for live input, which never waits (the session drops what
    falls too far behind instead)."""

    def __init__(self, live: LiveSession, rate: int, channels: int, ahead_frames: int | None) -> None:
        self.resampler = Resampler(rate, channels)  # AudioFormatError for a rate or layout it cannot take
        self.live, self.ahead_frames = live, ahead_frames
        self.throttled_seconds = 0.0  # how long pushing was held back
        if ahead_frames is None:
            live.session.max_backlog_frames = live.session.jitter_frames + LIVE_BACKLOG_EXTRA_FRAMES

    async def push_bytes(self, pcm: bytes) -> None:
        """s16le PCM at the source's rate and layout."""
        with self.live.session.metrics.timed("resample"):
            samples = self.resampler.push_bytes(pcm)
        await self._feed(samples)

    async def push_frame(self, frame: av.AudioFrame) -> None:
        with self.live.session.metrics.timed("resample"):
            samples = self.resampler.push_frame(frame)
        await self._feed(samples)

    async def push_samples(self, samples: np.ndarray) -> None:
        """float32 mono already at the features' rate (decoded speech), in 0.2 s steps so that
        back-pressure applies to it as to any push."""
        step = self.live.session.mel_cfg.samples_per_frame * 5
        for start in range(0, len(samples), step):
            await self._feed(samples[start : start + step])

    async def _feed(self, samples: object) -> None:
        self.live.session.push_audio(samples)
        self.live.touch()
        if self.ahead_frames is not None:
            clock = self.live.clock
            waited = clock.now()
            await self.live.session.wait_until_buffered_at_most(self.ahead_frames)
            self.throttled_seconds += clock.now() - waited


def _pusher(request: web.Request, live: LiveSession, rate: int, channels: int) -> Ingest:
    try:
        return Ingest(live, rate, channels, round(request.app[STATE].settings.push_ahead_seconds * FPS))
    except AudioFormatError as err:
        raise error_response(web.HTTPBadRequest, str(err)) from err


async def ingest_track(live: LiveSession, track: object) -> None:
    """Feeds a received WebRTC audio track into the session until the track ends."""
    ingest = Ingest(live, WEBRTC_RATE, WEBRTC_CHANNELS, ahead_frames=None)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        await ingest.push_frame(frame)


async def audio_socket(request: web.Request) -> web.WebSocketResponse:
    """WebSocket audio: binary messages are s16le PCM at ?rate= (&channels=); text "end" closes an
    utterance, "interrupt" interrupts. Each binary message is acknowledged with the seconds buffered
    ({"buffered_seconds": ...}); playback events arrive in between as {"event": ..., "frame": ...}."""
    live = request.app[STATE].get(request.match_info["session"])
    try:
        rate, channels = int(request.query["rate"]), int(request.query.get("channels", "1"))
    except (KeyError, ValueError) as err:
        raise error_response(
            web.HTTPBadRequest, "the audio WebSocket needs ?rate=<Hz> (and optionally &channels=1|2)"
        ) from err
    ingest = _pusher(request, live, rate, channels)
    socket = web.WebSocketResponse(max_msg_size=1 << 20)
    await socket.prepare(request)
    forward = spawn(forward_events(live, socket.send_json), f"ws-events-{live.session.id}")
    try:
        await _receive(socket, live, ingest)
    finally:
        forward.cancel()
    return socket


async def forward_events(live: LiveSession, send: Callable[[dict], Awaitable[None]]) -> None:
    """Sends the session's PlaybackEvents as JSON objects until cancelled or the peer is gone."""
    queue = live.session.subscribe()
    try:
        while True:
            await send((await queue.get()).to_json())
    except (ConnectionResetError, RuntimeError):  # RuntimeError: aiohttp's "socket is closing"
        return
    finally:
        live.session.unsubscribe(queue)


async def _receive(socket: web.WebSocketResponse, live: LiveSession, ingest: Ingest) -> None:
    async for message in socket:
        if message.type == web.WSMsgType.BINARY:
            await ingest.push_bytes(message.data)
            await socket.send_json({"buffered_seconds": live.session.buffered_frames / FPS})
        elif message.type == web.WSMsgType.TEXT and message.data == "end":
            live.session.end_of_input()
        elif message.type == web.WSMsgType.TEXT and message.data == "interrupt":
            live.interrupt()
        elif message.type == web.WSMsgType.TEXT:
            await socket.send_json({"error": 'send binary s16le PCM, or the text "end" or "interrupt"'})


def _pcm_format(request: web.Request) -> tuple[bool, int, int]:
    """(is_wav, rate, channels) from the Content-Type and query."""
    kind = request.content_type
    if kind in ("audio/wav", "audio/x-wav", "audio/wave"):
        return True, 0, 0
    if kind not in ("audio/pcm", "application/octet-stream"):
        raise error_response(
            web.HTTPUnsupportedMediaType,
            "send audio/wav, or raw s16le PCM as audio/pcm or application/octet-stream with ?rate=&channels=",
        )
    try:
        rate = int(request.query["rate"])
        channels = int(request.query.get("channels", "1"))
    except (KeyError, ValueError) as err:
        raise error_response(web.HTTPBadRequest, "raw PCM needs ?rate=<Hz> (and optionally &channels=1|2)") from err
    return False, rate, channels


async def _wav_header(stream: web.StreamReader) -> tuple[int, int]:
    """Reads a PCM WAV header off the stream; returns (rate, channels), leaving the stream at the samples."""
    try:
        riff = await stream.readexactly(12)
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise error_response(web.HTTPBadRequest, "not a WAV stream (no RIFF/WAVE header)")
        rate = channels = 0
        while True:
            chunk_id, size = struct.unpack("<4sI", await stream.readexactly(8))
            if chunk_id == b"data":
                if not rate:
                    raise error_response(web.HTTPBadRequest, "WAV data before its fmt chunk")
                return rate, channels
            if size > 1 << 16:
                raise error_response(web.HTTPBadRequest, f"WAV header chunk {chunk_id!r} of {size} bytes is too large")
            payload = await stream.readexactly(size + size % 2)
            if chunk_id == b"fmt ":
                audio_format, channels, rate, _, _, bits = struct.unpack("<HHIIHH", payload[:16])
                if audio_format != 1 or bits != 16:
                    raise error_response(
                        web.HTTPUnsupportedMediaType,
                        f"WAV format {audio_format}, {bits} bits; send 16-bit PCM (format 1)",
                    )
    except asyncio.IncompleteReadError as err:
        raise error_response(web.HTTPBadRequest, "the WAV header is truncated") from err


async def push_audio(request: web.Request) -> web.Response:
    state = request.app[STATE]
    live = state.get(request.match_info["session"])
    is_wav, rate, channels = _pcm_format(request)
    if is_wav:
        rate, channels = await _wav_header(request.content)
    ingest = _pusher(request, live, rate, channels)
    received = 0
    async for chunk in request.content.iter_chunked(4096):
        await ingest.push_bytes(chunk)
        received += len(chunk)
    live.session.end_of_input()
    throttled = ingest.throttled_seconds
    # throttled_seconds: how long reading was paused because the push ran more than
    # push_ahead_seconds ahead of playback (the client is told, and TCP back-pressure slowed it).
    return web.json_response({"seconds": received / (2 * channels * rate), "throttled_seconds": round(throttled, 3)})


async def speak(request: web.Request) -> web.Response:
    """JSON {text, voice?}: the server's TTS provider speaks the text into the session."""
    state = request.app[STATE]
    live = state.get(request.match_info["session"])
    expected = f'expected JSON {{"text": "...", "voice": "..."}} with 1 to {MAX_TEXT_CHARS} characters of text'
    try:
        body = await request.json()
    except ValueError as err:
        raise error_response(web.HTTPBadRequest, expected) from err
    text, voice = (body.get("text"), body.get("voice")) if isinstance(body, dict) else (None, None)
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS or not isinstance(voice, str | None):
        raise error_response(web.HTTPBadRequest, expected)
    provider = state.settings.tts
    try:
        samples = await asyncio.to_thread(decode_speech, await provider.synthesize(text, voice))
    except TTSError as err:
        logger.warning("session %s: the %s TTS provider failed: %s", live.session.id, provider.name, err)
        raise error_response(web.HTTPBadGateway, f"the {provider.name} TTS provider failed: {err}") from err
    await _pusher(request, live, SAMPLE_RATE, 1).push_samples(samples)
    live.session.end_of_input()
    return web.json_response({"seconds": len(samples) / SAMPLE_RATE, "provider": provider.name})
