"""Audio in: any rate and layout -> the two streams a session takes, with stateful resamplers, and
voice activity.

A session receives audio from WebRTC tracks (48 kHz stereo Opus), HTTP pushes of raw PCM, WAV, MP3,
Ogg or mu-law at any rate, TTS providers, or files. Each source gets its own `Resampler`, whose filter
state carries across chunks so that chunk boundaries leave no clicks. It makes 16 kHz mono for the mel
features and 48 kHz mono for playback (the input's full band, what Opus carries back to viewers).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np

from lipstream.dsp import MEL_SAMPLE_RATE, PLAYBACK_RATE, to_s16

SAMPLE_RATE = MEL_SAMPLE_RATE
VAD_FRAME = SAMPLE_RATE // 50  # 20 ms, one of the frame lengths webrtcvad accepts


class AudioFormatError(ValueError):
    """Audio that cannot be what it claims (odd byte count, absurd rate, bad channel count, undecodable)."""


@dataclass
class Audio:
    """One stretch of input as the session takes it; both streams cover the same time."""

    features: np.ndarray  # [n] float32 mono at 16 kHz, for the mel features and voice activity
    playback: np.ndarray  # [about 3 n] float32 mono at 48 kHz, played back with the frames

    @staticmethod
    def join(parts: list[Audio]) -> Audio:
        if not parts:
            return Audio(np.zeros(0, np.float32), np.zeros(0, np.float32))
        return Audio(np.concatenate([p.features for p in parts]), np.concatenate([p.playback for p in parts]))


def _to_float_mono(resampler: av.AudioResampler, frame: av.AudioFrame | None) -> np.ndarray:
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


class RateConverter:
    """Stateful resampling of float32 mono from one rate to another (FFmpeg's resampler)."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        self.source_rate = source_rate
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=target_rate)
        self._pts = 0

    def push(self, samples: np.ndarray) -> np.ndarray:
        if len(samples) == 0:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32)[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.source_rate, self._pts
        self._pts += len(samples)
        return _to_float_mono(self._resampler, frame)


class Resampler:
    """Stateful conversion of s16 PCM (any rate, 1 or 2 channels), or of decoded frames, to `Audio`."""

    def __init__(self, rate: int, channels: int = 1) -> None:
        if not 8_000 <= rate <= 192_000:
            raise AudioFormatError(f"sample rate {rate} Hz is outside 8000..192000; send PCM at a real audio rate")
        if channels not in (1, 2):
            raise AudioFormatError(f"{channels} channels; send mono or stereo PCM")
        self.rate, self.channels = rate, channels
        self._features = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._playback = av.AudioResampler(format="flt", layout="mono", rate=PLAYBACK_RATE)
        self._pts = 0
        self._leftover = b""

    def push_bytes(self, data: bytes) -> Audio:
        """s16le interleaved bytes -> Audio; a trailing partial sample is kept for later."""
        data = self._leftover + data
        usable = len(data) - len(data) % (2 * self.channels)
        self._leftover = data[usable:]
        if usable == 0:
            return Audio.join([])
        return self.push(np.frombuffer(data[:usable], "<i2").reshape(-1, self.channels))

    def push(self, pcm: np.ndarray) -> Audio:
        """pcm: [n, channels] int16 -> Audio."""
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.reshape(1, -1)), format="s16", layout="mono" if self.channels == 1 else "stereo"
        )
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += pcm.shape[0]
        return self._convert(frame)

    def push_frame(self, frame: av.AudioFrame) -> Audio:
        """An av.AudioFrame as aiortc or a decoder delivers it -> Audio."""
        frame.pts = None
        return self._convert(frame)

    def _convert(self, frame: av.AudioFrame) -> Audio:
        return Audio(_to_float_mono(self._features, frame), _to_float_mono(self._playback, frame))


def decode_audio(source: str | bytes, what: str) -> Audio:
    """A whole audio file (a path, or its bytes), in any format FFmpeg reads (WAV, MP3, Ogg/Opus, FLAC,
    the audio of a video...) -> Audio. `what` names it in errors. AudioFormatError when it is not audio
    or holds none."""
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (av.error.FFmpegError, FileNotFoundError, IsADirectoryError) as err:
        raise AudioFormatError(f"{what} is not audio FFmpeg can read ({err})") from err
    with container:
        if not container.streams.audio:
            raise AudioFormatError(f"{what} has no audio stream")
        resampler = Resampler(SAMPLE_RATE)
        try:
            audio = Audio.join([resampler.push_frame(f) for f in container.decode(container.streams.audio[0])])
        except av.error.FFmpegError as err:
            raise AudioFormatError(f"{what} could not be decoded ({err})") from err
    if audio.features.size == 0:
        raise AudioFormatError(f"{what} holds no audio samples")
    return audio


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
    return read_audio_streams(path).features


def read_audio_streams(path: str) -> Audio:
    """Any audio (or video with audio) FFmpeg reads -> Audio; SourceError when it cannot."""
    from lipstream.avatars.errors import SourceError

    try:
        return decode_audio(str(path), str(path))
    except AudioFormatError as err:
        raise SourceError(str(err)) from err
