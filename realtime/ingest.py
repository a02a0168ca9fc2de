"""Audio into a session, one path for every source: a WebRTC track (live: late input is dropped, never
played late), and HTTP or WebSocket pushes of PCM, WAV, MP3, Ogg or mu-law (faster than real time:
held back once they run push_ahead_seconds ahead of playback). `Ingest` owns the resampling to the
features' rate and to the playback rate, and that back-pressure."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import av
import numpy as np
from aiohttp import web
from aiortc.mediastreams import MediaStreamError

from lipstream.dsp import FPS, PLAYBACK_RATE

from .audio_in import SAMPLE_RATE, Audio, AudioFormatError, Resampler, decode_audio
from .log import logger, spawn
from .registry import STATE, LiveSession
from .security import error_response
from .tts import MAX_TEXT_CHARS, TTSError, decode_speech

LIVE_BACKLOG_EXTRA_FRAMES = 2  # live input more than this far behind is dropped, not played late
WEBRTC_RATE, WEBRTC_CHANNELS = 48_000, 2  # what aiortc's Opus decoder hands over
DECODED_STEP_SECONDS = 0.2  # decoded files are fed in steps this long, each subject to back-pressure
MAX_ENCODED_BYTES = 64 << 20  # a compressed upload is decoded whole: about an hour of 128 kbit/s MP3


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

    async def push_decoded(self, audio: Audio) -> None:
        """A whole decoded file (TTS speech, an MP3 upload), in 0.2 s steps so that back-pressure
        applies to it as to any push."""
        step = round(DECODED_STEP_SECONDS * SAMPLE_RATE)
        ratio = PLAYBACK_RATE // SAMPLE_RATE
        for start in range(0, len(audio.features), step):
            last = start + step >= len(audio.features)  # the last step also takes the resampler's tail
            playback = audio.playback[start * ratio : None if last else (start + step) * ratio]
            await self._feed(Audio(audio.features[start : start + step], playback))

    async def _feed(self, audio: Audio) -> None:
        self.live.session.push_audio(audio.features, audio.playback)
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


WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave")
RAW_TYPES = ("audio/pcm", "application/octet-stream")  # s16le with ?rate=&channels=
MULAW_TYPES = ("audio/basic", "audio/pcmu", "audio/x-mulaw")  # G.711 mu-law bytes, ?rate= (default 8000)
ENCODED_TYPES = ("audio/mpeg", "audio/mp3", "audio/ogg", "audio/opus", "audio/flac", "audio/webm")  # FFmpeg
ACCEPTED = (
    "16-bit or other WAV (audio/wav), raw s16le PCM (audio/pcm or application/octet-stream, ?rate=&channels=), "
    "mu-law (audio/basic, ?rate=, default 8000), MP3 (audio/mpeg), Ogg/Opus (audio/ogg) or FLAC (audio/flac)"
)


def _raw_format(request: web.Request, default_rate: int | None = None) -> tuple[int, int]:
    """(rate, channels) of raw samples from the query."""
    try:
        rate = int(request.query["rate"]) if default_rate is None else int(request.query.get("rate", default_rate))
        channels = int(request.query.get("channels", "1"))
    except (KeyError, ValueError) as err:
        raise error_response(web.HTTPBadRequest, "raw PCM needs ?rate=<Hz> (and optionally &channels=1|2)") from err
    return rate, channels


def mulaw_to_s16(data: bytes) -> bytes:
    """G.711 mu-law bytes -> s16le PCM bytes (the table of ITU-T G.711)."""
    return _MULAW_TABLE[np.frombuffer(data, np.uint8)].tobytes()


def _mulaw_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    magnitude = (((code & 0x0F) << 3) + 0x84) << ((code >> 4) & 0x07)
    return np.where(code & 0x80, 0x84 - magnitude, magnitude - 0x84).astype("<i2")


_MULAW_TABLE = _mulaw_table()


async def _wav_header(stream: web.StreamReader) -> tuple[int, int, bytes]:
    """Reads a WAV header off the stream, leaving it at the samples: (rate, channels, header) for
    16-bit PCM, or (0, 0, header) for another encoding, which then goes to FFmpeg whole."""
    header = b""
    try:
        riff = await stream.readexactly(12)
        header += riff
        if riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            raise error_response(web.HTTPBadRequest, "not a WAV stream (no RIFF/WAVE header)")
        rate = channels = 0
        pcm16 = True
        while True:
            chunk = await stream.readexactly(8)
            header += chunk
            chunk_id, size = struct.unpack("<4sI", chunk)
            if chunk_id == b"data":
                if not rate:
                    raise error_response(web.HTTPBadRequest, "WAV data before its fmt chunk")
                return (rate, channels, header) if pcm16 else (0, 0, header)
            if size > 1 << 16:
                raise error_response(web.HTTPBadRequest, f"WAV header chunk {chunk_id!r} of {size} bytes is too large")
            payload = await stream.readexactly(size + size % 2)
            header += payload
            if chunk_id == b"fmt ":
                audio_format, channels, rate, _, _, bits = struct.unpack("<HHIIHH", payload[:16])
                pcm16 = audio_format == 1 and bits == 16
    except asyncio.IncompleteReadError as err:
        raise error_response(web.HTTPBadRequest, "the WAV header is truncated") from err


async def _read_encoded(stream: web.StreamReader, head: bytes = b"") -> bytes:
    data = bytearray(head)
    async for chunk in stream.iter_chunked(1 << 16):
        data += chunk
        if len(data) > MAX_ENCODED_BYTES:
            raise error_response(
                web.HTTPRequestEntityTooLarge,
                f"compressed audio is decoded whole, up to {MAX_ENCODED_BYTES >> 20} MB; send it in parts, or as "
                "PCM, which streams",
            )
    return bytes(data)


async def push_audio(request: web.Request) -> web.Response:
    """Audio of one utterance in the request body, in any format of ACCEPTED (else 415, naming them).
    PCM, 16-bit WAV and mu-law stream through as they arrive; compressed formats are decoded whole."""
    live = request.app[STATE].get(request.match_info["session"])
    kind = request.content_type
    encoded: bytes | None = None
    convert = None
    if kind in WAV_TYPES:
        rate, channels, header = await _wav_header(request.content)
        if not rate:
            encoded = await _read_encoded(request.content, header)
    elif kind in RAW_TYPES:
        rate, channels = _raw_format(request)
    elif kind in MULAW_TYPES:
        (rate, channels), convert = _raw_format(request, default_rate=8000), mulaw_to_s16
    elif kind in ENCODED_TYPES:
        encoded = await _read_encoded(request.content)
    else:
        raise error_response(web.HTTPUnsupportedMediaType, f"Content-Type {kind!r} is not accepted; send {ACCEPTED}")
    if encoded is not None:
        try:
            audio = await asyncio.to_thread(decode_audio, encoded, f"the {kind} body")
        except AudioFormatError as err:
            raise error_response(web.HTTPUnsupportedMediaType, f"{err}; send {ACCEPTED}") from err
        ingest = _pusher(request, live, SAMPLE_RATE, 1)
        await ingest.push_decoded(audio)
        seconds = len(audio.features) / SAMPLE_RATE
    else:
        ingest = _pusher(request, live, rate, channels)
        received = 0
        async for chunk in request.content.iter_chunked(4096):
            await ingest.push_bytes(convert(chunk) if convert else chunk)
            received += len(chunk)
        seconds = received / ((1 if convert else 2) * channels * rate)
    live.session.end_of_input()
    # throttled_seconds: how long reading was paused because the push ran more than
    # push_ahead_seconds ahead of playback (the client is told, and TCP back-pressure slowed it).
    return web.json_response({"seconds": round(seconds, 6), "throttled_seconds": round(ingest.throttled_seconds, 3)})


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
        audio = await asyncio.to_thread(decode_speech, await provider.synthesize(text, voice))
    except TTSError as err:
        logger.warning("session %s: the %s TTS provider failed: %s", live.session.id, provider.name, err)
        raise error_response(web.HTTPBadGateway, f"the {provider.name} TTS provider failed: {err}") from err
    await _pusher(request, live, SAMPLE_RATE, 1).push_decoded(audio)
    live.session.end_of_input()
    return web.json_response({"seconds": len(audio.features) / SAMPLE_RATE, "provider": provider.name})
