"""Is a template's sound in step with its mouth?

A video whose audio track is shifted against its picture (a Bluetooth microphone, a screen recorder, a
bad edit) makes a misleading template: personalisation learns the mouth one sound too late or too
early, and its scores are judged against the wrong frames. Seen here: ten of GRID s4's template clips
joined by a script that let the first clip's short audio (3 frames short) pull every later clip's sound
ahead; its loudness followed the mouth best 120 ms before it moved, the same clips joined in step 40 ms
after.

The check needs no model: the mouth's opening per frame (from the landmarks every avatar has) is
correlated with the audio's loudness at each lag. Real speech peaks with the sound 0 to 2 frames after
the mouth opens (GRID s1, 420 clips: the mean correlation peaks at 0; 41 talking clips of ~35 people:
the most common peak is +1). A template whose peak lies clearly elsewhere is reported, with the
`prepare --audio-offset` that would bring it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEARCH_FRAMES = 8  # lags searched either way: 320 ms
NATURAL_LAGS = (0, 2)  # where real speech peaks (positive: the sound comes after the mouth)
TYPICAL_LAG = 1  # the lag --audio-offset aims at
MIN_SECONDS = 10.0  # shorter templates are too noisy to judge (single 3-s clips peak anywhere)
MIN_R = 0.3  # a peak weaker than this says nothing
MARGIN = 0.05  # and it must beat the best natural lag by this much (GRID s1, sound 160 ms late: 0.095)
FRAME_MS = 40


def frame_loudness(mel: np.ndarray, count: int) -> np.ndarray:
    """Mean log-mel of each video frame's span of `mel` [bands, T]. [min(count, frames in mel)]"""
    count = min(count, mel.shape[1] * 5 // 16)  # 80 mel columns a second, 25 frames
    return np.array([mel[:, k * 16 // 5 : (k + 1) * 16 // 5].mean() for k in range(count)])


def lag_correlations(signal: np.ndarray, other: np.ndarray, max_lag: int, min_frames: int = 25) -> np.ndarray:
    """Pearson's r between signal[t] and other[t + lag] ([N] each, NaN where unknown) for lag in
    [-max_lag, max_lag]; NaN where fewer than `min_frames` pairs are known or either side is flat.
    [2 max_lag + 1]"""
    count = min(len(signal), len(other))
    out = np.full(2 * max_lag + 1, np.nan)
    for i, lag in enumerate(range(-max_lag, max_lag + 1)):
        a = signal[max(0, -lag) : count - max(0, lag)]
        b = other[max(0, lag) : count - max(0, -lag)]
        keep = ~(np.isnan(a) | np.isnan(b))
        if keep.sum() >= min_frames and a[keep].std() > 0 and b[keep].std() > 0:
            out[i] = np.corrcoef(a[keep], b[keep])[0, 1]
    return out


def best_lag(signal: np.ndarray, other: np.ndarray, max_lag: int, min_frames: int = 25) -> tuple[float, int] | None:
    """(r, lag) where `lag_correlations` is highest (positive lag: `signal` moves first), None where no
    lag has enough pairs."""
    r = lag_correlations(signal, other, max_lag, min_frames)
    if np.isnan(r).all():
        return None
    best = int(np.nanargmax(r))
    return float(r[best]), best - max_lag


@dataclass(frozen=True)
class AudioSync:
    """Where a template's loudness follows its mouth best."""

    lag_frames: int  # positive: the sound comes after the mouth opens
    r: float  # the correlation there
    r_natural: float  # the best correlation within NATURAL_LAGS
    seconds: float
    applied_offset_ms: int = 0  # the --audio-offset the sound was measured with

    @property
    def suspect(self) -> bool:
        """The peak lies outside the natural lags, clearly, on a template long enough to tell."""
        outside = not NATURAL_LAGS[0] - 1 <= self.lag_frames <= NATURAL_LAGS[1] + 1
        clear = self.r >= MIN_R and self.r - self.r_natural >= MARGIN
        return self.seconds >= MIN_SECONDS and outside and clear

    @property
    def suggested_offset_ms(self) -> int:
        """The `prepare --audio-offset` (positive: delay the sound) that puts the peak at TYPICAL_LAG."""
        return self.applied_offset_ms + (TYPICAL_LAG - self.lag_frames) * FRAME_MS

    def message(self) -> str:
        when = "after" if self.lag_frames >= 0 else "before"
        natural = f"{NATURAL_LAGS[0] * FRAME_MS}-{NATURAL_LAGS[1] * FRAME_MS} ms after"
        text = f"the sound follows the mouth best {abs(self.lag_frames) * FRAME_MS} ms {when} it moves (r {self.r:.2f})"
        if NATURAL_LAGS[0] <= self.lag_frames <= NATURAL_LAGS[1]:
            return f"in step: {text}, as in real speech ({natural})"
        text += f"; real speech peaks {natural} (r {self.r_natural:.2f} there)"
        if not self.suspect:
            short = self.seconds < MIN_SECONDS
            why = f"{self.seconds:.0f} s are too few to judge by" if short else "too close to call the audio shifted"
            return f"{text}; {why}"
        return (
            f"{text}: this video's audio looks shifted, and personalising on it teaches the shift. Fix the "
            f"video, or prepare it again with --audio-offset {self.suggested_offset_ms}"
        )

    def as_dict(self) -> dict:
        return {
            "lag_frames": self.lag_frames,
            "r": round(self.r, 3),
            "r_natural": round(self.r_natural, 3),
            "seconds": round(self.seconds, 1),
            "suspect": self.suspect,
            "audio_offset_ms": self.applied_offset_ms,
            "suggested_offset_ms": self.suggested_offset_ms,
        }


def measure_audio_sync(opening: np.ndarray, mel: np.ndarray, applied_offset_ms: int = 0) -> AudioSync | None:
    """opening: the mouth's opening per frame [N] (NaN where unknown); mel: the frames' log-mel [bands, T],
    of sound already shifted by `applied_offset_ms`. None when no lag can be judged (too short, no
    movement or no sound)."""
    loudness = frame_loudness(mel, len(opening))
    r = lag_correlations(np.asarray(opening, np.float64), loudness, SEARCH_FRAMES)
    if np.isnan(r).all():
        return None
    lags = np.arange(-SEARCH_FRAMES, SEARCH_FRAMES + 1)
    best = int(np.nanargmax(r))
    natural = r[(lags >= NATURAL_LAGS[0]) & (lags <= NATURAL_LAGS[1])]
    return AudioSync(
        lag_frames=int(lags[best]),
        r=float(r[best]),
        r_natural=float(np.nanmax(natural)) if not np.isnan(natural).all() else float("nan"),
        seconds=len(loudness) / 25,
        applied_offset_ms=applied_offset_ms,
    )


def shift_audio(samples: np.ndarray, offset_samples: int) -> np.ndarray:
    """`samples` delayed by `offset_samples` (silence in front), or advanced when negative (silence at
    the end); the length stays."""
    n = len(samples)
    if offset_samples >= 0:
        return np.concatenate([np.zeros(min(offset_samples, n), samples.dtype), samples[: max(0, n - offset_samples)]])
    cut = min(-offset_samples, n)
    return np.concatenate([samples[cut:], np.zeros(cut, samples.dtype)])
