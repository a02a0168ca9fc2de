"""Vocal tract length normalisation: a mel filterbank that hears a voice's formants where another voice
had them.

The audio encoder learnt articulation mostly from one man's voice (GRID s1, half of the training
samples), and it reads a formant's place on the mel axis as part of the mouth's shape: GRID s1's own
test clips, their formants raised 15 % or 25 % through a warped filterbank, fall in opening correlation
with the real mouth from 0.81 to 0.66 and 0.52 (`lipstream evaluate --video`). Heard through a
filterbank whose frequencies are scaled by `alpha`, a voice whose formants lie `alpha` times higher
puts them where the learnt voice had them.

`alpha` is fixed, or follows the voice's pitch: formants scale roughly as the cube root of the pitch
ratio between speakers, the learnt voice having a median F0 of `REFERENCE_F0_HZ`. Measured on six
voices the model never heard, it is no general cure: GRID s4 (a woman saying GRID sentences, as the
learnt voice did) gains (opening correlation 0.36 -> 0.42 at her alpha of 1.24), while the talking
faces, whose kind of voices the training clips did hold, mostly lose (mean of the six 0.31 -> 0.29).
So the default is 1. Pure numpy; `VoiceWarp` keeps a stream's pitch history so that a session follows
its speaker.

`VoiceNorm` shifts each band of a stream's log-mel so that its mean over the speech matches the learnt
voice's (`VoiceReference`, shipped in models/weights/rt.voice.json): on, by default, in every session.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .mel import MelConfig, mel_filterbank

# The warp the server and render use unless told (`--voice-warp`): 1, the voice as it is. Following the
# pitch (`auto`) raised the opening correlation of GRID s4, who says GRID sentences as the training
# voice did, and lowered it on the unseen talking faces (README, Avatars: the voice warp).
DEFAULT_WARP: float | None = 1.0
REFERENCE_F0_HZ = 104.0  # median F0 (frame_pitch) of 40 GRID s1 training sentences: the voice the encoder learnt
PITCH_EXPONENT = 1.0 / 3.0  # formant scale ~ (F0 / reference F0) ** (1/3)
MIN_ALPHA, MAX_ALPHA = 0.9, 1.35  # a deep man's voice .. a child's
ALPHA_STEP = 0.02  # alphas are rounded to this, so a stream uses few distinct filterbanks
MIN_VOICED_FRAMES = 12  # 0.48 s of voiced speech before the estimate leaves 1
HISTORY_FRAMES = 250  # the running median looks at the last 10 s of voiced speech
PITCH_FRAME = 640  # samples (40 ms at 16 kHz): 2.5 periods of the lowest pitch looked for
PITCH_RANGE_HZ = (60.0, 400.0)
VOICED_DIP = 0.15  # YIN's threshold: a normalised difference below it at the period counts as voiced
VOICED_RMS = 1e-3  # about -60 dBFS: quieter frames are never voiced


class VoiceWarpError(ValueError):
    """A warp factor outside what `VoiceWarp` can hear; the message gives the range."""


def check_alpha(alpha: float) -> float:
    if not MIN_ALPHA <= alpha <= MAX_ALPHA:
        raise VoiceWarpError(
            f"a voice warp of {alpha} is outside {MIN_ALPHA}..{MAX_ALPHA}; give a factor in that range "
            "(above 1 lowers a high voice's formants), or 'auto' to follow the speaker's pitch"
        )
    return alpha


@lru_cache(maxsize=64)
def warped_filterbank(cfg: MelConfig, alpha: float) -> np.ndarray:
    """cfg's filterbank applied to the spectrum S(alpha f): a formant at alpha F lands where one at F
    would. [n_mels, bins]"""
    bank = mel_filterbank(cfg)
    if alpha == 1.0:
        return bank
    bins = np.arange(bank.shape[1], dtype=np.float64)
    # sum_f w(f) S(alpha f) = (1 / alpha) sum_g w(g / alpha) S(g)
    return np.stack([np.interp(bins / alpha, bins, row, left=0.0, right=0.0) for row in bank]) / alpha


def frame_pitch(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """F0 in Hz of each frame, NaN where it is not voiced: YIN (de Cheveigne and Kawahara, 2002), the
    cumulative-mean-normalised difference function, whose dips at the period do not fade with the lag as
    autocorrelation peaks do. frames: [n, PITCH_FRAME] float. [n]"""
    n, length = frames.shape
    lo, hi = int(sample_rate / PITCH_RANGE_HZ[1]), int(sample_rate / PITCH_RANGE_HZ[0])
    window = length - hi - 1  # samples compared at every lag up to hi + 1
    x = frames - frames.mean(axis=1, keepdims=True)
    size = 2 * length
    # r[t] = sum_j x[j] x[j + t] over j < window, for t = 0 .. hi + 1
    cross = np.fft.irfft(np.conj(np.fft.rfft(x[:, :window], size)) * np.fft.rfft(x, size), size)[:, : hi + 2]
    power = np.concatenate([np.zeros((n, 1)), np.cumsum(x**2, axis=1)], axis=1)  # [n, length + 1]
    lags = np.arange(hi + 2)
    shifted_energy = power[:, lags + window] - power[:, lags]  # sum of x[j + t]^2 over j < window
    diff = shifted_energy[:, :1] + shifted_energy - 2 * cross  # [n, hi + 2]
    mean = np.cumsum(diff[:, 1:], axis=1) / lags[1:]
    normalised = np.ones_like(diff)
    normalised[:, 1:] = diff[:, 1:] / np.maximum(mean, 1e-12)
    rms = np.sqrt(power[:, -1] / length)
    pitch = np.full(n, np.nan)
    for i in np.flatnonzero(rms >= VOICED_RMS):
        row = normalised[i]
        below = np.flatnonzero(row[lo : hi + 1] < VOICED_DIP) + lo
        if not below.size:
            continue
        k = int(below[0])  # the first dip under the threshold (later ones are multiples of the period)
        while k + 1 <= hi and row[k + 1] < row[k]:
            k += 1
        left, centre, right = row[k - 1], row[k], row[k + 1]
        curve = left - 2 * centre + right
        offset = 0.5 * (left - right) / curve if curve > 0 else 0.0  # a parabola through the dip
        pitch[i] = sample_rate / (k + offset)
    return pitch


def alpha_for_pitch(f0_hz: float) -> float:
    """The warp factor of a voice whose median F0 is f0_hz, rounded to ALPHA_STEP and kept in range."""
    alpha = (f0_hz / REFERENCE_F0_HZ) ** PITCH_EXPONENT
    return float(np.clip(round(alpha / ALPHA_STEP) * ALPHA_STEP, MIN_ALPHA, MAX_ALPHA))


class VoiceWarp:
    """A stream's warp factor: fixed, or (`fixed=None`) following the running median pitch of the last
    HISTORY_FRAMES voiced frames, 1 until MIN_VOICED_FRAMES of them have been heard.

    `observe` takes the raw samples as they arrive; `filterbank` is the one to compute mel frames with
    now. The history outlives a stream (a session's speaker stays the same across interruptions).
    """

    def __init__(self, cfg: MelConfig, fixed: float | None = None) -> None:
        self.cfg = cfg
        self.fixed = None if fixed is None else check_alpha(fixed)
        self.alpha = 1.0 if fixed is None else self.fixed
        self._pitches: deque[float] = deque(maxlen=HISTORY_FRAMES)
        self._pending = np.zeros(0)

    def observe(self, samples: np.ndarray) -> None:
        """samples: [n] float mono at cfg.sample_rate."""
        if self.fixed is not None or not samples.size:
            return
        self._pending = np.concatenate([self._pending, samples])
        whole = len(self._pending) // PITCH_FRAME
        if not whole:
            return
        frames = self._pending[: whole * PITCH_FRAME].reshape(whole, PITCH_FRAME)
        self._pending = self._pending[whole * PITCH_FRAME :]
        pitches = frame_pitch(frames, self.cfg.sample_rate)
        self._pitches.extend(pitches[np.isfinite(pitches)].tolist())
        if len(self._pitches) >= MIN_VOICED_FRAMES:
            self.alpha = alpha_for_pitch(float(np.median(self._pitches)))

    def filterbank(self) -> np.ndarray:
        return warped_filterbank(self.cfg, self.alpha)


# Speech-level normalisation: a stream's log-mel bands shifted so that, over its speech, each has the
# mean it had in the voice the model learnt (cepstral mean normalisation, done on log-mel bands): a
# quieter, brighter or differently recorded voice reaches the audio encoder at the level and spectral
# balance it was trained on. Matching each band's spread as well (variance normalisation) was measured
# too: it raised the opening correlation no more and lowered the lip-audio correlation (README).
SPEECH_BELOW_PEAK = 2.0  # normalised units (25 dB): a frame this far below the stream's loud end is not speech
SPEECH_PEAK_PERCENTILE = 90.0  # the stream's loud end: this percentile of recent frames' loudness
SPEECH_FLOOR = -3.5  # a frame quieter than this (digital silence is -4) is never speech
LOUDNESS_HISTORY = 800  # frames above the floor (10 s) whose loudness sets the speech threshold
SPEECH_HISTORY = 1600  # speech frames (20 s of speech) whose mean is matched
FULL_STRENGTH_FRAMES = 80  # speech frames (1 s) before the shift is whole; it grows linearly to it
MEASURE_EVERY = 4  # mel frames (50 ms) between measurements of the stream's mean

# The shipped reference: GRID s1's training clips, the voice that rt.pt learnt (`lipstream dataset voice`).
DEFAULT_REFERENCE = Path(__file__).resolve().parent.parent / "models" / "weights" / "rt.voice.json"


class VoiceReferenceError(ValueError):
    """A voice reference that is not a list of one finite number per mel band."""


@dataclass(frozen=True)
class VoiceReference:
    """The learnt voice's mean normalised log-mel over its speech frames, per band."""

    mean: np.ndarray  # [n_mels]
    source: str = ""

    @classmethod
    def from_json(cls, path: str | Path) -> VoiceReference:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise VoiceReferenceError(
                f"cannot read the voice reference {path} ({err}); reinstall lipstream, write it with "
                "`lipstream dataset voice`, or turn the normalisation off with --voice-norm off"
            ) from err
        try:
            mean = np.asarray(data["mean"], np.float64)
        except (KeyError, TypeError, ValueError) as err:
            raise VoiceReferenceError(f"{path}: expected {{'mean': [one number per mel band]}} ({err})") from err
        if mean.ndim != 1 or not mean.size or not np.all(np.isfinite(mean)):
            raise VoiceReferenceError(
                f"{path}: 'mean' must be a list of finite numbers, one per mel band; "
                "write it again with `lipstream dataset voice`"
            )
        return cls(mean, str(data.get("source", "")))

    def to_json(self, path: str | Path, frames: int) -> None:
        fields = {"source": self.source, "speech_frames": frames, "mean": self.mean.round(4).tolist()}
        lines = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in fields.items())
        Path(path).write_text("{\n" + lines + "\n}\n")


def speech_mask(mel: np.ndarray, peak: float | None = None) -> np.ndarray:
    """Frames of `mel` [n_mels, T] (normalised) that hold speech: their loudness (mean over bands) within
    SPEECH_BELOW_PEAK of the loud end (`peak`, by default the SPEECH_PEAK_PERCENTILE of these frames'
    own loudness) and above SPEECH_FLOOR. [T] bool"""
    level = mel.mean(axis=0)
    if peak is None:
        peak = float(np.percentile(level, SPEECH_PEAK_PERCENTILE)) if level.size else 0.0
    return (level >= peak - SPEECH_BELOW_PEAK) & (level > SPEECH_FLOOR)


def normalise_speech(mel: np.ndarray, reference: VoiceReference, cfg: MelConfig | None = None) -> np.ndarray:
    """A whole recording's `VoiceNorm` at once: every band shifted by the reference's mean minus the
    band's mean over the recording's speech frames (`speech_mask`), as a session is once it has heard its
    speaker for a while. mel: [n_mels, T] normalised log-mel. float32"""
    speech = speech_mask(mel)
    if not speech.any():
        return mel.astype(np.float32)
    shift = reference.mean - mel[:, speech].astype(np.float64).mean(axis=1)
    top = (cfg or MelConfig()).max_abs_value
    return np.clip(mel + shift[:, None], -top, top).astype(np.float32)


class VoiceNorm:
    """A stream's speech-level normalisation towards `reference`: each band x -> x - m + m_ref, m being
    the band's mean over the speech among the last SPEECH_HISTORY frames kept, grown from the reference's
    own (no shift) over the first FULL_STRENGTH_FRAMES of speech.

    A frame is kept when it is within SPEECH_BELOW_PEAK of the loud end last measured; which kept frames
    are speech is decided again whenever the loud end and the mean are measured (every MEASURE_EVERY
    frames), against the loud end of the moment: room noise heard before the first word, taken
    for speech while nothing louder had come, drops out once speech arrives. Like VoiceWarp, it outlives
    a stream: a session's speaker stays the same across interruptions."""

    def __init__(self, reference: VoiceReference, cfg: MelConfig | None = None) -> None:
        cfg = cfg or MelConfig()
        if len(reference.mean) != cfg.n_mels:
            raise VoiceReferenceError(
                f"the voice reference {reference.source!r} has {len(reference.mean)} bands, the mel features "
                f"{cfg.n_mels}; write it again with `lipstream dataset voice` from a cache of these features"
            )
        self.reference = reference
        self.max_abs = cfg.max_abs_value  # the normalised log-mel's range, kept
        self._loudness = np.zeros(LOUDNESS_HISTORY)  # the last sounding frames' loudness, oldest overwritten
        self._sounding = 0  # frames above SPEECH_FLOOR heard in all
        self._frames = 0  # frames heard in all
        self._peak = 0.0  # the loud end of the frames heard lately
        self._kept = np.zeros((SPEECH_HISTORY, len(reference.mean)))  # frames that were speech when heard
        self._kept_loudness = np.full(SPEECH_HISTORY, -np.inf)
        self._count = 0  # frames kept in all (the oldest are overwritten)
        self.speech_frames = 0  # kept frames that count as speech now
        self.shift = np.zeros(len(reference.mean))  # what each band gets added now

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        """Maps mel [n_mels, T] (normalised log-mel), each frame by the mean measured up to and including
        it, so any chunking of a stream gives the same frames. float32"""
        out = np.empty(mel.shape, np.float32)
        for t, frame in enumerate(mel.T.astype(np.float64)):
            self._hear(frame)
            out[:, t] = np.clip(frame + self.shift, -self.max_abs, self.max_abs)
        return out

    def _hear(self, frame: np.ndarray) -> None:
        level = float(frame.mean())
        self._frames += 1
        if level > SPEECH_FLOOR:  # silence neither lowers the loud end nor is kept
            self._loudness[self._sounding % LOUDNESS_HISTORY] = level
            self._sounding += 1
            if self._sounding == 1:
                self._peak = level
            if level >= self._peak - SPEECH_BELOW_PEAK:
                slot = self._count % SPEECH_HISTORY
                self._kept[slot], self._kept_loudness[slot] = frame, level
                self._count += 1
        if not self._frames % MEASURE_EVERY and self._sounding:
            recent = self._loudness[: min(self._sounding, LOUDNESS_HISTORY)]
            rank = round((len(recent) - 1) * SPEECH_PEAK_PERCENTILE / 100)
            self._peak = float(np.partition(recent, rank)[rank])
            speech = (self._kept_loudness >= self._peak - SPEECH_BELOW_PEAK).astype(np.float64)
            self.speech_frames = count = int(speech.sum())
            if count:
                weight = min(1.0, count / FULL_STRENGTH_FRAMES)
                self.shift = weight * (self.reference.mean - speech @ self._kept / count)
