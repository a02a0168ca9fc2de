"""One interface over ONNX Runtime (CPU default, CUDA), TensorRT (FP16 engines) and PyTorch (reference)."""

from .base import Engine, EngineError, EngineInputError, TensorSpec

__all__ = ["Engine", "EngineError", "EngineInputError", "TensorSpec"]
