"""Log-mel features in the Wav2Lip convention, as one batch function and one streaming extractor.

Pure numpy: arrays in, arrays out, no I/O. Training and the real-time path both use this module, and
the streaming extractor gives the batch function's numbers for any chunking of the same audio.

Framing follows a centred STFT with zero padding: mel frame ``m`` is computed from the input samples
``[hop*m - n_fft/2, hop*m + n_fft/2)``, samples before the start and after the end being zeros. Audio
of ``N`` samples gives ``1 + N // hop`` mel frames.

Video frame ``k`` (25 fps) covers the samples ``[640k, 640k + 640)``. Its mel window is the
``window_frames`` mel frames starting at ``floor(3.2k) + window_shift``; where that reaches before the
first or after the last mel frame it is filled with the silence level ``-max_abs_value``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from .media import FPS, MEL_SAMPLE_RATE

if TYPE_CHECKING:
    from .voice import VoiceNorm, VoiceWarp


class AudioInputError(ValueError):
    """Audio handed to the mel extractor is not what it expects (1-D finite float samples)."""


@dataclass(frozen=True)
class MelConfig:
    """Every constant of the mel features and of the per-video-frame windows."""

    sample_rate: int = MEL_SAMPLE_RATE  # Hz, mono
    preemphasis: float = 0.97  # y[n] = x[n] - 0.97 x[n-1]
    n_fft: int = 800  # STFT size and Hann window length (50 ms)
    hop_length: int = 200  # 12.5 ms: 80 mel frames per second
    n_mels: int = 80
    fmin: float = 55.0  # Hz
    fmax: float = 7600.0  # Hz
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_abs_value: float = 4.0  # normalised values lie in [-4, 4]
    fps: int = FPS  # video frame rate the windows are cut for
    window_frames: int = 16  # mel frames per window: 0.2 s
    # Where the window starts relative to video frame k, in mel frames. It sets how much future audio a
    # frame needs, which is the latency floor of the real-time path (see `lookahead_seconds`).
    window_shift: int = -8

    def __post_init__(self) -> None:
        if self.sample_rate % self.fps:
            raise ValueError(f"sample_rate {self.sample_rate} must be a multiple of fps {self.fps}")
        if self.n_fft % 2 or self.n_fft < self.hop_length:
            raise ValueError(f"n_fft must be even and >= hop_length, got {self.n_fft}")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= fmin < fmax <= Nyquist, got {self.fmin}..{self.fmax}")

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 at 16 kHz and 25 fps)."""
        return self.sample_rate // self.fps

    def window_start(self, k: int) -> int:
        """Index of the first mel frame of video frame k's window (may be negative)."""
        return k * self.sample_rate // (self.hop_length * self.fps) + self.window_shift

    def samples_needed(self, k: int) -> int:
        """Number of input samples that must have arrived before video frame k's window is final."""
        last_mel = self.window_start(k) + self.window_frames - 1
        return max(self.hop_length * last_mel + self.n_fft // 2, self.samples_per_frame * (k + 1))

    @property
    def lookahead_seconds(self) -> float:
        """Worst case over frames of how far past the end of frame k's own audio its window reaches."""
        period = self.hop_length * self.fps // math.gcd(self.sample_rate, self.hop_length * self.fps)
        worst = max(self.samples_needed(k) - self.samples_per_frame * (k + 1) for k in range(period))
        return worst / self.sample_rate

    @cached_property
    def filterbank(self) -> np.ndarray:
        """Slaney-style mel filterbank, area-normalised. [n_mels, n_fft // 2 + 1]"""
        return mel_filterbank(self)

    @cached_property
    def hann(self) -> np.ndarray:
        """Periodic Hann window. [n_fft]"""
        n = np.arange(self.n_fft)
        return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.n_fft)


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    log_step = math.log(6.4) / 27.0
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step
    return np.where(hz >= 1000.0, logarithmic, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of `hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3.0))


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """Triangular filters evenly spaced on the mel scale, each scaled to unit area. [n_mels, bins]"""
    fft_hz = np.linspace(0.0, cfg.sample_rate / 2.0, cfg.n_fft // 2 + 1)  # [bins]
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.fmax), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [n_mels, 1] each
    rising = (fft_hz[None] - lower) / (centre - lower)
    falling = (upper - fft_hz[None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, bins]
    return weights * (2.0 / (upper - lower))


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioInputError(
            f"expected mono audio as a 1-D array of samples, got shape {samples.shape}; "
            "mix down or select one channel first"
        )
    if not np.issubdtype(samples.dtype, np.floating):
        raise AudioInputError(
            f"expected float samples in [-1, 1], got dtype {samples.dtype}; convert 16-bit PCM with samples / 32768"
        )
    if not np.all(np.isfinite(samples)):
        raise AudioInputError("audio contains NaN or infinite samples; refusing to compute features")
    return samples.astype(np.float64, copy=False)


def _preemphasise(x: np.ndarray, previous: float, cfg: MelConfig) -> np.ndarray:
    """y[n] = x[n] - k x[n-1], where x[-1] is `previous` (0 at the start of a clip)."""
    return x - cfg.preemphasis * np.concatenate([[previous], x[:-1]])


def _frames_to_mel(frames: np.ndarray, cfg: MelConfig, filterbank: np.ndarray | None = None) -> np.ndarray:
    """Pre-emphasised, padded signal frames [T, n_fft] -> normalised log-mel [n_mels, T], through
    cfg's filterbank or the one given ([n_mels, bins], e.g. a voice's warped one)."""
    magnitude = np.abs(np.fft.rfft(frames * cfg.hann, axis=1))  # [T, bins]
    mel = (cfg.filterbank if filterbank is None else filterbank) @ magnitude.T  # [n_mels, T]
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - cfg.ref_level_db
    scaled = 2.0 * cfg.max_abs_value * (db - cfg.min_level_db) / -cfg.min_level_db - cfg.max_abs_value
    return np.clip(scaled, -cfg.max_abs_value, cfg.max_abs_value).astype(np.float32)


def _frame_signal(signal: np.ndarray, count: int, cfg: MelConfig) -> np.ndarray:
    """The first `count` STFT frames of a signal whose index 0 is the start of frame 0. [count, n_fft]"""
    starts = np.arange(count)[:, None] * cfg.hop_length
    return signal[starts + np.arange(cfg.n_fft)[None]]


def melspectrogram(
    samples: np.ndarray, cfg: MelConfig | None = None, filterbank: np.ndarray | None = None
) -> np.ndarray:
    """Normalised log-mel spectrogram of a whole clip, through cfg's filterbank or the one given.

    samples: [N] float audio in [-1, 1] at cfg.sample_rate.
    Returns [n_mels, 1 + N // hop_length] float32 in [-max_abs_value, max_abs_value].
    """
    cfg = cfg or MelConfig()
    x = _check_samples(samples)
    pad = np.zeros(cfg.n_fft // 2)
    signal = np.concatenate([pad, _preemphasise(x, 0.0, cfg), pad])
    return _frames_to_mel(_frame_signal(signal, 1 + len(x) // cfg.hop_length, cfg), cfg, filterbank)


def num_video_frames(num_samples: int, cfg: MelConfig | None = None) -> int:
    """Video frames whose whole audio slice lies within `num_samples` samples."""
    cfg = cfg or MelConfig()
    return num_samples // cfg.samples_per_frame


def mel_windows(
    mel: np.ndarray, first_frame: int, count: int, cfg: MelConfig | None = None, mel_offset: int = 0
) -> np.ndarray:
    """Windows of video frames first_frame .. first_frame + count - 1.

    mel: [n_mels, T] mel frames mel_offset .. mel_offset + T - 1 of a clip or stream: the whole
    `melspectrogram`, or the frames a stream has kept. Mel indices outside it read as silence.
    Returns [count, n_mels, window_frames] float32.
    """
    cfg = cfg or MelConfig()
    if mel.ndim != 2 or mel.shape[0] != cfg.n_mels:
        raise AudioInputError(f"expected mel of shape [{cfg.n_mels}, T], got {mel.shape}")
    starts = np.array([cfg.window_start(k) for k in range(first_frame, first_frame + count)], dtype=np.int64)
    index = starts[:, None] + np.arange(cfg.window_frames)[None] - mel_offset  # [count, window_frames]
    silence = np.full((cfg.n_mels, 1), -cfg.max_abs_value, np.float32)
    padded = np.concatenate([mel.astype(np.float32, copy=False), silence], axis=1)  # last column: silence
    index = np.where((index >= 0) & (index < mel.shape[1]), index, mel.shape[1])
    return np.ascontiguousarray(padded[:, index].transpose(1, 0, 2))


# Mel frames that the real-time path takes each window later than training did (MelConfig's
# window_shift). The weights learnt a mouth that trails real lips, which move before their sound: on
# five faces the model never saw, its opening correlated best with the real one a frame or two early.
# Three mel frames (30 ms of look-ahead) make it lead by about a frame: the opening's correlation with
# the real mouth rose on each of the five (mean 0.272 -> 0.320; six mel frames: 0.323, for 30 ms more
# latency). Training and offline scoring keep MelConfig(), as the weights and sync experts were trained.
SERVING_LEAD = 3


def serving_config() -> MelConfig:
    """The mel configuration of the real-time path (sessions, render): MelConfig's windows, SERVING_LEAD
    mel frames later."""
    return MelConfig(window_shift=MelConfig.window_shift + SERVING_LEAD)


class StreamingMel:
    """Mel frames of a stream that arrives in chunks of any size; same values as `melspectrogram`.

    `push` returns the mel frames completed by a chunk; `flush` ends the stream (zero padding, as the
    batch function does) and returns the rest. With a `voice`, each frame goes through the voice's
    filterbank of the moment (`dsp.voice`), and the voice hears every chunk first; with a `norm`, the
    frames are then shifted to the learnt voice's mean speech spectrum (`dsp.voice.VoiceNorm`).
    """

    def __init__(
        self, cfg: MelConfig | None = None, voice: VoiceWarp | None = None, norm: VoiceNorm | None = None
    ) -> None:
        self.cfg = cfg or MelConfig()
        self.voice = voice
        self.norm = norm
        self.samples_in = 0  # input samples received so far
        self.frames_out = 0  # mel frames emitted so far
        self._last_sample = 0.0  # previous raw sample, for pre-emphasis across chunks
        self._pending = np.zeros(self.cfg.n_fft // 2)  # padded signal from the next frame's start
        self._ended = False

    def push(self, samples: np.ndarray) -> np.ndarray:
        """samples: [n] float in [-1, 1]. Returns the newly complete mel frames [n_mels, t]."""
        if self._ended:
            raise RuntimeError("this stream was flushed; start a new StreamingMel for new audio")
        x = _check_samples(samples)
        if self.voice is not None:
            self.voice.observe(x)
        if x.size:
            emphasised = _preemphasise(x, self._last_sample, self.cfg)
            self._last_sample = float(x[-1])
            self.samples_in += x.size
            self._pending = np.concatenate([self._pending, emphasised])
        return self._emit()

    def flush(self) -> np.ndarray:
        """Ends the stream. Returns the last mel frames [n_mels, t]."""
        if self._ended:
            return np.zeros((self.cfg.n_mels, 0), np.float32)
        self._pending = np.concatenate([self._pending, np.zeros(self.cfg.n_fft // 2)])
        self._ended = True
        return self._emit()

    def _emit(self) -> np.ndarray:
        cfg = self.cfg
        count = 0 if len(self._pending) < cfg.n_fft else 1 + (len(self._pending) - cfg.n_fft) // cfg.hop_length
        filterbank = None if self.voice is None else self.voice.filterbank()
        mel = _frames_to_mel(_frame_signal(self._pending, count, cfg), cfg, filterbank)
        self._pending = self._pending[count * cfg.hop_length :]
        self.frames_out += count
        return mel if self.norm is None else self.norm(mel)


@dataclass(frozen=True)
class WindowBatch:
    """Consecutive video frames' mel windows."""

    first_frame: int  # video frame index of windows[0]
    windows: np.ndarray  # [n, n_mels, window_frames] float32

    def __len__(self) -> int:
        return len(self.windows)


class StreamingMelWindows:
    """Per-video-frame mel windows of a stream, each emitted as soon as the audio it needs has arrived.

    For any chunking, the concatenated output equals `mel_windows(melspectrogram(all), 0, K)` with
    K = `num_video_frames(total samples)`, once `flush` has been called; with a `norm`, the windows
    depend on what the stream heard before them, but still not on its chunking.
    """

    def __init__(
        self, cfg: MelConfig | None = None, voice: VoiceWarp | None = None, norm: VoiceNorm | None = None
    ) -> None:
        self.cfg = cfg or MelConfig()
        self._mel = StreamingMel(self.cfg, voice, norm)
        self._frames = np.zeros((self.cfg.n_mels, 0), np.float32)  # kept mel frames
        self._frames_offset = 0  # mel index of self._frames[:, 0]
        self.next_frame = 0  # next video frame to emit

    def push(self, samples: np.ndarray) -> WindowBatch:
        """samples: [n] float in [-1, 1]. Returns the windows that became complete."""
        self._append(self._mel.push(samples))
        count = 0
        while self._mel.samples_in >= self.cfg.samples_needed(self.next_frame + count):
            count += 1
        return self._take(count)

    @property
    def samples_in(self) -> int:
        """Input samples received so far."""
        return self._mel.samples_in

    def flush(self) -> WindowBatch:
        """Ends the stream; returns the windows of all remaining whole video frames."""
        self._append(self._mel.flush())
        return self._take(num_video_frames(self._mel.samples_in, self.cfg) - self.next_frame)

    def _append(self, mel: np.ndarray) -> None:
        self._frames = np.concatenate([self._frames, mel], axis=1)

    def _take(self, count: int) -> WindowBatch:
        count = max(count, 0)
        first = self.next_frame
        windows = mel_windows(self._frames, first, count, self.cfg, self._frames_offset)
        self.next_frame += count
        drop = min(max(self.cfg.window_start(self.next_frame), 0) - self._frames_offset, self._frames.shape[1])
        if drop > 0:  # frames no later window reads
            self._frames = self._frames[:, drop:]
            self._frames_offset += drop
        return WindowBatch(first, windows)
