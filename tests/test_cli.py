"""The `lipstream` console command, run as a user runs it."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lipstream.cli import build_parser, main

LIPSTREAM = Path(sys.executable).with_name("lipstream")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LIPSTREAM), *args], capture_output=True, text=True, timeout=300, check=False)


def test_models_json_is_keyed_by_profile_and_never_imports_gpu_packages() -> None:
    """`lipstream models --json`, run as a user runs it; on the CPU default neither TensorRT, CUDA nor
    even ONNX Runtime is imported (printed on stderr after the command)."""
    code = (
        "import sys; from lipstream.cli import main; code = main(['models', '--json']); "
        "print(sorted(m for m in ('tensorrt', 'onnxruntime', 'pycuda', 'cuda') if m in sys.modules), file=sys.stderr); "
        "sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "[]"
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


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--max-sessions", "0"],
        ["serve", "--port", "70000"],
        ["serve", "--jitter-frames", "-1"],
        ["serve", "--voice-warp", "2"],
        ["render", "default", "a.wav", "--voice-warp", "high"],
        ["render", "default", "a.wav", "--voice-norm", "yes"],
        ["train", "generator", "--steps", "two"],
        ["evaluate", "--max-clips", "0"],
        ["bench", "session", "--sessions", "0"],
        ["bench", "engine", "--batches", "1,0"],
        ["bench", "engine", "--engines", "onnxruntime,cuda"],
        ["bench", "engine", "--variants", "all,int8"],
        ["models", "--latency", "-1"],
        ["models", "--profile", "fast"],
    ],
)
def test_counts_are_checked_when_parsed(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A count, port or list that makes no sense is a usage error naming the option, before anything loads."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert f"argument {argv[-2]}: " in capsys.readouterr().err


def test_defaults_are_the_librarys() -> None:
    """The CLI restates no default: what `serve`, `personalize`, `train` and `prepare` fall back to is
    what the library's settings say, and the benchmarks pass nothing they were not given."""
    from lipstream.avatars import options
    from lipstream.realtime.runtime import Runtime
    from lipstream.realtime.settings import VOICE_NORM, ServerSettings
    from lipstream.training.config import GeneratorTrainConfig, PersonalizeConfig, VideoEvalOptions

    parser = build_parser()
    serve = parser.parse_args(["serve"])
    assert (serve.max_sessions, serve.max_sessions_per_client, serve.jitter_frames) == (
        ServerSettings.max_sessions,
        ServerSettings.max_sessions_per_client,
        ServerSettings.jitter_frames,
    )
    assert (serve.motion_gain, serve.voice_warp) == (Runtime.motion_gain, Runtime.voice_warp)
    assert (serve.keep_template == "on") == Runtime.keep_template
    assert (serve.voice_norm == "on") == VOICE_NORM
    assert parser.parse_args(["serve", "--voice-warp", "off"]).voice_warp == 1.0
    assert (parser.parse_args(["evaluate"]).voice_norm == "on") == VideoEvalOptions.voice_norm
    assert parser.parse_args(["personalize", "a"]).epochs == PersonalizeConfig.epochs
    generator = parser.parse_args(["train", "generator"])
    assert (generator.steps, generator.lr, generator.grid_share) == (
        GeneratorTrainConfig.steps,
        GeneratorTrainConfig.lr,
        GeneratorTrainConfig.grid_share,
    )
    prepare = parser.parse_args(["prepare", "v.mp4", "--name", "n"])
    assert (prepare.max_seconds, prepare.reference_percentile) == (options.MAX_SECONDS, options.REFERENCE_PERCENTILE)
    bench = parser.parse_args(["bench", "session", "--seconds", "5"])
    assert {k for k in vars(bench) if k not in ("command", "benchmark", "func", "target")} == {"seconds"}


def test_benchmark_help_shows_the_functions_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from lipstream.benchmarks.session_bench import run_session_bench

    default = inspect.signature(run_session_bench).parameters["seconds"].default
    with pytest.raises(SystemExit):
        main(["bench", "session", "--help"])
    assert f"measured (default {default})" in " ".join(capsys.readouterr().out.split())


def test_prepare_reports_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert main(["prepare", str(tmp_path / "empty.mp4"), "--name", "x", "--avatars", str(tmp_path), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("lipstream prepare: error:") and "the file is empty" in stderr
    assert "Traceback" not in stderr
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(["prepare", str(tmp_path / "empty.mp4"), "--name", "x", "--max-seconds", "0"])
    assert stop.value.code == 2 and "expected a number above 0, got '0'" in capsys.readouterr().err


@pytest.mark.parametrize("job", ["syncnet", "generator", "voice", "upsampler"])
def test_a_training_job_without_a_cache_says_how_to_build_one(
    job: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", job, "--cache", str(tmp_path), "--out", str(tmp_path / "out"), "--steps", "1"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("lipstream train: error:") and "lipstream dataset build" in stderr
    assert "Traceback" not in stderr


def test_prepare_makes_an_avatar_and_a_contact_sheet(tmp_path: Path) -> None:
    from lipstream.avatars.default import photo_source

    sheet = tmp_path / "sheet.png"
    args = ["prepare", str(photo_source()), "--name", "photo", "--avatars", str(tmp_path), "--sheet", str(sheet)]
    result = run(*args, "--quiet")
    assert result.returncode == 0, result.stderr
    assert "avatar 'photo' ready" in result.stdout and "1 frames" in result.stdout
    assert (tmp_path / "photo" / "manifest.json").is_file() and sheet.stat().st_size > 10_000


def test_render_writes_an_mp4_with_every_frame_and_the_audio(
    tmp_path: Path, cache: Path, speech_then_silence: Path
) -> None:
    import av

    source = speech_then_silence  # 5 s at 16 kHz
    out = tmp_path / "out.mp4"
    result = subprocess.run(
        [str(LIPSTREAM), "render", "default", str(source), "-o", str(out), "--engine", "onnxruntime"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "LIPSTREAM_CACHE": str(cache)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with av.open(str(out)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        assert container.streams.audio[0].sample_rate == 48_000  # the input at its full band
    assert frames == 80_000 // 640  # every 40 ms of the 5 s
    assert f"wrote {out}: {frames} frames" in result.stdout


def test_serve_answers_health_on_its_port(tmp_path: Path, cache: Path) -> None:
    import socket
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(LIPSTREAM), "serve", "--port", str(port), "--engine", "onnxruntime"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "LIPSTREAM_CACHE": str(cache)},
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    health = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.5)
        assert health["status"] == "ok" and health["avatar"] == "default-rt" and health["engine"] == "onnxruntime"
        choice = health["engine_variant_choice"]  # serve times ONNX Runtime's levels and keeps the fastest
        assert health["engine_variant"] == choice["chosen"] and choice["chosen"] in choice["ms_per_frame"]
        assert health["keep_template"] is True and health["voice_norm"] is True
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("command", ["talk", "serve"])
def test_client_and_server_help_do_not_import_torch(command: str) -> None:
    """`talk` is a client and `serve --help` a question: neither may pay for torch (or mediapipe), even
    when the client fails (here: no server to talk to)."""
    code = (
        "import sys\n"
        "from lipstream.cli import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "main(['talk', '--server', 'http://127.0.0.1:9', '--text', 'hi'])\n"
        "print(sorted({'torch', 'mediapipe'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-500:]


def test_the_hot_path_imports_neither_torch_nor_mediapipe() -> None:
    """Session, scheduler, compositor and tracks run per frame; the offline stack stays out of them."""
    code = (
        "import sys\n"
        "import lipstream.realtime.compositor, lipstream.realtime.scheduler\n"
        "import lipstream.realtime.session, lipstream.realtime.tracks\n"
        "print(sorted({'torch', 'mediapipe'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
