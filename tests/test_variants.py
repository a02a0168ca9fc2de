"""The start-up choice among an engine's variants: parity first, then the fastest, on real ONNX Runtime
sessions (tiny graphs made here, and the exported frame graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from lipstream.engines import EngineError
from lipstream.engines.onnxruntime_engine import OnnxRuntimeEngine
from lipstream.engines.select import CPU_VARIANTS, open_engine
from lipstream.engines.variants import IDENTICAL_DB, PARITY_DB, fastest_variant, psnr_db
from lipstream.export.onnx_export import export_onnx


def _graph(path: Path, nodes: list, extra: list | None = None) -> Path:
    """x [B, 256] -> y [B, 256] through `nodes`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 256])
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=extra or []), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.save(model, path)
    return path


def test_a_variant_whose_outputs_differ_is_rejected_and_the_fastest_of_the_rest_is_kept(tmp_path: Path) -> None:
    two = helper.make_tensor("two", TensorProto.FLOAT, [1], [2.0])
    graphs = {
        "double": _graph(tmp_path / "double.onnx", [helper.make_node("Mul", ["x", "two"], ["y"])], [two]),
        "sum": _graph(tmp_path / "sum.onnx", [helper.make_node("Add", ["x", "x"], ["y"])]),  # the same numbers
        "negated": _graph(tmp_path / "neg.onnx", [helper.make_node("Neg", ["x"], ["y"])]),  # not the same
    }
    opened: dict[str, OnnxRuntimeEngine] = {}

    def open_variant(name: str) -> OnnxRuntimeEngine:
        opened[name] = OnnxRuntimeEngine(graphs[name], "frame", "test", max_batch=8)
        return opened[name]

    engine, choice = fastest_variant(open_variant, ["double", "sum", "negated"], rounds=2, runs=2)
    assert choice.chosen in ("double", "sum") and engine is opened[choice.chosen] and not engine.closed
    assert set(choice.ms_per_frame) == {"double", "sum"} and all(ms > 0 for ms in choice.ms_per_frame.values())
    assert choice.parity_db["sum"] == IDENTICAL_DB and choice.parity_db["negated"] < PARITY_DB
    assert "outputs differ from double's" in choice.rejected["negated"]
    assert all(e.closed for name, e in opened.items() if name != choice.chosen)
    x = np.ones((1, 256), np.float32)
    np.testing.assert_allclose(engine.run({"x": x})["y"], 2 * x)


def test_psnr_is_measured_over_the_reference_range() -> None:
    a = {"region": np.linspace(-1, 1, 1000, dtype=np.float32)}
    assert psnr_db(a, a) == float("inf")
    noisy = {"region": a["region"] + np.float32(0.01)}  # peak 2, error 0.01: 20 log10(200) = 46 dB
    assert psnr_db(a, noisy) == pytest.approx(46.02, abs=0.05)


def test_the_frame_graph_takes_the_fastest_variant_that_keeps_parity(tmp_path: Path) -> None:
    exported = export_onnx("rt", out=tmp_path / "rt", fp16=True)
    engine = open_engine("onnxruntime", exported, "frame", variant="auto")
    choice = engine.variant_choice
    assert engine.variant == choice["chosen"] in CPU_VARIANTS and engine.label == f"onnxruntime ({engine.variant})"
    # none is rejected: the levels rearrange the same float32 arithmetic, and fp16 stays above 45 dB
    assert set(choice["ms_per_frame"]) == set(CPU_VARIANTS) and not choice["rejected"]
    assert all(choice["parity_db"][level] >= 60 for level in ("extended", "basic"))
    assert PARITY_DB <= choice["parity_db"]["fp16"] < 100
    assert choice["ms_per_frame"][engine.variant] == min(choice["ms_per_frame"].values())
    fixed = open_engine("onnxruntime", exported, "frame", variant="basic")
    assert fixed.variant == "basic" and fixed.variant_choice is None
    with pytest.raises(EngineError, match="unknown engine variant 'fast'; choose one of: auto, all, extended, basic"):
        open_engine("onnxruntime", exported, "frame", variant="fast")
    fp32_only = export_onnx("rt", out=tmp_path / "fp32")
    assert "fp16" not in open_engine("onnxruntime", fp32_only, "frame", variant="auto").variant_choice["ms_per_frame"]
    with pytest.raises(EngineError, match="has no fp16 graphs"):
        open_engine("onnxruntime", fp32_only, "frame", variant="fp16")
