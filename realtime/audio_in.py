"""Audio in: any rate and layout -> 16 kHz mono float32, with a stateful resampler, and voice activity.

A session receives audio from WebRTC tracks (48 kHz stereo Opus), HTTP pushes of raw PCM or WAV at
any rate, or files. Each source gets its own `Resampler`, whose filter state carries across chunks so
that chunk boundaries leave no clicks.
"""

from __future__ import annotations

import av
import numpy as np

from lipstream.dsp import MEL_SAMPLE_RATE, to_s16

SAMPLE_RATE = MEL_SAMPLE_RATE
VAD_FRAME = SAMPLE_RATE // 50  # 20 ms, one of the frame lengths webrtcvad accepts


class AudioFormatError(ValueError):
    """PCM that cannot be what it claims (odd byte count, absurd rate, bad channel count)."""


class Resampler:
    """Stateful conversion of s16 PCM (any rate, 1 or 2 channels) to 16 kHz mono float32."""

    def __init__(self, rate: int, channels: int = 1) -> None:
        if not 8_000 <= rate <= 192_000:
            raise AudioFormatError(f"sample rate {rate} Hz is outside 8000..192000; send PCM at a real audio rate")
        if channels not in (1, 2):
            raise AudioFormatError(f"{channels} channels; send mono or stereo PCM")
        self.rate, self.channels = rate, channels
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._pts = 0
        self._leftover = b""

    def push_bytes(self, data: bytes) -> np.ndarray:
        """s16le interleaved bytes -> [n] float32 at 16 kHz; a trailing partial sample is kept for later."""
        data = self._leftover + data
        usable = len(data) - len(data) % (2 * self.channels)
        self._leftover = data[usable:]
        if usable == 0:
            return np.zeros(0, np.float32)
        return self.push(np.frombuffer(data[:usable], "<i2").reshape(-1, self.channels))

    def push(self, pcm: np.ndarray) -> np.ndarray:
        """pcm: [n, channels] int16 -> [m] float32 mono at 16 kHz."""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.reshape(1, -1)), format="s16", layout="mono" if self.channels == 1 else "stereo"
        )
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += pcm.shape[0]
        return self._convert(frame)

    def push_frame(self, frame: av.AudioFrame) -> np.ndarray:
        """An av.AudioFrame as aiortc delivers it -> [m] float32 mono at 16 kHz."""
        frame.pts = None
        return self._convert(frame)

    def _convert(self, frame: av.AudioFrame) -> np.ndarray:
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class VoiceActivity:
    """webrtcvad over 20 ms blocks of the 16 kHz stream; `speech(start, end)` asks about a sample range."""

    def __init__(self, aggressiveness: int = 2) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)
        self._pending = np.zeros(0, np.float32)
        self._decisions: list[bool] = []  # one per 20 ms block since `_first_block`
        self._first_block = 0

    def push(self, samples: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, samples])
        blocks = len(self._pending) // VAD_FRAME
        for b in range(blocks):
            block = self._pending[b * VAD_FRAME : (b + 1) * VAD_FRAME]
            pcm = to_s16(block).tobytes()
            self._decisions.append(self._vad.is_speech(pcm, SAMPLE_RATE))
        self._pending = self._pending[blocks * VAD_FRAME :]

    def speech(self, start: int, end: int) -> bool:
        """Whether any 20 ms block overlapping samples [start, end) holds speech (unknown blocks: no)."""
        first = max(start // VAD_FRAME - self._first_block, 0)
        last = max((end - 1) // VAD_FRAME - self._first_block + 1, 0)
        return any(self._decisions[first:last])

    def forget_before(self, sample: int) -> None:
        drop = min(sample // VAD_FRAME - self._first_block, len(self._decisions))
        if drop > 0:
            del self._decisions[:drop]
            self._first_block += drop

    def reset(self, first_sample: int = 0) -> None:
        self._pending = np.zeros(0, np.float32)
        self._decisions = []
        self._first_block = first_sample // VAD_FRAME


def read_audio_file(path: str) -> np.ndarray:
    """Any audio (or video with audio) FFmpeg reads -> [n] float32 mono at 16 kHz."""
    from lipstream.avatars.errors import SourceError

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, FileNotFoundError, IsADirectoryError) as err:
        raise SourceError(f"{path}: not an audio file FFmpeg can read ({err})") from err
    with container:
        if not container.streams.audio:
            raise SourceError(f"{path}: has no audio stream")
        resampler = Resampler(SAMPLE_RATE)
        parts = [resampler.push_frame(frame) for frame in container.decode(container.streams.audio[0])]
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if samples.size == 0:
        raise SourceError(f"{path}: the audio is empty")
    return samples
