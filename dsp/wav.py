"""Reading PCM WAV files into float samples (stdlib `wave`, no other dependency)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from .media import from_s16


class WavFormatError(ValueError):
    """A WAV file this reader cannot take (compressed, or a sample width other than 16-bit)."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Returns (samples [N] float32 in [-1, 1], sample rate). Multi-channel audio is averaged to mono."""
    try:
        with wave.open(str(path), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except wave.Error as err:
        raise WavFormatError(f"{path}: not a PCM WAV file ({err}); convert it, e.g. to 16-bit PCM with sox") from err
    if width != 2:
        raise WavFormatError(f"{path}: {8 * width}-bit samples; expected 16-bit PCM (convert with sox -b 16)")
    samples = from_s16(raw)
    return samples.reshape(-1, channels).mean(axis=1), rate
