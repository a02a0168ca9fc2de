"""The voice warp (dsp/voice.py): a speaker's pitch, the warp it implies, and the filterbank that hears a
higher voice's formants where the model's voice had them; and the speech-level normalisation that maps a
voice's log-mel statistics to the learnt voice's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lipstream.dsp import MelConfig, StreamingMelWindows, mel_windows, melspectrogram, num_video_frames
from lipstream.dsp.voice import (
    DEFAULT_REFERENCE,
    FULL_STRENGTH_FRAMES,
    MAX_ALPHA,
    MIN_VOICED_FRAMES,
    PITCH_FRAME,
    REFERENCE_F0_HZ,
    VoiceNorm,
    VoiceReference,
    VoiceReferenceError,
    VoiceWarp,
    VoiceWarpError,
    alpha_for_pitch,
    frame_pitch,
    normalise_speech,
    speech_mask,
    warped_filterbank,
)
from lipstream.dsp.wav import read_wav
from lipstream.errors import is_user_error

RATE = 16_000


def _voice(f0: float, seconds: float, seed: int = 0) -> np.ndarray:
    """A vowel-like buzz: harmonics of f0 falling off as 1/k, a little noise. [n] float32"""
    t = np.arange(int(RATE * seconds)) / RATE
    harmonics = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in range(1, int(4000 / f0)))
    noise = np.random.default_rng(seed).normal(0, 0.01, t.size)
    return (0.1 * harmonics + noise).astype(np.float32)


@pytest.mark.parametrize("f0", [95.0, 120.0, 220.0, 310.0])
def test_pitch_of_a_voiced_frame_and_none_for_noise_or_silence(f0: float) -> None:
    frames = _voice(f0, 1.0)[: 20 * PITCH_FRAME].reshape(20, PITCH_FRAME).astype(np.float64)
    assert np.nanmedian(frame_pitch(frames, RATE)) == pytest.approx(f0, rel=0.03)
    rng = np.random.default_rng(1)
    unvoiced = np.stack([rng.normal(0, 0.1, PITCH_FRAME), np.zeros(PITCH_FRAME)])
    assert np.isnan(frame_pitch(unvoiced, RATE)).all()


def test_a_tone_alpha_times_higher_lands_in_the_plain_banks_bin() -> None:
    """The warped bank hears S(alpha f): a formant at alpha F peaks where F peaks in the plain bank."""
    cfg = MelConfig()
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)

    def peak(bank: np.ndarray, hz: float, width: float = 40.0) -> int:  # the mel bin a formant at hz excites
        return int(np.argmax(bank @ np.exp(-0.5 * ((bins - hz) / width) ** 2)))

    for hz in (500.0, 1200.0, 2500.0):
        for alpha in (1.1, 1.25):
            assert abs(peak(warped_filterbank(cfg, alpha), alpha * hz, 40 * alpha) - peak(cfg.filterbank, hz)) <= 1
            assert abs(peak(cfg.filterbank, alpha * hz) - peak(cfg.filterbank, hz)) >= 2  # unwarped: elsewhere
    np.testing.assert_array_equal(warped_filterbank(cfg, 1.0), cfg.filterbank)


def test_the_warp_follows_the_speakers_pitch_once_enough_of_it_is_voiced() -> None:
    cfg = MelConfig()
    voice = VoiceWarp(cfg)
    voice.observe(_voice(220.0, (MIN_VOICED_FRAMES - 2) * PITCH_FRAME / RATE).astype(np.float64))
    assert voice.alpha == 1.0  # too little heard yet
    voice.observe(_voice(220.0, 2.0).astype(np.float64))
    assert voice.alpha == alpha_for_pitch(220.0) == pytest.approx((220 / REFERENCE_F0_HZ) ** (1 / 3), abs=0.011)
    voice.observe(np.zeros(RATE * 3))  # silence moves nothing
    assert voice.alpha == alpha_for_pitch(220.0)
    assert alpha_for_pitch(REFERENCE_F0_HZ) == 1.0 and alpha_for_pitch(1000.0) == MAX_ALPHA


def test_a_fixed_warp_is_kept_and_one_out_of_range_refused() -> None:
    voice = VoiceWarp(MelConfig(), fixed=1.1)
    voice.observe(_voice(300.0, 2.0).astype(np.float64))
    assert voice.alpha == 1.1
    with pytest.raises(VoiceWarpError, match="outside"):
        VoiceWarp(MelConfig(), fixed=2.0)


def test_streaming_through_an_unwarped_voice_gives_the_batch_features_and_a_warp_changes_them() -> None:
    cfg = MelConfig()
    audio = _voice(200.0, 2.0)
    reference = mel_windows(melspectrogram(audio, cfg), 0, num_video_frames(len(audio), cfg), cfg)

    def streamed(voice: VoiceWarp) -> np.ndarray:
        stream = StreamingMelWindows(cfg, voice)
        parts = [stream.push(audio[i : i + 333]).windows for i in range(0, len(audio), 333)]
        return np.concatenate([*parts, stream.flush().windows])

    np.testing.assert_array_equal(streamed(VoiceWarp(cfg, fixed=1.0)), reference)
    assert np.abs(streamed(VoiceWarp(cfg, fixed=1.2)) - reference).mean() > 0.05


def _reference(bands: int = 80) -> VoiceReference:
    return VoiceReference(np.linspace(-1.0, -2.0, bands))


def test_a_voice_is_shifted_to_the_references_mean_band_by_band() -> None:
    """Speech frames of another level and balance (each band its own mean), heard for 20 s, come out with
    the reference's per-band mean and their own spread; frames of digital silence count for nothing, and
    the room noise before the first word drops out of the mean once speech comes."""
    ref, rng = _reference(), np.random.default_rng(0)
    mean, spread = rng.uniform(-1.5, 0.5, 80), rng.uniform(0.4, 1.2, 80)
    speech = (mean[:, None] + spread[:, None] * rng.standard_normal((80, 1600))).clip(-3.0, 3.0)
    norm = VoiceNorm(ref)
    norm(np.full((80, 200), -4.0))
    assert norm.speech_frames == 0
    norm(np.full((80, 100), -3.0) + 0.05 * rng.standard_normal((80, 100)))  # room noise, taken for speech
    assert norm.speech_frames > 90
    out = norm(np.concatenate([speech[:, :800], np.full((80, 200), -4.0), speech[:, 800:]], axis=1))[:, -800:]
    assert norm.speech_frames == 1600  # the noise no longer counts
    np.testing.assert_allclose(out.mean(axis=1), ref.mean, atol=0.1)
    np.testing.assert_allclose(out.std(axis=1), speech[:, 800:].std(axis=1), rtol=0.05)
    assert np.abs(out).max() <= MelConfig.max_abs_value


def test_the_shift_starts_at_none_and_any_chunking_gives_the_same_frames() -> None:
    """Before any speech a frame passes unchanged; the shift grows over FULL_STRENGTH_FRAMES of speech;
    frames pushed whole or in pieces come out equal."""
    ref, rng = _reference(), np.random.default_rng(1)
    assert np.array_equal(VoiceNorm(ref)(np.full((80, 3), -4.0)), np.full((80, 3), -4.0))
    loud = VoiceNorm(ref)
    offset = 1.5
    shifted = [
        loud(ref.mean[:, None] + offset + 0.3 * rng.standard_normal((80, 1))) for _ in range(2 * FULL_STRENGTH_FRAMES)
    ]
    first, last = (shifted[k][:, 0] - ref.mean for k in (FULL_STRENGTH_FRAMES // 4, -1))
    assert 0.5 * offset < first.mean() < offset  # partly shifted after a quarter of the frames
    assert abs(last.mean()) < 0.1
    stream = rng.normal(-0.5, 0.7, (80, 300))
    whole = VoiceNorm(ref)(stream)
    pieces, parts = VoiceNorm(ref), np.split(stream, [1, 7, 50, 51, 200], axis=1)
    np.testing.assert_array_equal(np.concatenate([pieces(p) for p in parts], axis=1), whole)


def test_a_whole_recording_normalised_at_once_is_what_a_session_comes_to(shared_data: Path) -> None:
    """normalise_speech, the clip-wide form that training uses, on a real voice: its speech frames get the
    reference's mean, and a session's VoiceNorm, once it has heard the speaker, gives nearly the same
    frames (within a fifth of the shift). Silence alone passes unchanged."""
    ref = VoiceReference.from_json(DEFAULT_REFERENCE)
    samples, _ = read_wav(shared_data / "speech" / "hdtf_RD_Radio31_000.wav")
    mel = melspectrogram(samples, MelConfig())
    whole = normalise_speech(mel, ref)
    speech = speech_mask(mel)
    np.testing.assert_allclose(whole[:, speech].mean(axis=1), ref.mean, atol=0.05)
    session = VoiceNorm(ref)(mel)
    last = np.s_[:, -200:]  # its last 2.5 s
    assert np.abs(session[last] - whole[last]).mean() < 0.2 * np.abs(mel[last] - whole[last]).mean()
    silence = np.full((80, 50), -4.0, np.float32)
    np.testing.assert_array_equal(normalise_speech(silence, ref), silence)


def test_the_shipped_reference_loads_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    ref = VoiceReference.from_json(DEFAULT_REFERENCE)
    assert ref.mean.shape == (MelConfig().n_mels,) and np.isfinite(ref.mean).all()
    bad = tmp_path / "voice.json"
    for text in ('{"means": [0, 1]}', '{"mean": []}', '{"mean": [0, NaN]}', '{"mean": "loud"}'):
        bad.write_text(text)
        with pytest.raises(VoiceReferenceError, match="mean"):
            VoiceReference.from_json(bad)
    with pytest.raises(VoiceReferenceError, match="--voice-norm off"):  # gone: the CLI says what to do
        VoiceReference.from_json(tmp_path / "missing.json")
    assert is_user_error(VoiceReferenceError("x"))
    with pytest.raises(VoiceReferenceError, match="bands"):  # a reference for other features
        VoiceNorm(VoiceReference(np.zeros(40)), MelConfig())


def test_a_session_stream_through_the_normalisation_differs_from_the_voice_as_it_is() -> None:
    """StreamingMelWindows with a VoiceNorm: the windows of a quiet voice are raised towards the learnt
    voice's level; without one they are the batch function's."""
    cfg = MelConfig()
    quiet = 0.05 * _voice(180.0, 3.0)
    plain = mel_windows(melspectrogram(quiet, cfg), 0, num_video_frames(len(quiet)), cfg)
    stream = StreamingMelWindows(cfg, None, VoiceNorm(VoiceReference.from_json(DEFAULT_REFERENCE)))
    normed = np.concatenate(
        [stream.push(quiet[i : i + 500]).windows for i in range(0, len(quiet), 500)] + [stream.flush().windows]
    )
    assert normed.shape == plain.shape
    assert normed[-25:].mean() > plain[-25:].mean() + 0.3
