"""Run by tests/test_agents.py with the agents' Python (pipecat installed, lipstream not): a real Pipecat
pipeline, built by pipecat's own test helper, with LipstreamAvatar after a stand-in for the TTS that
sends a recording as 24 kHz TTSAudioRawFrames. Prints what came out of the pipeline as one JSON object."""

from __future__ import annotations

import itertools

import numpy as np
from lipstream_agents.pipecat import LipstreamAvatar
from pipecat.frames.frames import (
    ErrorFrame,
    InterruptionFrame,
    OutputImageRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from stand_in import TTS_RATE, run, tts_pieces


def tts_frames(path: str) -> tuple[list[TTSAudioRawFrame], float]:
    pieces, seconds = tts_pieces(path)
    return [TTSAudioRawFrame(piece.tobytes(), TTS_RATE, 1) for piece in pieces], seconds


def picture_change(images: list[OutputImageRawFrame]) -> list[float]:
    """Largest absolute change of a pixel, frame to frame (only the mouth moves; JPEG noise is a few levels)."""
    arrays = [np.frombuffer(i.image, np.uint8).reshape(i.size[1], i.size[0], 3).astype(np.int16) for i in images]
    return [float(np.abs(b - a).max()) for a, b in itertools.pairwise(arrays)]


async def scenario(server: str, speech: str, interrupt_after: float | None) -> dict:
    frames, seconds = tts_frames(speech)
    if interrupt_after is None:
        sent = [TTSStartedFrame(), *frames, TTSStoppedFrame(), SleepFrame(sleep=seconds + 2.0)]
    else:
        sent = [TTSStartedFrame(), *frames, SleepFrame(sleep=interrupt_after), InterruptionFrame(), SleepFrame(2.0)]
    down, up = await run_test(LipstreamAvatar(server, picture="jpeg"), frames_to_send=sent, start_timeout=10.0)
    images = [f for f in down if isinstance(f, OutputImageRawFrame)]
    sounds = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    order = [type(f).__name__ for f in down if not isinstance(f, OutputImageRawFrame | TTSAudioRawFrame)]
    change = picture_change(images)
    speaking = [i for i, f in enumerate(down) if isinstance(f, TTSAudioRawFrame)]
    first_sound, last_sound = (speaking[0], speaking[-1]) if speaking else (0, 0)
    image_index = [i for i, f in enumerate(down) if isinstance(f, OutputImageRawFrame)]
    during = [c for c, i in zip(change, image_index[1:], strict=False) if first_sound <= i <= last_sound]
    after = [c for c, i in zip(change, image_index[1:], strict=False) if i > last_sound + 50]
    return {
        "sent_seconds": seconds,
        "images": len(images),
        "sizes": sorted({tuple(i.size) for i in images}),
        "audio_seconds": sum(len(f.audio) // 2 for f in sounds) / 48_000 if sounds else 0.0,
        "audio_rates": sorted({f.sample_rate for f in sounds}),
        "largest_change_speaking": float(np.median(during)) if during else 0.0,
        "largest_change_idle": float(np.median(after)) if after else 0.0,
        "other_frames_down": order,
        "errors": [f.error for f in [*down, *up] if isinstance(f, ErrorFrame)],
    }


if __name__ == "__main__":
    run(scenario)
