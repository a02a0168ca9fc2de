"""The real server on a loopback port, driven by in-process aiortc peers and HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from lipstream.avatars.align import invert, transform_points
from lipstream.dsp import read_wav
from lipstream.realtime.runtime import Runtime, build_runtime
from lipstream.realtime.server import ServerSettings, create_app


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Runtime:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIPSTREAM_CACHE", str(tmp_path_factory.mktemp("cache")))
        return build_runtime(None, engine="onnxruntime")  # the embedded default avatar (one photo)


@pytest.fixture(scope="module")
def speech_then_silence(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of real speech, then 2.5 s of silence, as a 16-bit WAV made for the test."""
    samples = np.concatenate([speech[8000 : 8000 + 32000], np.zeros(40000, np.float32)])
    path = tmp_path_factory.mktemp("audio") / "speech_then_silence.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def mouth_box(runtime: Runtime) -> tuple[slice, slice]:
    assets = runtime.assets
    size = assets.crops.shape[1]
    corners = np.array([[0, size / 2], [size, size / 2], [0, size], [size, size]], float)
    points = transform_points(corners, invert(assets.transforms[0]))
    (x0, y0), (x1, y1) = np.floor(points.min(axis=0)).astype(int), np.ceil(points.max(axis=0)).astype(int)
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def mouth_change(runtime: Runtime, image: np.ndarray) -> float:
    """Mean difference from the idle rendering inside the mouth region (grey levels)."""
    rows, cols = mouth_box(runtime)
    idle = runtime.assets.idle(0)
    return float(np.abs(image[rows, cols].astype(float) - idle[rows, cols]).mean())


@contextlib.asynccontextmanager
async def serving(runtime: Runtime, **settings: object) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(runtime, ServerSettings(**settings)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Viewer:
    """A client peer that receives the avatar: records (arrival time, image) and audio."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.frames: list[tuple[float, np.ndarray]] = []
        self.audio: list[tuple[float, np.ndarray]] = []
        self.tasks: list[asyncio.Task] = []

        @self.pc.on("track")
        def on_track(track: object) -> None:
            self.tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: object) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append((time.monotonic(), frame.to_ndarray(format="rgb24")))
                else:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                    self.audio.append((time.monotonic(), pcm.astype(np.float32) / 32768))

    async def offer(self, send_audio: object | None = None) -> str:
        if send_audio is not None:
            self.pc.addTrack(send_audio)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


async def connect(http: aiohttp.ClientSession, base: str, viewer: Viewer, send_audio: object | None = None) -> str:
    sdp = await viewer.offer(send_audio)
    async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    await viewer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return answer["session_id"]


async def wait_for_frames(viewer: Viewer, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(viewer.frames) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(viewer.frames) >= count, f"only {len(viewer.frames)} frames arrived"


def fps(frames: list[tuple[float, np.ndarray]]) -> float:
    times = [t for t, _ in frames]
    return (len(times) - 1) / (times[-1] - times[0])


def test_offer_round_trip_streams_the_avatar_in_sync(runtime: Runtime, speech_then_silence: Path) -> None:
    async def scenario() -> None:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            player = MediaPlayer(str(speech_then_silence))
            await connect(http, base, viewer, send_audio=player.audio)
            await wait_for_frames(viewer, 130)
            await viewer.close()
        frames = viewer.frames[10:]
        assert 22.0 <= fps(frames) <= 28.0
        width, height = runtime.assets.frame_size
        assert frames[0][1].shape == (height, width, 3)
        change = np.array([mouth_change(runtime, image) for _, image in viewer.frames])
        speaking = change > 8.0
        assert speaking.sum() >= 25, "the mouth moves while the client speaks"
        rows, cols = mouth_box(runtime)
        tail = np.stack([image[rows, cols].astype(float) for _, image in viewer.frames[-25:]])
        motion = np.abs(np.diff(tail, axis=0)).mean(axis=(1, 2, 3))
        # Still: the same idle frame again and again (a video key frame may shift it all once).
        assert not speaking[-25:].any() and np.median(motion) < 0.5, "and rests on the idle frame in silence"
        # The audio that came back is the audio that went in.
        received = np.concatenate([pcm for _, pcm in viewer.audio])
        sent = read_wav(speech_then_silence)[0]
        received16 = cv2.resize(received[None], (len(received) // 3, 1), interpolation=cv2.INTER_AREA)[0]
        corr = np.correlate(received16 - received16.mean(), sent[:32000] - sent[:32000].mean(), "valid")
        norm = np.linalg.norm(sent[:32000]) * np.sqrt(np.convolve(received16**2, np.ones(32000), "valid")).max()
        assert corr.max() / norm > 0.5
        # Mouth and sound start together: first moving frame vs first loud audio, by arrival time.
        first_video = next(t for (t, _), s in zip(viewer.frames, speaking, strict=True) if s)
        first_audio = next(t for t, pcm in viewer.audio if np.abs(pcm).max() > 0.05)
        assert abs(first_video - first_audio) <= 0.12

    asyncio.run(scenario())
