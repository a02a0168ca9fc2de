"""One interface for every runtime: named float32 arrays in, named float32 arrays out, batch first."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


class EngineError(RuntimeError):
    """An engine that cannot be built or loaded here; the message says what is missing."""


class EngineInputError(ValueError):
    """A feed that does not match the engine's inputs."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # without the batch axis


class Engine(ABC):
    """A compiled graph ("frame" or "face_encoder") of one model, identified by `model_id`."""

    kind: str = "engine"
    variant: str | None = None  # how it runs the graph, where it has variants (ONNX Runtime's levels)
    variant_choice: dict | None = None  # what the start-up choice among them measured (engines/variants.py)

    def __init__(
        self, graph: str, model_id: str, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch: int
    ) -> None:
        self.graph, self.model_id = graph, model_id
        self.inputs, self.outputs, self.max_batch = inputs, outputs, max_batch
        self.closed = False
        # One call at a time: the scheduler's worker runs every tick's batch, and an avatar loading on
        # another thread renders its rest regions through the same engine (TensorRT's buffers, bound
        # once, and a CUDA graph per batch size cannot serve two calls at once).
        self._lock = threading.Lock()

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """feed: every input by name, [B, ...] float32 with one B. Returns every output by name."""
        if self.closed:
            raise EngineError(f"{self.kind} {self.graph} engine was closed")
        batch = self._batch(feed)
        checked = {spec.name: self._checked(spec, feed) for spec in self.inputs}
        with self._lock:
            return self._run(checked, batch)

    @abstractmethod
    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]: ...

    def close(self) -> None:
        """Frees what the runtime holds (subclasses extend this); the engine refuses to run afterwards."""
        self.closed = True

    def _batch(self, feed: Mapping[str, np.ndarray]) -> int:
        missing = [s.name for s in self.inputs if s.name not in feed]
        if missing:
            raise EngineInputError(f"{self.kind} {self.graph}: missing inputs {missing}; expected {self.input_names}")
        batches = {np.shape(feed[s.name])[0] if np.ndim(feed[s.name]) else 0 for s in self.inputs}
        if len(batches) != 1 or not 1 <= (batch := batches.pop()) <= self.max_batch:
            raise EngineInputError(
                f"{self.kind} {self.graph}: every input needs the same batch size, 1 to {self.max_batch}; got "
                + ", ".join(f"{s.name}={np.shape(feed[s.name])}" for s in self.inputs)
            )
        return batch

    def _checked(self, spec: TensorSpec, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        array = np.ascontiguousarray(feed[spec.name], dtype=np.float32)
        if array.shape[1:] != spec.shape:
            raise EngineInputError(
                f"{self.kind} {self.graph}: input {spec.name} has shape {array.shape}, expected [B, "
                f"{', '.join(map(str, spec.shape))}]"
            )
        return array

    @property
    def label(self) -> str:
        """The engine's kind, and its variant where it has them: "onnxruntime (basic)"."""
        return f"{self.kind} ({self.variant})" if self.variant else self.kind

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]
