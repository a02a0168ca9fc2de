"""Export to ONNX (fp32 and fp16), parity on real inputs, the engine interface, and the engine benchmark."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lipstream.avatars import Avatar
from lipstream.avatars.prepare import prepare_avatar
from lipstream.benchmarks.engine_bench import run_engine_bench
from lipstream.engines import EngineError, EngineInputError
from lipstream.engines.onnxruntime_engine import OnnxRuntimeEngine
from lipstream.engines.select import check_model, open_engine, resolve_kind
from lipstream.engines.torch_engine import TorchEngine
from lipstream.export.onnx_export import ExportResult, export_onnx
from lipstream.export.parity import run_parity
from lipstream.models.weights import load_stylesync

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return export_onnx("rt", out=tmp_path_factory.mktemp("export") / "rt", fp16=True)


@pytest.fixture(scope="module")
def anchor(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    root = tmp_path_factory.mktemp("avatars")
    source = shared_data / "talking" / "dfrf_cnn_anchor_71s.mp4"
    return Avatar.load(prepare_avatar(source, "anchor", root=root, max_seconds=0.6, show_progress=False).path)


def test_settings_describe_the_export(exported: ExportResult) -> None:
    settings = exported.settings
    _, model_id = load_stylesync("rt")
    assert settings["model_id"] == model_id and settings["profile"] == "rt"
    assert settings["opset"] == 20 and settings["batch"] == [1, 64]
    assert set(settings["versions"]) >= {"torch", "onnx", "onnxscript", "onnxruntime"}
    assert sorted(settings["checksums"]) == [
        "face_encoder.fp16.onnx",
        "face_encoder.onnx",
        "frame.fp16.onnx",
        "frame.onnx",
    ]
    assert settings["graphs"]["frame"]["inputs"]["mel"] == ["batch", 1, 80, 16]
    assert settings["graphs"]["frame"]["outputs"]["region"] == ["batch", 3, 64, 128]


@pytest.mark.slow  # a second whole export (14 s); the run's shared cache reuses its folder every time
def test_exporting_again_reuses_the_folder_unless_a_graph_changed(exported: ExportResult) -> None:
    again = export_onnx("rt", out=exported.folder, fp16=True)
    assert again.reused and again.settings["created"] == exported.settings["created"]
    frame = exported.folder / "frame.onnx"
    frame.write_bytes(frame.read_bytes()[:-10])  # a damaged graph is never reused
    rebuilt = export_onnx("rt", out=exported.folder, fp16=True)
    assert not rebuilt.reused
    exported.settings = rebuilt.settings


def test_parity_on_a_real_avatar_and_real_speech(exported: ExportResult, anchor: Avatar, speech: np.ndarray) -> None:
    model, _ = load_stylesync("rt")
    report = run_parity(exported.folder, exported.settings, model, anchor, speech)
    assert report["frame"]["fp32_max_abs_error"] <= 1e-4
    assert report["face_encoder"]["fp32_max_abs_error"] <= 1e-4
    assert report["frame"]["fp16_psnr_db"] >= 45.0 and report["frame"]["fp16_finite"]
    assert report["face_encoder"]["fp16_finite"]
    assert 0 < report["frame"]["pre_demodulation_peak"] < 1000, "far inside fp16's range (65504)"
    assert (exported.folder / "parity_frame.png").is_file()


def test_onnxruntime_and_torch_agree_at_any_batch_size(exported: ExportResult) -> None:
    model, model_id = load_stylesync("rt")
    onnx_engine = open_engine("onnxruntime", exported, "frame")
    torch_engine = TorchEngine(model, model_id, "frame", device="cpu")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 64):
        feed = {s.name: rng.standard_normal((batch, *s.shape)).astype(np.float32) for s in onnx_engine.inputs}
        got, want = onnx_engine.run(feed)["region"], torch_engine.run(feed)["region"]
        assert got.shape == (batch, 3, 64, 128)
        np.testing.assert_allclose(got, want, atol=2e-4)


def test_bad_feeds_are_refused_with_the_expected_shapes(exported: ExportResult) -> None:
    engine = open_engine("onnxruntime", exported, "frame")
    good = {s.name: np.zeros((2, *s.shape), np.float32) for s in engine.inputs}
    with pytest.raises(EngineInputError, match="missing inputs"):
        engine.run({k: v for k, v in good.items() if k != "mel"})
    with pytest.raises(EngineInputError, match=r"input mel has shape \(2, 1, 80, 15\), expected \[B, 1, 80, 16\]"):
        engine.run(good | {"mel": np.zeros((2, 1, 80, 15), np.float32)})
    with pytest.raises(EngineInputError, match="same batch size, 1 to 64"):
        engine.run(good | {"mel": np.zeros((3, 1, 80, 16), np.float32)})
    with pytest.raises(EngineInputError, match="same batch size, 1 to 64"):
        engine.run({k: np.zeros((65, *v.shape[1:]), np.float32) for k, v in good.items()})
    engine.close()
    with pytest.raises(EngineError, match="closed"):
        engine.run(good)


def test_an_avatar_of_another_model_is_refused(exported: ExportResult) -> None:
    engine = open_engine("onnxruntime", exported, "face_encoder")
    check_model(engine, exported.settings["model_id"], "ok")
    with pytest.raises(EngineError, match="prepared for model 'rt-trained-0'"):
        check_model(engine, "rt-trained-0", "anchor")


def test_engine_choice_without_a_gpu() -> None:
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here; this checks the machine without it")
    assert resolve_kind("auto") == "onnxruntime"
    with pytest.raises(EngineError, match="unknown engine 'fast'"):
        resolve_kind("fast")


def test_tensorrt_without_tensorrt_says_what_is_missing(exported: ExportResult) -> None:
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here; this checks the message on machines without it")
    with pytest.raises(EngineError, match=r"TensorRT is not installed: install the GPU extra"):
        open_engine("tensorrt", exported, "frame")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lipstream")), "export", "--tensorrt"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "TensorRT is not installed" in result.stderr


@pytest.mark.gpu
def test_tensorrt_fp16_engine_matches_pytorch(exported: ExportResult) -> None:
    from lipstream.engines import tensorrt_engine

    if not tensorrt_engine.available():
        pytest.skip("needs TensorRT and an NVIDIA GPU")
    from lipstream.export.parity import psnr

    model, model_id = load_stylesync("rt")
    engine = open_engine("tensorrt", exported, "frame", fp16=True)
    reference = TorchEngine(model, model_id, "frame", device="cpu")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        feed = {s.name: rng.standard_normal((batch, *s.shape)).astype(np.float32) for s in engine.inputs}
        assert psnr(reference.run(feed)["region"], engine.run(feed)["region"]) >= 45.0


def test_onnx_runtime_refuses_a_missing_graph(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="run `lipstream export` first"):
        OnnxRuntimeEngine(tmp_path / "frame.onnx", "frame", "rt-init-0")


def test_engine_benchmark_writes_json_plot_and_table(
    exported: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lipstream.benchmarks.engine_bench as bench

    monkeypatch.setattr(bench, "export_onnx", lambda *a, **k: exported)
    payload = run_engine_bench(
        "rt",
        engines=("onnxruntime", "torch"),
        batches=(1, 2),
        runs=2,
        ort_threads=(2,),
        out_dir=tmp_path,
        rounds=2,
        ops=True,
        variants=("all", "basic"),  # the start-up choice's candidates, labelled apart from the default
    )
    saved = json.loads(Path(payload["files"][0]).read_text())
    assert saved["machine"]["cores"] and saved["commit"] and saved["settings"]["profile"] == "rt"
    assert [(r["engine"], r["batch"]) for r in saved["results"]] == [
        ("onnxruntime (2 threads)", 1),
        ("onnxruntime (2 threads)", 2),
        ("onnxruntime (2 threads, basic)", 1),
        ("onnxruntime (2 threads, basic)", 2),
        ("torch", 1),
        ("torch", 2),
    ]
    assert all(r["median_ms"] > 0 and r["frames_per_s"] > 0 for r in saved["results"])
    gflops = saved["settings"]["gflops_per_frame"]
    assert 0.5 < gflops < 3  # the rt profile's per-frame path
    for r in saved["results"]:
        assert r["graph_gflops_per_s"] == pytest.approx(r["frames_per_s"] * gflops)
        assert r["efficiency"] == pytest.approx(r["graph_gflops_per_s"] / r["matmul_gflops_per_s"])
        assert r["matmul_gflops_per_s"] > 1 and r["efficiency"] > 0
    for ops in saved["ort_ops"].values():  # ONNX Runtime's own profile, at batch 1 and 8
        assert sum(o["share"] for o in ops) == pytest.approx(1.0) and "Conv" in {o["op"] for o in ops}
    assert Path(payload["files"][1]).stat().st_size > 5_000
    assert "| onnxruntime (2 threads) | 1 |" in Path(payload["files"][2]).read_text()
