"""The `lipstream` console command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lipstream.cli import main

LIPSTREAM = Path(sys.executable).with_name("lipstream")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LIPSTREAM), *args], capture_output=True, text=True, timeout=300, check=False)


def test_models_json_is_keyed_by_profile_and_rt_fits_its_budget() -> None:
    result = run("models", "--json")
    assert result.returncode == 0, result.stderr
    reports = json.loads(result.stdout)
    assert set(reports) == {"rt", "hq"}
    assert reports["rt"]["gflops_per_frame"] <= 1.5
    assert reports["hq"]["face_size"] == 256 and reports["hq"]["style_layers"] == 14
    for report in reports.values():
        params = report["params"]
        assert params["inference_total"] > params["per_frame_path"] > 1_000_000
        assert report["gflops_per_frame"] > 0


def test_models_text_names_params_and_gflops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--profile", "rt", "--latency", "2"]) == 0
    out = capsys.readouterr().out
    assert "rt: 128px face, generates 64x128, L=10" in out
    assert "GFLOPs" in out and "M params" in out
    assert "PyTorch CPU latency per frame: median" in out


def test_bad_arguments_get_a_usage_error() -> None:
    result = run("models", "--profile", "fast")
    assert result.returncode == 2
    assert "invalid choice: 'fast'" in result.stderr
    result = run("models", "--latency", "-1")
    assert result.returncode == 2 and "--latency" in result.stderr


def test_gpu_only_packages_are_never_imported_by_default() -> None:
    code = (
        "import sys, lipstream.cli, lipstream.models.report, lipstream.dsp; "
        "lipstream.cli.main(['models', '--profile', 'rt']); "
        "print(sorted(m for m in ('tensorrt', 'onnxruntime', 'pycuda', 'cuda') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_prepare_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    result = run("prepare", str(tmp_path / "empty.mp4"), "--name", "x", "--avatars", str(tmp_path), "--quiet")
    assert result.returncode == 2
    assert "lipstream prepare: error:" in result.stderr and "the file is empty" in result.stderr
    assert "Traceback" not in result.stderr
    result = run("prepare", str(tmp_path / "empty.mp4"), "--name", "x", "--max-seconds", "0")
    assert result.returncode == 2 and "must be a number above 0" in result.stderr


def test_prepare_makes_an_avatar_and_a_contact_sheet(tmp_path: Path) -> None:
    from lipstream.avatars.default import default_source

    sheet = tmp_path / "sheet.png"
    args = ["prepare", str(default_source()), "--name", "photo", "--avatars", str(tmp_path), "--sheet", str(sheet)]
    result = run(*args, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "avatar 'photo' ready" in result.stdout and "1 frames" in result.stdout
    assert (tmp_path / "photo" / "manifest.json").is_file() and sheet.stat().st_size > 10_000
