"""The hd path at run time: the region upsampler's two graphs on ONNX Runtime (models/upsampler.py).

The hd path of photo avatars (a video avatar's borrows its template's detail, avatars/detail.py). One
`Upsampler` per process, shared by the avatars that use it: `reference_features` runs once per avatar
when it is loaded, `run` once per tick over the batch's hd frames.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lipstream.engines.onnxruntime_engine import OnnxRuntimeEngine, cuda_available

logger = logging.getLogger("lipstream.realtime")


class Upsampler:
    def __init__(self, weights: str | Path | None = None, cuda: bool | None = None) -> None:
        from lipstream.export.upsampler_export import export_upsampler_onnx  # torch: only when hd is used

        export = export_upsampler_onnx(weights)
        cuda = cuda_available() if cuda is None else cuda
        self.id = export.upsampler_id
        self.region = OnnxRuntimeEngine(export.graph_path("upsampler_region"), "upsampler_region", self.id, cuda)
        self.reference = OnnxRuntimeEngine(
            export.graph_path("upsampler_reference"), "upsampler_reference", self.id, cuda
        )
        self.region.run({s.name: np.zeros((1, *s.shape), np.float32) for s in self.region.inputs})  # warm up
        logger.info("hd path: region upsampler %s on %s", self.id, self.region.kind)

    def reference_features(self, lower_face: np.ndarray) -> np.ndarray:
        """The reference face's lower half at 2x [2R, 2W, 3] uint8 -> features [C, R, W] float32."""
        image = lower_face.astype(np.float32).transpose(2, 0, 1)[None] / 127.5 - 1.0
        return self.reference.run({"reference": image})["reference_features"][0]

    def run(self, regions: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Generated regions [B, 3, R, W] in [-1, 1] and each one's avatar features -> [B, 3, 2R, 2W]."""
        out = []
        for start in range(0, len(regions), self.region.max_batch):
            feed = {
                "region": np.asarray(regions[start : start + self.region.max_batch], np.float32),
                "reference_features": np.asarray(features[start : start + self.region.max_batch], np.float32),
            }
            out.append(self.region.run(feed)["region_hd"])
        return np.concatenate(out)

    def close(self) -> None:
        self.region.close()
        self.reference.close()
