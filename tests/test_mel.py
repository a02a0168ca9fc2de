"""Mel features: checked against librosa, and streaming == batch for any chunking."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipstream.dsp import (
    AudioInputError,
    MelConfig,
    StreamingMel,
    StreamingMelWindows,
    mel_filterbank,
    mel_windows,
    melspectrogram,
    num_video_frames,
)

CFG = MelConfig()


def test_filterbank_matches_librosa() -> None:
    reference = librosa.filters.mel(sr=16_000, n_fft=800, n_mels=80, fmin=55, fmax=7600)  # Slaney, area-normalised
    ours = mel_filterbank(CFG)
    assert ours.shape == (80, 401)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)


def librosa_log_mel(samples: np.ndarray) -> np.ndarray:
    """The Wav2Lip recipe written with librosa's STFT and filterbank."""
    emphasised = librosa.effects.preemphasis(samples.astype(np.float64), coef=0.97, zi=0.0)
    spectrum = np.abs(librosa.stft(emphasised, n_fft=800, hop_length=200, win_length=800, pad_mode="constant"))
    mel = librosa.filters.mel(sr=16_000, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64) @ spectrum
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_log_mel_matches_librosa_on_real_speech(speech: np.ndarray) -> None:
    ours = melspectrogram(speech)
    reference = librosa_log_mel(speech)
    assert ours.shape == reference.shape == (80, 1 + len(speech) // 200)
    assert np.abs(ours - reference).max() < 1e-4
    assert ours.min() >= -4 and ours.max() <= 4
    assert ours.std() > 0.5, "real speech should span a good part of the [-4, 4] range"


def test_silence_is_the_floor_and_a_tone_lands_in_its_band() -> None:
    assert np.all(melspectrogram(np.zeros(16_000)) == -4.0)
    t = np.arange(16_000) / 16_000
    mel = melspectrogram(0.5 * np.sin(2 * np.pi * 1000 * t))
    peak_band = int(np.argmax(mel[:, 40]))
    centre_hz = librosa.mel_frequencies(n_mels=82, fmin=55, fmax=7600)[1:-1]
    assert abs(centre_hz[peak_band] - 1000) < 100


def stream_windows(samples: np.ndarray, sizes: list[int], cfg: MelConfig = CFG) -> tuple[np.ndarray, list[int]]:
    stream = StreamingMelWindows(cfg)
    batches, position, i = [], 0, 0
    while position < len(samples):
        size = sizes[i % len(sizes)]
        batches.append(stream.push(samples[position : position + size]))
        position += size
        i += 1
    batches.append(stream.flush())
    firsts = [b.first_frame for b in batches]
    return np.concatenate([b.windows for b in batches]), firsts


@pytest.mark.parametrize("chunk", [160, 320, 1, 333, 640, 4097])
def test_streaming_windows_equal_batch_windows(speech: np.ndarray, chunk: int) -> None:
    clip = speech[: 16_000 * 2 + 77]
    expected = mel_windows(melspectrogram(clip), 0, num_video_frames(len(clip)))
    got, _ = stream_windows(clip, [chunk])
    assert got.shape == expected.shape == (50, 80, 16)
    assert np.abs(got - expected).max() <= 1e-5


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=2000), min_size=1, max_size=12),
    shift=st.integers(min_value=-16, max_value=4),
)
def test_streaming_equals_batch_for_random_chunkings(speech: np.ndarray, sizes: list[int], shift: int) -> None:
    cfg = MelConfig(window_shift=shift)
    clip = speech[8_000 : 8_000 + 12_345]
    expected = mel_windows(melspectrogram(clip, cfg), 0, num_video_frames(len(clip), cfg), cfg)
    got, firsts = stream_windows(clip, sizes, cfg)
    assert firsts == sorted(firsts), "frames come out in order"
    assert np.abs(got - expected).max() <= 1e-5


def test_streaming_mel_frames_equal_batch(speech: np.ndarray) -> None:
    stream = StreamingMel()
    rng = np.random.default_rng(1)
    parts, position = [], 0
    while position < len(speech):
        size = int(rng.integers(1, 900))
        parts.append(stream.push(speech[position : position + size]))
        position += size
    parts.append(stream.flush())
    np.testing.assert_allclose(np.concatenate(parts, axis=1), melspectrogram(speech), atol=1e-5)


def test_window_position_follows_wav2lip_indexing() -> None:
    wav2lip = MelConfig(window_shift=0)
    assert [wav2lip.window_start(k) for k in range(6)] == [int(80 * k / 25) for k in range(6)]
    assert CFG.window_start(10) == 32 - 8


def test_window_is_emitted_exactly_when_its_audio_has_arrived(speech: np.ndarray) -> None:
    for shift, lookahead in ((-8, 0.0725), (0, 0.1725), (-20, 0.0)):
        cfg = MelConfig(window_shift=shift)
        assert cfg.lookahead_seconds == pytest.approx(lookahead)
        stream = StreamingMelWindows(cfg)
        for k in range(12):
            need = cfg.samples_needed(k)
            got = stream.push(speech[stream._mel.samples_in : need - 1])
            assert stream.next_frame == k, f"shift {shift}: frame {k} came out before its audio arrived"
            got = stream.push(speech[need - 1 : need])
            assert got.first_frame + len(got) == k + 1, f"shift {shift}: frame {k} not emitted at {need} samples"


def test_windows_past_either_end_read_as_silence(speech: np.ndarray) -> None:
    mel = melspectrogram(speech[:6400])  # 10 video frames
    windows = mel_windows(mel, 0, 10)
    assert np.all(windows[0, :, :8] == -4.0), "frame 0's window starts 8 mel frames before the audio"
    assert not np.all(windows[0, :, 8:] == -4.0)
    assert np.all(mel_windows(mel, 40, 1) == -4.0)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros((2, 100), np.float32), "mono"),
        (np.zeros(100, np.int16), "32768"),
        (np.array([0.0, np.nan, 0.0]), "NaN"),
    ],
)
def test_bad_audio_is_refused_with_a_clear_error(samples: np.ndarray, message: str) -> None:
    with pytest.raises(AudioInputError, match=message):
        melspectrogram(samples)
    with pytest.raises(AudioInputError, match=message):
        StreamingMelWindows().push(samples)


def test_a_flushed_stream_refuses_more_audio() -> None:
    stream = StreamingMel()
    stream.push(np.zeros(1000))
    stream.flush()
    with pytest.raises(RuntimeError, match="new StreamingMel"):
        stream.push(np.zeros(10))


def test_config_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="multiple of fps"):
        MelConfig(sample_rate=16_001)
    with pytest.raises(ValueError, match="fmax"):
        MelConfig(fmax=9000.0)
