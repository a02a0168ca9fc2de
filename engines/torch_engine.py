"""The PyTorch reference behind the engine interface (CPU, or CUDA when present)."""

from __future__ import annotations

import numpy as np
import torch

from lipstream.export.graphs import graph_module, input_names, input_shapes, output_names, output_shapes
from lipstream.models.stylesync import StyleSync

from .base import Engine, TensorSpec


class TorchEngine(Engine):
    kind = "torch"

    def __init__(
        self, model: StyleSync, model_id: str, graph: str, device: str | None = None, max_batch: int = 64
    ) -> None:
        cfg = model.cfg
        inputs = [TensorSpec(n, tuple(s)) for n, s in input_shapes(graph, cfg).items()]
        outputs = [TensorSpec(n, tuple(s)) for n, s in output_shapes(graph, cfg).items()]
        super().__init__(graph, model_id, inputs, outputs, max_batch)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.module = graph_module(graph, model).to(self.device).eval()
        self._input_names, self._output_names = input_names(graph, cfg), output_names(graph, cfg)

    @torch.inference_mode()
    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        tensors = [torch.from_numpy(feed[n]).to(self.device) for n in self._input_names]
        if self.graph == "frame":  # the face maps go in as one tuple, after the other inputs
            plain = len(tensors) - self.module.model.cfg.num_layers
            result = self.module(*tensors[:plain], tuple(tensors[plain:]))
        else:
            result = self.module(*tensors)
        return {n: t.float().cpu().numpy() for n, t in zip(self._output_names, result, strict=True)}
