"""The benchmarks that drive a real server: they run, and write what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_session_benchmark_measures_fps_drops_and_latency(
    tmp_path: Path, cache: Path, speech_then_silence: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lipstream.benchmarks.session_bench import run_session_bench

    monkeypatch.setenv("LIPSTREAM_CACHE", str(cache))
    payload = run_session_bench(1, 7.0, str(speech_then_silence), out_dir=tmp_path)
    saved = json.loads(Path(payload["files"][0]).read_text())
    (session,) = saved["sessions"]
    assert session["frames"] > 100 and 15 < session["fps"] < 35
    assert session["bursts"] >= 2 and session["bursts_seen"] >= 1
    assert 0 < session["audio_to_mouth_ms"]["p50"] < 3000
    # A whole count from the server's metrics; a dropped frame was never sent, so frames received and
    # dropped together are at most the 25 per second of the run (a loaded machine drops more, sends fewer).
    dropped = saved["frames_dropped_by_server"]
    assert dropped == int(dropped) >= 0 and session["frames"] + dropped <= 25 * 7.0 + 5 and saved["machine"]["cores"]
    # A streaming server and its client both work: neither takes no CPU, nor more than the machine has.
    assert all(0 < cores <= saved["machine"]["cores"] for cores in saved["cpu_cores"].values()), saved["cpu_cores"]


@pytest.mark.slow  # minutes of benchmarking; the session benchmark above runs by default
def test_the_suite_measures_every_part_and_writes_json_plots_and_markdown(tmp_path: Path) -> None:
    from lipstream.benchmarks.suite import run_suite

    summary = tmp_path / "RESULTS.md"
    payload = run_suite(
        minutes=0.25, max_sessions=1, concurrency_seconds=3, trials=2, out_dir=tmp_path, summary_path=summary,
        engine=False,
    )  # fmt: skip
    saved = json.loads(Path(payload["files"][0]).read_text())
    run = saved["long_run"]
    assert run["bursts"] >= 4 and 0 < run["audio_to_mouth"]["p50_ms"] < 2000
    assert 0 < run["audio_to_audio"]["p50_ms"] < 2000 and run["av_offset_ms"] is not None
    assert run["drift_frames"] is not None and len(run["samples"]) == run["bursts"]
    assert {"resample", "vad", "mel", "inference", "composite", "encode_send"} <= set(run["stages"])
    assert 0 < saved["first_frame"]["ice_connected_to_first_frame"]["p50_ms"] < 5000
    assert saved["interrupt"]["all"]["n"] >= 1 and 0 < saved["interrupt"]["all"]["p50_ms"] < 2000
    (row,) = saved["concurrency"]
    assert row["sessions"] == 1 and row["min_fps"] > 15 and row["server_cpu_cores"] > 0
    text = summary.read_text()
    assert "| audio in -> mouth out, p50 |" in text and "Stage breakdown" in text
    assert all(Path(f).is_file() for f in payload["files"])


@pytest.mark.slow
def test_the_soak_run_follows_every_session_and_the_server(tmp_path: Path) -> None:
    from lipstream.benchmarks.soak import run_soak

    summary = tmp_path / "SOAK.md"
    payload = run_soak(minutes=0.25, sessions=2, out_dir=tmp_path, summary_path=summary)
    saved = json.loads(summary.with_suffix(".json").read_text())
    assert saved["server_alive"] and saved["server_exit_code"] == 0
    sessions = saved["run"]["per_session"]
    assert len(sessions) == 2 and all(s["bursts"] >= 4 and s["fps"] > 15 for s in sessions)
    assert all(s["drift_frames"] is not None for s in sessions)
    assert saved["server_end"]["rss_mib"] > 0 and saved["server_warm"]["threads"] > 0
    assert set(saved["errors"]) == {
        "lipstream_inference_errors_total", "lipstream_inference_timeouts_total", "lipstream_inference_skipped_total"
    }  # fmt: skip
    assert set(saved["verdicts"]) >= {"server alive at the end", "A/V drift <= 1 frame"}
    assert "| session | bursts |" in summary.read_text() and all(Path(f).is_file() for f in payload["files"])


@pytest.mark.slow
@pytest.mark.parametrize("via", ["janus", "direct"])
def test_fanout_benchmark_writes_fps_lost_frames_and_cpu(
    via: str, tmp_path: Path, cache: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from lipstream.benchmarks.fanout import run_fanout_bench

    if via == "janus" and shutil.which("janus") is None:
        pytest.skip("needs Debian's janus package")
    monkeypatch.setenv("LIPSTREAM_CACHE", str(cache))
    speech_file = shared_data / "speech" / "espeak_en.wav"
    payload = run_fanout_bench(2, via, seconds=4.0, out=tmp_path / "fanout.json", speech_path=str(speech_file))
    saved = json.loads((tmp_path / "fanout.json").read_text())
    assert saved["viewers"] == 2 and saved["via"] == via and payload["files"] == [str(tmp_path / "fanout.json")]
    assert 10 < saved["min_fps"] <= saved["median_fps"] < 35 and saved["frames_lost"] >= 0
    assert saved["lipstream_cpu_cores"] > 0 and (saved["janus_cpu_cores"] > 0) == (via == "janus")


def test_the_opening_ceiling_readout_finds_a_linear_signal_and_not_noise() -> None:
    import numpy as np

    from lipstream.benchmarks.opening_ceiling import _fit, _predict, cross_validated_r

    rng = np.random.default_rng(0)
    features = rng.standard_normal((600, 32))
    # a slow signal (as a mouth is), read linearly out of the features
    truth = np.convolve(rng.standard_normal(600), np.ones(5) / 5, mode="same")
    features[:, 0] += 6 * truth  # r about 0.94 at best against the unit noise
    assert cross_validated_r(features, truth)["r"] > 0.8
    assert cross_validated_r(rng.standard_normal((600, 32)), truth)["r"] < 0.3  # nothing to read
    scaled = 10 * truth + 2  # the readout keeps the target's offset and scale
    fitted = _fit(features, scaled, 1e-2)
    predicted = _predict(fitted, features)
    assert abs(predicted.mean() - scaled.mean()) < 0.05 and 0.8 < predicted.std() / scaled.std() < 1.05
