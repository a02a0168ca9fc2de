"""Media tracks: a session's frames as an aiortc video track (25 fps, RTP timestamp 3600 k) and audio
track (20 ms frames at 48 kHz, the input at its full band, delayed exactly as much as the video),
fanned out to every peer that watches the session."""

from __future__ import annotations

import asyncio
import contextlib
import time
from fractions import Fraction

import av
import cv2
import numpy as np
from aiortc import MediaStreamTrack

from lipstream.dsp import PLAYBACK_RATE, RTP_TICKS_PER_FRAME, VIDEO_CLOCK, to_s16

from .log import spawn
from .metrics import Metrics
from .session import AvatarSession, OutputFrame

AUDIO_RATE = PLAYBACK_RATE  # what Opus carries: the input's full band
AUDIO_CHUNK = AUDIO_RATE // 50  # 20 ms


class _QueueTrack(MediaStreamTrack):
    """Frames wait here for the peer's sender. Nothing is queued before the sender first asks, so the
    queue does not start full and add its whole depth to the latency for the rest of the session."""

    def __init__(self, depth: int, metrics: Metrics | None = None) -> None:
        super().__init__()
        self.queue: asyncio.Queue[tuple[float, OutputFrame]] = asyncio.Queue(maxsize=depth)
        self.started = False
        self.metrics = metrics or Metrics()

    async def next(self) -> tuple[float, OutputFrame]:
        """(when the frame was offered, the frame)"""
        self.started = True
        return await self.queue.get()

    def offer(self, frame: OutputFrame) -> None:
        if not self.started:
            return
        if self.queue.full():  # a slow peer loses its oldest frame, never holds up the others
            self.queue.get_nowait()
        self.queue.put_nowait((time.perf_counter(), frame))

    def clear(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()


def video_frame(image: np.ndarray) -> av.VideoFrame:
    """An RGB image [H, W, 3] uint8 as the encoder's input. Even-sided images go as yuv420p, converted
    here (BT.601, video range: what the encoder would make of RGB itself): measured on 720 x 576 frames,
    VP8 then takes 5.0 ms a frame instead of 6.8, the conversion 0.25 ms."""
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        return av.VideoFrame.from_ndarray(image, format="rgb24")
    return av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")


class AvatarVideoTrack(_QueueTrack):
    kind = "video"

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__(4, metrics)
        self._returned: float | None = None

    async def recv(self) -> av.VideoFrame:
        # aiortc's sender encodes and sends the frame this returned, then asks for the next: the time
        # in between is that frame's encode_send stage.
        if self._returned is not None:
            self.metrics.stage("encode_send", time.perf_counter() - self._returned)
        offered, frame = await self.next()
        self.metrics.stage("video_queue", time.perf_counter() - offered)
        picture = video_frame(frame.image)
        picture.pts = frame.number * RTP_TICKS_PER_FRAME
        picture.time_base = Fraction(1, VIDEO_CLOCK)
        self._returned = time.perf_counter()
        return picture


class AvatarAudioTrack(_QueueTrack):
    kind = "audio"

    def __init__(self, metrics: Metrics | None = None) -> None:
        super().__init__(8, metrics)
        self._pending: list[tuple[int, np.ndarray]] = []  # (first sample index, samples)

    async def recv(self) -> av.AudioFrame:
        if not self._pending:
            _, frame = await self.next()
            samples = to_s16(frame.audio)
            first = frame.number * len(frame.audio)
            self._pending = [(first + i, samples[i : i + AUDIO_CHUNK]) for i in range(0, len(samples), AUDIO_CHUNK)]
        start, chunk = self._pending.pop(0)
        sound = av.AudioFrame.from_ndarray(chunk[None], format="s16", layout="mono")
        sound.sample_rate = AUDIO_RATE
        sound.pts = start
        sound.time_base = Fraction(1, AUDIO_RATE)
        return sound

    def clear(self) -> None:
        super().clear()
        self._pending = []


class Broadcast:
    """Reads a session's frames and hands each to every attached (video, audio) track pair."""

    def __init__(self, session: AvatarSession) -> None:
        self.session = session
        self.metrics = session.metrics
        self.viewers: dict[str, tuple[AvatarVideoTrack, AvatarAudioTrack]] = {}
        self._task = spawn(self._pump(), f"broadcast-{session.id}")

    def attach(self, viewer_id: str) -> tuple[AvatarVideoTrack, AvatarAudioTrack]:
        tracks = (AvatarVideoTrack(self.metrics), AvatarAudioTrack(self.metrics))
        self.viewers[viewer_id] = tracks
        return tracks

    def detach(self, viewer_id: str) -> None:
        for track in self.viewers.pop(viewer_id, ()):
            track.stop()

    def clear(self) -> None:
        for pair in self.viewers.values():
            for track in pair:
                track.clear()

    async def _pump(self) -> None:
        while True:
            frame = await self.session.next_frame()
            for video, audio in list(self.viewers.values()):
                video.offer(frame)
                audio.offer(frame)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for viewer_id in list(self.viewers):
            self.detach(viewer_id)
