"""`lipstream render AVATAR AUDIO -o out.mp4`: the real-time pipeline without WebRTC, as fast as it runs.

The same session, scheduler, engine and compositor as `serve`; the only difference is that ticks
follow each other at once instead of every 40 ms.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipstream.dsp import FPS, PLAYBACK_RATE, num_video_frames, to_s16

from .audio_in import SAMPLE_RATE, read_audio_streams
from .clock import MonotonicClock
from .runtime import Runtime
from .session import MAX_BUFFER_SECONDS, AvatarSession, OutputFrame

AHEAD_SECONDS = MAX_BUFFER_SECONDS / 3  # how far the pushed audio runs ahead of the frames rendered


@dataclass
class RenderResult:
    path: Path
    frames: int
    speech_frames: int
    seconds: float


def render(runtime: Runtime, audio_path: str | Path, out: str | Path) -> RenderResult:
    return asyncio.run(render_async(runtime, audio_path, out))


async def rendered_frames(
    runtime: Runtime, samples: np.ndarray, playback: np.ndarray | None = None
) -> AsyncIterator[OutputFrame]:
    """Every video frame of `samples` (16 kHz mono float32; `playback`: the same at 48 kHz, else they
    are upsampled for the frames' audio), from a fresh session whose ticks follow each other at once."""
    total = num_video_frames(len(samples))
    session = AvatarSession(
        "render", runtime.assets, queue_frames=total + 1, voice_warp=runtime.voice_warp, voice_norm=runtime.voice_norm
    )
    scheduler = runtime.scheduler(MonotonicClock())
    scheduler.add(session)
    step, ratio = SAMPLE_RATE, PLAYBACK_RATE // SAMPLE_RATE  # a second at a time
    pushed = 0
    for number in range(total):
        # audio stays at most AHEAD_SECONDS ahead of the frames: a session holds MAX_BUFFER_SECONDS at most
        while pushed < len(samples) and pushed < (number / FPS + AHEAD_SECONDS) * SAMPLE_RATE:
            end = pushed + step
            part = None if playback is None else playback[pushed * ratio : None if end >= len(samples) else end * ratio]
            session.push_audio(samples[pushed:end], part)
            pushed = min(end, len(samples))
            if pushed == len(samples):
                session.end_of_input()
        await scheduler.tick()
        yield await session.next_frame()


async def render_async(runtime: Runtime, audio_path: str | Path, out: str | Path) -> RenderResult:
    audio_in = read_audio_streams(str(audio_path))
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = Path(out)
    frames = speech_frames = 0
    with av.open(str(out), "w") as container:
        width, height = runtime.assets.frame_size
        video = container.add_stream("libx264", rate=25, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        audio = container.add_stream("aac", rate=PLAYBACK_RATE, layout="mono")
        fifo = av.AudioFifo()
        async for frame in rendered_frames(runtime, audio_in.features, audio_in.playback):
            frames += 1
            speech_frames += frame.kind == "speech"
            image = np.ascontiguousarray(frame.image[: video.height, : video.width])
            picture = av.VideoFrame.from_ndarray(image, format="rgb24")
            picture.pts, picture.time_base = frame.number, Fraction(1, 25)
            container.mux(video.encode(picture))
            sound = av.AudioFrame.from_ndarray(to_s16(frame.audio)[None], format="s16", layout="mono")
            sound.sample_rate, sound.pts = PLAYBACK_RATE, frame.number * len(frame.audio)
            fifo.write(sound)
            while (chunk := fifo.read(audio.frame_size or 1024)) is not None:
                container.mux(audio.encode(chunk))
        container.mux(video.encode())
        container.mux(audio.encode())
    return RenderResult(out, frames, speech_frames, loop.time() - started)
