"""TensorRT behind the engine interface: build FP16 engines from the exported graphs, and run them.

Imported lazily; everything here needs the `tensorrt` extra (TensorRT and cuda-python) and an NVIDIA
GPU. Precision comes from the graph (the fp16 ONNX graph, built as a strongly typed network), since
TensorRT 11 has no builder FP16 flag.

Engines are cached next to the graphs, in files named by graph, precision, TensorRT version, GPU
name and model checksum, so a stale engine is never loaded. A timing cache beside them makes
rebuilds fast. Each engine has two optimisation profiles: batch 1 (lowest latency) and 1..max_batch.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

import numpy as np

from .base import Engine, EngineError, TensorSpec

TIMING_CACHE = "tensorrt.timing-cache"


def _modules() -> tuple[ModuleType, ModuleType]:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise EngineError(
            "TensorRT is not installed: install the GPU extra (pip install 'lipstream[tensorrt]') on a machine "
            "with an NVIDIA GPU and driver, or use --engine onnxruntime"
        ) from err
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as err:
        raise EngineError("cuda-python is not installed: pip install 'lipstream[tensorrt]'") from err
    count = _check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count < 1:
        raise EngineError("no NVIDIA GPU is visible to CUDA; TensorRT needs one (use --engine onnxruntime)")
    return trt, cudart


def _check(cudart: ModuleType, result: tuple, what: str) -> object:
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA call {what} failed: {error}")
    return values[0] if len(values) == 1 else tuple(values)


def available() -> bool:
    try:
        _modules()
    except EngineError:
        return False
    return True


def gpu_name() -> str:
    _, cudart = _modules()
    props = _check(cudart, cudart.cudaGetDeviceProperties(0), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 ")


def engine_path(folder: Path, graph: str, fp16: bool, model_checksum: str) -> Path:
    trt, _ = _modules()
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name()).strip("-")
    precision = "fp16" if fp16 else "fp32"
    return folder / f"{graph}.{precision}.trt{trt.__version__}.{gpu}.{model_checksum[:16]}.engine"


def build_engine(onnx_path: Path, out: Path, max_batch: int) -> Path:
    """Parses the ONNX graph (external weights included) into a strongly typed network and writes the engine."""
    trt, _ = _modules()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    cache_file = out.parent / TIMING_CACHE
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for low, opt, high in ((1, 1, 1), (1, max_batch, max_batch)):
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (low, *shape), (opt, *shape), (high, *shape))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT failed to build an engine from {onnx_path.name}; see its log above")
    out.write_bytes(bytes(serialized))
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))
    return out


class TensorRTEngine(Engine):
    """Runs with execute_async_v3 on its own CUDA stream. Device buffers are allocated once for the
    largest batch and reused; with `cuda_graphs`, each batch size's launch is captured once and replayed."""

    kind = "tensorrt"

    def __init__(self, path: Path, graph: str, model_id: str, max_batch: int, cuda_graphs: bool = True) -> None:
        trt, cudart = _modules()
        self._trt, self._cudart = trt, cudart
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise EngineError(f"{path} is not a TensorRT engine for this TensorRT and GPU; rebuild it")
        self._stream = _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
        # One context per optimisation profile: 0 = batch 1, 1 = batch 1..max_batch.
        self._contexts = []
        for index in range(self._engine.num_optimization_profiles):
            context = self._engine.create_execution_context()
            context.set_optimization_profile_async(index, self._stream)
            self._contexts.append(context)
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        shape = {n: tuple(self._engine.get_tensor_shape(n))[1:] for n in names}
        inputs = [TensorSpec(n, shape[n]) for n in names if is_input[n]]
        outputs = [TensorSpec(n, shape[n]) for n in names if not is_input[n]]
        super().__init__(graph, model_id, inputs, outputs, max_batch)
        self._buffers = {
            n: _check(cudart, cudart.cudaMalloc(4 * max_batch * int(np.prod(shape[n]))), "cudaMalloc") for n in names
        }
        for context in self._contexts:
            for n in names:
                context.set_tensor_address(n, int(self._buffers[n]))
        self._cuda_graphs = cuda_graphs
        self._graphs: dict[int, object] = {}

    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        cudart = self._cudart
        copy_in, copy_out = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        context = self._contexts[0 if batch == 1 else -1]
        for spec in self.inputs:
            context.set_input_shape(spec.name, (batch, *spec.shape))
            array = feed[spec.name]
            _check(
                cudart,
                cudart.cudaMemcpyAsync(
                    self._buffers[spec.name], array.ctypes.data, array.nbytes, copy_in, self._stream
                ),
                "cudaMemcpyAsync",
            )
        self._launch(context, batch)
        results = {}
        for spec in self.outputs:
            out = np.empty((batch, *spec.shape), np.float32)
            _check(
                cudart,
                cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[spec.name], out.nbytes, copy_out, self._stream),
                "cudaMemcpyAsync",
            )
            results[spec.name] = out
        _check(cudart, cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return results

    def _launch(self, context: object, batch: int) -> None:
        cudart = self._cudart
        if not self._cuda_graphs:
            if not context.execute_async_v3(self._stream):
                raise EngineError("TensorRT execute_async_v3 failed")
            return
        if batch not in self._graphs:
            context.execute_async_v3(self._stream)  # first run outside capture settles lazy allocations
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            _check(cudart, cudart.cudaStreamBeginCapture(self._stream, mode), "cudaStreamBeginCapture")
            context.execute_async_v3(self._stream)
            graph = _check(cudart, cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            self._graphs[batch] = _check(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        _check(cudart, cudart.cudaGraphLaunch(self._graphs[batch], self._stream), "cudaGraphLaunch")

    def close(self) -> None:
        for pointer in getattr(self, "_buffers", {}).values():
            self._cudart.cudaFree(pointer)
        self._buffers = {}
        super().close()
