"""ONNX Runtime behind the engine interface: the CPU provider by default (the embedded default), the
CUDA provider when onnxruntime-gpu and a GPU are there."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, EngineError, TensorSpec

# Measured with `lipstream bench engine` on the 2-core CPU: 2 intra-op threads is fastest per call at
# every batch size; one inference worker per engine owns them (realtime/scheduler.py: one batch per tick).
DEFAULT_THREADS = 2
# Graph optimisation levels: all adds the NCHWc layout and its Reorder nodes to extended's fusions;
# basic only folds constants and removes redundant nodes.
LEVELS = ("all", "extended", "basic")


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxRuntimeEngine(Engine):
    kind = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        graph: str,
        model_id: str,
        cuda: bool = False,
        threads: int = DEFAULT_THREADS,
        max_batch: int = 64,
        level: str = LEVELS[0],
    ) -> None:
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }
        if level not in levels:
            raise EngineError(f"unknown ONNX Runtime optimisation level {level!r}; choose one of: {', '.join(LEVELS)}")

        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path} does not exist; run `lipstream export` first")
        if cuda and not cuda_available():
            raise EngineError(
                "the ONNX Runtime CUDA provider is not available: install onnxruntime-gpu "
                "(pip install 'lipstream[tensorrt]') on a machine with an NVIDIA GPU, or use the CPU engine"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = levels[level]
        options.log_severity_level = 3
        # The server runs one batch per 40 ms tick: worker threads that spin-wait between batches
        # would burn a core doing nothing (measured: 1.49 cores for one session with spinning,
        # starving the encoder and the other sessions).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # ONNX Runtime raises its own untyped errors for bad files
            raise EngineError(f"ONNX Runtime could not load {path}: {err}; re-run `lipstream export --force`") from err
        self.kind = "onnxruntime-cuda" if cuda else "onnxruntime"
        inputs = [TensorSpec(i.name, tuple(i.shape[1:])) for i in self.session.get_inputs()]
        outputs = [TensorSpec(o.name, tuple(o.shape[1:])) for o in self.session.get_outputs()]
        super().__init__(graph, model_id, inputs, outputs, max_batch)
        self.path, self.threads, self.variant = path, threads, level

    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        results = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, results, strict=True))
