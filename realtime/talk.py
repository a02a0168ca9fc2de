"""`lipstream talk`: a local microphone (sounddevice) or a WAV file, streamed in real time to a
session of a running `lipstream serve`, over its audio WebSocket; or, with `--text`, text that the
server's TTS provider speaks into the session.

Without `--session` it opens a session (`POST /sessions`) and prints where to watch it (WHEP), and
ends it when the talking stops. The microphone needs `pip install sounddevice` and the PortAudio
library (`apt-get install libportaudio2`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from lipstream.dsp import read_wav, to_s16

BLOCK_SECONDS = 0.02


class TalkError(RuntimeError):
    """The microphone, the file or the server cannot be used; the message says what to do."""


async def file_blocks(path: Path) -> tuple[int, AsyncIterator[bytes]]:
    """(rate, 20 ms blocks of s16le mono) from a WAV file, paced in real time."""
    samples, rate = await asyncio.to_thread(read_wav, path)
    pcm = to_s16(samples)
    block = round(rate * BLOCK_SECONDS)

    async def blocks() -> AsyncIterator[bytes]:
        started = time.monotonic()
        for index, start in enumerate(range(0, len(pcm), block)):
            await asyncio.sleep(max(0.0, started + index * BLOCK_SECONDS - time.monotonic()))
            yield pcm[start : start + block].tobytes()

    return rate, blocks()


def microphone_blocks(device: str | int | None = None, rate: int = 16_000) -> tuple[int, AsyncIterator[bytes]]:
    """(rate, 20 ms blocks of s16le mono) from a local input device, as they are captured."""
    try:
        import sounddevice
    except (ImportError, OSError) as err:  # OSError: the wheel is there but PortAudio is not
        raise TalkError(
            f"the microphone needs sounddevice and PortAudio ({err}); install them with "
            "`pip install sounddevice` and `apt-get install libportaudio2`, or talk from a file with --file"
        ) from err
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)

    def captured(data: object, frames: int, timing: object, status: object) -> None:
        loop.call_soon_threadsafe(_put_newest, queue, bytes(data))

    try:
        stream = sounddevice.RawInputStream(
            samplerate=rate,
            channels=1,
            dtype="int16",
            blocksize=round(rate * BLOCK_SECONDS),
            device=device,
            callback=captured,
        )
    except Exception as err:  # PortAudioError and ValueError for a bad device; both say what is wrong
        raise TalkError(f"cannot open the microphone ({err}); list devices with `python -m sounddevice`") from err

    async def blocks() -> AsyncIterator[bytes]:
        with stream:
            while True:
                yield await queue.get()

    return rate, blocks()


def _put_newest(queue: asyncio.Queue[bytes], data: bytes) -> None:
    if queue.full():  # the network stalled: drop the oldest audio rather than fall further behind
        queue.get_nowait()
    queue.put_nowait(data)


async def open_session(http: aiohttp.ClientSession, server: str, avatar: str | None) -> dict:
    async with http.post(f"{server}/sessions", json={"avatar": avatar} if avatar else None) as response:
        body = await response.json(content_type=None)
        if response.status != 201:
            raise TalkError(f"the server refused a session ({response.status}): {body.get('error', body)}")
        return body


async def stream(
    http: aiohttp.ClientSession, server: str, session_id: str, rate: int, blocks: AsyncIterator[bytes]
) -> float:
    """Sends the blocks over the session's audio WebSocket, then "end". Returns seconds sent."""
    sent = 0
    try:
        socket = await http.ws_connect(f"{server}/sessions/{session_id}/ws?rate={rate}&channels=1")
    except aiohttp.WSServerHandshakeError as err:
        raise TalkError(f"the server refused the audio WebSocket ({err.status}); is the session id right?") from err
    async with socket:
        acks = asyncio.create_task(_drain(socket))
        try:
            async for block in blocks:
                await socket.send_bytes(block)
                sent += len(block) // 2
        finally:
            if not socket.closed:
                await socket.send_str("end")
            acks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acks
    return sent / rate


async def _drain(socket: aiohttp.ClientWebSocketResponse) -> None:
    """Reads the server's acknowledgements (seconds buffered) so they never pile up."""
    async for message in socket:
        if message.type == aiohttp.WSMsgType.TEXT and "error" in message.data:
            print(f"server: {message.data}")


@contextlib.asynccontextmanager
async def _session(
    http: aiohttp.ClientSession, server: str, session_id: str | None, avatar: str | None
) -> AsyncIterator[str]:
    """The session to drive: the one given, or one opened now (with where to watch it) and ended after."""
    if session_id is not None:
        yield session_id
        return
    session = await open_session(http, server, avatar)
    print(f"session {session['session_id']}: watch it with WHEP at {server}{session['watch_url']}", flush=True)
    try:
        yield session["session_id"]
    finally:
        async with http.delete(f"{server}/sessions/{session['session_id']}"):
            pass


async def talk(
    server: str,
    file: Path | None = None,
    session_id: str | None = None,
    avatar: str | None = None,
    token: str | None = None,
    device: str | int | None = None,
) -> float:
    """Streams a file or the microphone to a session; returns the seconds of audio sent."""
    server = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    rate, blocks = await file_blocks(file) if file is not None else microphone_blocks(device)
    async with aiohttp.ClientSession(headers=headers) as http, _session(http, server, session_id, avatar) as sid:
        seconds = await stream(http, server, sid, rate, blocks)
        if session_id is None:
            await asyncio.sleep(1.0)  # the last frames still play out before the session ends
        return seconds


async def say(
    server: str,
    text: str,
    voice: str | None = None,
    session_id: str | None = None,
    avatar: str | None = None,
    token: str | None = None,
) -> float:
    """Has the server's TTS provider speak `text` into a session, and waits until it has been played
    (the session's playback events). Returns the seconds of speech."""
    server = server.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http, _session(http, server, session_id, avatar) as sid:
        async with http.get(f"{server}/sessions/{sid}/events") as events:  # listening before speaking
            async with http.post(f"{server}/sessions/{sid}/speak", json={"text": text, "voice": voice}) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise TalkError(f"the server could not speak the text ({response.status}): {body.get('error')}")
            async with asyncio.timeout(body["seconds"] + 10):
                async for line in events.content:
                    if line.startswith(b"event: speech_ended"):
                        break
        return body["seconds"]
