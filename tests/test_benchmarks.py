"""The benchmarks that drive a real server: they run, and write what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_session_benchmark_measures_fps_drops_and_latency(
    tmp_path: Path, speech_then_silence: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipstream.benchmarks.session_bench import run_session_bench

    monkeypatch.setenv("LIPSTREAM_CACHE", str(tmp_path / "cache"))
    payload = run_session_bench(1, 7.0, str(speech_then_silence), out_dir=tmp_path)
    saved = json.loads(Path(payload["files"][0]).read_text())
    (session,) = saved["sessions"]
    assert session["frames"] > 100 and 15 < session["fps"] < 35
    assert session["bursts"] >= 2 and session["bursts_seen"] >= 1
    assert 0 < session["audio_to_mouth_ms"]["p50"] < 3000
    assert saved["frames_dropped_by_server"] >= 0 and saved["machine"]["cores"]
