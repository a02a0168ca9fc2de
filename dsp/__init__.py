"""Signal processing shared by training and the real-time path: mel features, WAV input."""

from .mel import (
    AudioInputError,
    MelConfig,
    StreamingMel,
    StreamingMelWindows,
    WindowBatch,
    mel_filterbank,
    mel_windows,
    melspectrogram,
    num_video_frames,
)
from .wav import WavFormatError, read_wav

__all__ = [
    "AudioInputError",
    "MelConfig",
    "StreamingMel",
    "StreamingMelWindows",
    "WavFormatError",
    "WindowBatch",
    "mel_filterbank",
    "mel_windows",
    "melspectrogram",
    "num_video_frames",
    "read_wav",
]
