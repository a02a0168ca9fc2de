"""The media facts everything else derives from: one home each.

Video runs at FPS frames per second. Audio for the mel features is MEL_SAMPLE_RATE mono, so video
frame k covers samples [SAMPLES_PER_FRAME k, SAMPLES_PER_FRAME (k + 1)). The audio played back with
the frames is the input at PLAYBACK_RATE (full band: what Opus carries), PLAYBACK_SAMPLES_PER_FRAME a
frame, covering the same time. On the wire, video frame k carries RTP timestamp RTP_TICKS_PER_FRAME k
on the VIDEO_CLOCK. 16-bit PCM converts to and from float
samples in [-1, 1] here and nowhere else.
"""

from __future__ import annotations

import numpy as np

FPS = 25
MEL_SAMPLE_RATE = 16_000  # Hz: what the mel features run at
SAMPLES_PER_FRAME = MEL_SAMPLE_RATE // FPS  # 640
PLAYBACK_RATE = 48_000  # Hz: the audio that goes back out with the frames
PLAYBACK_SAMPLES_PER_FRAME = PLAYBACK_RATE // FPS  # 1920
VIDEO_CLOCK = 90_000  # Hz, RTP's clock for video
RTP_TICKS_PER_FRAME = VIDEO_CLOCK // FPS  # 3600


def to_s16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (clipped beyond) -> int16, little-endian."""
    return np.clip(np.round(np.asarray(samples, np.float32) * 32767), -32768, 32767).astype("<i2")


def from_s16(pcm: np.ndarray | bytes) -> np.ndarray:
    """int16 samples (an array, or little-endian bytes) -> float32 in [-1, 1)."""
    array = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes | bytearray | memoryview) else np.asarray(pcm)
    return array.astype(np.float32) / 32768.0
