"""Signal processing shared by training and the real-time path: mel features, WAV input."""

from .media import (
    FPS,
    MEL_SAMPLE_RATE,
    PLAYBACK_RATE,
    PLAYBACK_SAMPLES_PER_FRAME,
    RTP_TICKS_PER_FRAME,
    SAMPLES_PER_FRAME,
    VIDEO_CLOCK,
    from_s16,
    to_s16,
)
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
    serving_config,
)
from .wav import WavFormatError, read_wav

__all__ = [
    "FPS",
    "MEL_SAMPLE_RATE",
    "PLAYBACK_RATE",
    "PLAYBACK_SAMPLES_PER_FRAME",
    "RTP_TICKS_PER_FRAME",
    "SAMPLES_PER_FRAME",
    "VIDEO_CLOCK",
    "AudioInputError",
    "MelConfig",
    "StreamingMel",
    "StreamingMelWindows",
    "WavFormatError",
    "WindowBatch",
    "from_s16",
    "mel_filterbank",
    "mel_windows",
    "melspectrogram",
    "num_video_frames",
    "read_wav",
    "serving_config",
    "to_s16",
]
