"""Choosing and opening an engine: TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU, unless told."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine, EngineError

if TYPE_CHECKING:  # engines run files that export made; they never import it (no cycle, no torch)
    from lipstream.export.onnx_export import ExportResult
    from lipstream.models.stylesync import StyleSync

ENGINE_KINDS = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime", "torch")


def resolve_kind(kind: str) -> str:
    """The engine `auto` means on this machine, or `kind` itself after checking it is known."""
    if kind not in ENGINE_KINDS:
        raise EngineError(f"unknown engine {kind!r}; choose one of: {', '.join(ENGINE_KINDS)}")
    if kind != "auto":
        return kind
    from . import tensorrt_engine
    from .onnxruntime_engine import cuda_available

    if tensorrt_engine.available():
        return "tensorrt"
    return "onnxruntime-cuda" if cuda_available() else "onnxruntime"


def open_engine(
    kind: str, export: ExportResult, graph: str, model: StyleSync | None = None, fp16: bool | None = None
) -> Engine:
    """An engine for one graph of an export. fp16 (default: on GPUs when the export has fp16 graphs)
    picks the fp16 graph; `torch` needs the PyTorch model itself."""
    kind = resolve_kind(kind)
    settings = export.settings
    model_id, max_batch = settings["model_id"], settings["batch"][1]
    has_fp16 = "fp16_file" in settings["graphs"][graph]
    use_fp16 = has_fp16 and kind != "onnxruntime" if fp16 is None else fp16
    if use_fp16 and not has_fp16:
        raise EngineError(f"{export.folder} has no fp16 graphs; export with --fp16")
    if kind == "torch":
        if model is None:
            raise EngineError("the torch engine needs the PyTorch model")
        from .torch_engine import TorchEngine

        return TorchEngine(model, model_id, graph, max_batch=max_batch)
    if kind == "tensorrt":
        from . import tensorrt_engine as trt

        path = trt.engine_path(export.folder, graph, use_fp16, settings["model_checksum"])
        if not path.is_file():
            trt.build_engine(export.graph_path(graph, use_fp16), path, max_batch)
        return trt.TensorRTEngine(path, graph, model_id, max_batch)
    from .onnxruntime_engine import OnnxRuntimeEngine

    return OnnxRuntimeEngine(
        export.graph_path(graph, use_fp16), graph, model_id, cuda=kind == "onnxruntime-cuda", max_batch=max_batch
    )


def check_model(engine: Engine, avatar_model_id: str, avatar_name: str) -> None:
    """Refuses an avatar whose cached features were made by another model than the engine runs."""
    if engine.model_id != avatar_model_id:
        raise EngineError(
            f"avatar {avatar_name!r} was prepared for model {avatar_model_id!r} but the {engine.kind} engine runs "
            f"{engine.model_id!r}; re-prepare the avatar or export the avatar's model"
        )
