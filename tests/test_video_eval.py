"""`lipstream evaluate --video`: any clip scored through the real-time pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lipstream.benchmarks.video_eval import VideoEvalOptions, evaluate_video


def test_a_clip_is_scored_against_its_own_footage(
    shared_data: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIPSTREAM_CACHE", str(cache))  # the run's: its graphs are exported already
    clip = shared_data / "talking" / "may_5s.mp4"
    options = VideoEvalOptions(engine="onnxruntime", max_seconds=3.0, show_progress=False)
    report = evaluate_video(clip, tmp_path / "out", options)
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["frames"] == report["frames"] == 75
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 10_000
    model, static, truth = (report["systems"][s] for s in ("model", "static", "ground-truth"))
    assert truth["sharpness_ratio"] == truth["opening_amplitude_ratio"] == truth["opening_correlation"] == 1.0
    assert truth["psnr_db"] is None and truth["ssim"] == 1.0  # identical: no finite PSNR
    # The reference mouth pasted still barely moves; the model's mouth follows the speech.
    assert static["opening_amplitude_ratio"] < 0.5 * model["opening_amplitude_ratio"]
    assert model["lip_audio_r"] > static["lip_audio_r"] + 0.2  # the model's mouth follows the loudness
    assert 0 < model["sharpness_ratio"] < 1.0 and model["lmd_px"] > 0
    assert 0.5 < report["seam"]["ratio"] < 1.5 and report["seam"]["frames"] > 50
    assert report["face_width_px"] > 150
    # Its own template: keeping the template where the audio changes nothing would show the truth.
    assert report["keep_template"] is False and "own template" in report["keep_template_off_because"]
    assert report["voice_norm"] is True
