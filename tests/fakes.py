"""Small real objects standing in for an avatar and a model, so that the session and the scheduler can
be driven frame by frame on a FakeClock (no WebRTC, no ONNX, no waiting)."""

from __future__ import annotations

import threading

import numpy as np

from lipstream.engines.base import Engine, TensorSpec

ROWS, SIZE, LAYERS, W_DIM = 2, 4, 2, 3


class FakeAssets:
    """What AvatarSession and FrameScheduler use of AvatarAssets. Images are 2 x 2 pixels whose value
    says what was shown: 0 a template frame, else 1 + round(100 * blend) for a generated one."""

    upsampler = None  # no hd path
    hd_features = None
    motion_gain = 1.0

    def __init__(self, frames: int = 4) -> None:
        self.loop = np.arange(frames)

    def features(self, index: int) -> dict[str, np.ndarray]:
        return {"f_f": np.full(2, index, np.float32), "delta_w": np.zeros((LAYERS, W_DIM), np.float32)}

    def template(self, index: int) -> np.ndarray:
        return np.zeros((2, 2, 3), np.uint8)

    def composite(self, index: int, region: np.ndarray, blend: float = 1.0) -> np.ndarray:
        assert region.shape == (3, ROWS, SIZE)
        return np.full((2, 2, 3), 1 + round(100 * blend), np.uint8)


def shown(image: np.ndarray) -> float | None:
    """The blend a FakeAssets image shows (None: the template)."""
    value = int(image[0, 0, 0])
    return None if value == 0 else (value - 1) / 100


class StubEngine(Engine):
    """The frame graph's contract with a trivial body. `fail` makes every run raise; `hold` makes runs
    wait until it is set (an engine that overruns its budget)."""

    kind = "stub"

    def __init__(self, max_batch: int = 8) -> None:
        inputs = [
            TensorSpec("mel", (1, 80, 16)),
            TensorSpec("f_f", (2,)),
            TensorSpec("delta_w", (LAYERS, W_DIM)),
            TensorSpec("ws_prev", (LAYERS, W_DIM)),
            TensorSpec("smoothing", (1,)),
            TensorSpec("motion_gain", (1,)),
        ]
        outputs = [TensorSpec("region", (3, ROWS, SIZE)), TensorSpec("ws", (LAYERS, W_DIM))]
        super().__init__("frame", "stub", inputs, outputs, max_batch)
        self.batches: list[int] = []
        self.gains: list[list[float]] = []  # each call's motion_gain per sample
        self.fail = False
        self.hold: threading.Event | None = None

    def _run(self, feed: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        if self.hold is not None:
            self.hold.wait(timeout=10)
        if self.fail:
            raise RuntimeError("the stub engine was told to fail")
        self.batches.append(batch)
        self.gains.append(feed["motion_gain"][:, 0].tolist())
        return {"region": np.zeros((batch, 3, ROWS, SIZE), np.float32), "ws": feed["ws_prev"]}
