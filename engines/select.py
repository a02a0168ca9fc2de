"""Choosing and opening an engine: TensorRT > ONNX Runtime CUDA > ONNX Runtime CPU, unless told."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Engine, EngineError

if TYPE_CHECKING:  # engines run files that export made; they never import it (no cycle, no torch)
    from lipstream.export.onnx_export import ExportResult
    from lipstream.models.stylesync import StyleSync

    from .onnxruntime_engine import OnnxRuntimeEngine

ENGINE_KINDS = ("auto", "tensorrt", "onnxruntime-cuda", "onnxruntime", "torch")
# How the CPU engine runs the graph: an ONNX Runtime optimisation level on the fp32 graph, or fp16, the
# fp16 graph (a gain only where the CPU computes in fp16, e.g. AVX-512 FP16); auto: the fastest of them
# whose outputs match the first's, timed at start-up (engines/variants.py). Other engines have one way.
CPU_VARIANTS = ("all", "extended", "basic", "fp16")
ENGINE_VARIANTS = ("auto", *CPU_VARIANTS)


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
    kind: str,
    export: ExportResult,
    graph: str,
    model: StyleSync | None = None,
    fp16: bool | None = None,
    variant: str = "all",
) -> Engine:
    """An engine for one graph of an export. fp16 (default: on GPUs when the export has fp16 graphs)
    picks the fp16 graph; `torch` needs the PyTorch model itself; `variant` (ENGINE_VARIANTS) is how
    the CPU engine runs it."""
    kind = resolve_kind(kind)
    if variant not in ENGINE_VARIANTS:
        raise EngineError(f"unknown engine variant {variant!r}; choose one of: {', '.join(ENGINE_VARIANTS)}")
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
    cuda = kind == "onnxruntime-cuda"

    def open_variant(name: str) -> Engine:
        return onnxruntime_variant(export, graph, name, cuda=cuda, fp16=use_fp16)

    if variant != "auto" or cuda:
        return open_variant(CPU_VARIANTS[0] if variant == "auto" or cuda else variant)
    from .variants import fastest_variant

    candidates = [name for name in CPU_VARIANTS if name != "fp16" or has_fp16]
    engine, choice = fastest_variant(open_variant, candidates)
    engine.variant_choice = choice.as_dict()
    return engine


def onnxruntime_variant(
    export: ExportResult, graph: str, variant: str, cuda: bool = False, fp16: bool = False, threads: int | None = None
) -> OnnxRuntimeEngine:
    """ONNX Runtime on one graph of an export, run as `variant` (CPU_VARIANTS): an optimisation level on
    the fp32 graph (the fp16 one where `fp16`), or `fp16`, the fp16 graph at the full level."""
    from .onnxruntime_engine import DEFAULT_THREADS, OnnxRuntimeEngine

    if variant == "fp16" and "fp16_file" not in export.settings["graphs"][graph]:
        raise EngineError(f"{export.folder} has no fp16 graphs; export with --fp16")
    path = export.graph_path(graph, fp16 or variant == "fp16")
    level = "all" if variant == "fp16" else variant
    model_id, max_batch = export.settings["model_id"], export.settings["batch"][1]
    threads = DEFAULT_THREADS if threads is None else threads
    engine = OnnxRuntimeEngine(path, graph, model_id, cuda, threads=threads, max_batch=max_batch, level=level)
    engine.variant = variant
    return engine


def check_model(engine: Engine, avatar_model_id: str, avatar_name: str) -> None:
    """Refuses an avatar whose cached features were made by another model than the engine runs."""
    if engine.model_id != avatar_model_id:
        raise EngineError(
            f"avatar {avatar_name!r} was prepared for model {avatar_model_id!r} but the {engine.kind} engine runs "
            f"{engine.model_id!r}; re-prepare the avatar or export the avatar's model"
        )
