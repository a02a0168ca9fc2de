"""How far an avatar's mouth is from rest in received video: the benchmarks' and tests' measure.

A video codec moves every picture a little: quantisation and halved chroma blur fine detail, and each
key frame starts a still picture over at lower quality. With trained weights the mouth's own motion is
only a few grey levels more than that, so this measure looks where the mouth is (a box around the lips of
the avatar's landmarks, with room for the jaw to drop), at luma only, averaged over 6 x 6 pixel cells:
the codec's error mostly cancels inside a cell, an opening mouth does not.

Measured with the rt weights of step 8029 on the default avatar through aiortc's VP8 (espeak speech),
when idle frames were silent renderings and the measure's rest was one: idle frames 1.6 grey levels
from rest (at most 2.1 after a key frame), speech frames 3.5 (10th percentile), 6.4 (median), up to
10.5. Rest is now the template frame, which idle frames show untouched.
"""

from __future__ import annotations

import itertools

import av
import numpy as np

from lipstream.avatars.align import LEFT_EYE, RIGHT_EYE
from lipstream.avatars.landmarks import LIP_POINTS
from lipstream.realtime.compositor import AvatarAssets

CELL = 6
# Grey levels from the template frame, over the lips in 6 x 6 cells. Measured on the default avatar with
# the step-8029 weights: speech frames 22.6-33.9 from the template offline, idle frames up to 3.1 through
# aiortc's VP8 after a key frame.
SPEAKING = 4.0


def lips_box(landmarks: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns around the lips of one frame's landmarks [478, 2], whole cells only."""
    points = landmarks[list(LIP_POINTS)]
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    width, height = x1 - x0, y1 - y0
    top, left = int(y0 - 0.3 * height), int(x0 - 0.15 * width)
    rows = (int(y1 + 0.8 * height) - top) // CELL * CELL
    cols = (int(x1 + 0.15 * width) - left) // CELL * CELL
    return slice(max(top, 0), max(top, 0) + rows), slice(max(left, 0), max(left, 0) + cols)


def mouth_box(assets: AvatarAssets) -> tuple[slice, slice]:
    """The lips box of an avatar's first template frame."""
    return lips_box(np.asarray(assets.avatar.array("landmarks.npy")[0]))


def luma_cells(pixels: np.ndarray) -> np.ndarray:
    """Mean luma (BT.601 weights, 0..255) of each 6 x 6 cell of an RGB box [h, w, 3], or of a luma box
    [h, w] already, with h, w multiples of 6."""
    luma = pixels.astype(np.float32)
    if luma.ndim == 3:
        luma = luma @ np.array([0.299, 0.587, 0.114], np.float32)
    rows, cols = luma.shape[0] // CELL, luma.shape[1] // CELL
    return luma.reshape(rows, CELL, cols, CELL).mean(axis=(1, 3))


def mouth_change(image: np.ndarray, idle: np.ndarray, box: tuple[slice, slice]) -> float:
    """Mean cell difference between a received frame and the frame shown at rest, over the lips."""
    return float(np.abs(luma_cells(image[box]) - luma_cells(idle[box])).mean())


def frame_luma(frame: av.VideoFrame) -> np.ndarray:
    """A decoded yuv420p frame's luma at full range [H, W] float32, read off its Y plane: what luma_cells
    makes of the RGB picture, without converting the picture (the benchmark's clients share the
    server's cores, so they should cost little)."""
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    return (rows.astype(np.float32) - 16.0) * (255.0 / 219.0)


def eyes_box(landmarks: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns around the eyes of one frame's landmarks [478, 2] (never generated), whole cells."""
    left, right = landmarks[list(LEFT_EYE)].mean(axis=0), landmarks[list(RIGHT_EYE)].mean(axis=0)
    span = float(np.linalg.norm(right - left))
    x0, x1 = min(left[0], right[0]) - 0.4 * span, max(left[0], right[0]) + 0.4 * span
    y = (left[1] + right[1]) / 2
    top, cols, rows = max(int(y - 0.4 * span), 0), int(x1 - x0) // CELL * CELL, int(0.6 * span) // CELL * CELL
    return slice(top, top + rows), slice(max(int(x0), 0), max(int(x0), 0) + cols)


class IdleMouths:
    """The template frames an avatar shows at rest, to tell idle from speech in received video of a video
    avatar too. A received frame's template frame is found by its eyes (which the generator never
    touches), and its mouth is measured against that frame's (mouth_change). A photo has one frame."""

    def __init__(self, assets: AvatarAssets) -> None:
        landmarks = np.asarray(assets.avatar.array("landmarks.npy")[0])
        self.box, self.eyes = lips_box(landmarks), eyes_box(landmarks)
        shown = sorted({int(i) for i in assets.loop})
        templates = [assets.template(i) for i in shown]
        self.mouths = np.stack([luma_cells(t[self.box]) for t in templates])  # [F, rows, cols]
        self.keys = np.stack([luma_cells(t[self.eyes]) for t in templates])

    def change(self, image: np.ndarray) -> float:
        """Grey levels from the resting mouth of the template frame shown (see mouth_change). image: RGB
        [H, W, 3], or its luma [H, W] (frame_luma)."""
        shown = int(np.abs(self.keys - luma_cells(image[self.eyes])[None]).mean(axis=(1, 2)).argmin())
        return float(np.abs(self.mouths[shown] - luma_cells(image[self.box])).mean())


def lips_steps(images: list[np.ndarray], box: tuple[slice, slice]) -> np.ndarray:
    """Frame-to-frame change over the lips, in luma cells (mean absolute difference). [N - 1]"""
    cells = [luma_cells(image[box]) for image in images]
    return np.array([float(np.abs(b - a).mean()) for a, b in itertools.pairwise(cells)])


def transition_report(images: list[np.ndarray], kinds: list[str], box: tuple[slice, slice]) -> dict:
    """How much the lips jump when speech starts or ends, against how much they move inside speech.

    images: the frames as shown; kinds: each frame's OutputFrame.kind. A transition step is one
    between an idle frame and a non-idle one, or between a blend frame and anything; `ratio` is the
    largest such step over the median step between two speech frames (about 1: nothing pops).
    """
    steps = lips_steps(images, box)
    pairs = list(itertools.pairwise(kinds))
    transition = [
        s for s, (a, b) in zip(steps, pairs, strict=True) if (a == "idle") != (b == "idle") or "blend" in (a, b)
    ]
    speech = [s for s, (a, b) in zip(steps, pairs, strict=True) if a == b == "speech"]
    if not transition or not speech:
        return {"transitions": len(transition), "max_transition": None, "median_speech": None, "ratio": None}
    worst, typical = float(max(transition)), float(np.median(speech))
    return {"transitions": len(transition), "max_transition": worst, "median_speech": typical, "ratio": worst / typical}
