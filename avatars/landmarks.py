"""Face landmarks (mediapipe's face mesh, 478 points, its models ship in the wheel) and tracking of
the one main face through a video."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SourceError

NUM_LANDMARKS = 478
MAX_GAP_FRAMES = 25  # a face missing for longer than 1 s is an error, not something to interpolate
SIMILAR_SIZE = 0.8  # a second face at least this fraction of the main face's size is ambiguous
# The 40 points of the face mesh's outer and inner lip contours (its FACEMESH_LIPS connections).
LIP_POINTS = (
    61,
    146,
    91,
    181,
    84,
    17,
    314,
    405,
    321,
    375,
    291,
    185,
    40,
    39,
    37,
    0,
    267,
    269,
    270,
    409,
    78,
    95,
    88,
    178,
    87,
    14,
    317,
    402,
    318,
    324,
    308,
    191,
    80,
    81,
    82,
    13,
    312,
    311,
    310,
    415,
)


@dataclass
class Track:
    """The main face through all frames."""

    landmarks: np.ndarray  # [N, 478, 2] float32 pixel coordinates; missing frames interpolated
    detected: np.ndarray  # [N] bool, False where the landmarks were interpolated

    @property
    def interpolated(self) -> int:
        return int((~self.detected).sum())


class FaceTracker:
    """Feed frames in order with `add`, then `finish` for the track.

    The full-range face detector finds the main face (up to about 5 m away, so a small face in a large
    portrait frame is found too); the face mesh then runs on a square region around it, which later
    frames take from the previous frame's landmarks. Detection runs again only when the mesh loses the
    face. Raises SourceError when the first frame with faces has several of similar size.
    """

    def __init__(self) -> None:
        import mediapipe as mp  # heavy import, only needed while preparing avatars

        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
        )
        self._points: list[np.ndarray | None] = []
        self._region: tuple[float, float, float] | None = None  # centre x, centre y, side of the search square

    def close(self) -> None:
        self._mesh.close()
        self._detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, rgb: np.ndarray) -> None:
        """rgb: [H, W, 3] uint8."""
        points = self._mesh_in(rgb, self._region) if self._region is not None else None
        if points is None:
            region = self._detect(rgb, len(self._points))
            points = self._mesh_in(rgb, region) if region is not None else None
        if points is not None:
            low, high = points.min(axis=0), points.max(axis=0)
            centre = (low + high) / 2
            self._region = (float(centre[0]), float(centre[1]), 1.8 * float((high - low).max()))
        self._points.append(points)

    def _detect(self, rgb: np.ndarray, index: int) -> tuple[float, float, float] | None:
        height, width = rgb.shape[:2]
        boxes = []
        for detection in self._detector.process(rgb).detections or []:
            box = detection.location_data.relative_bounding_box
            boxes.append(
                (
                    (box.xmin + box.width / 2) * width,
                    (box.ymin + box.height / 2) * height,
                    max(box.width * width, box.height * height),
                )
            )
        if not boxes:
            return None
        if self._region is None:
            boxes.sort(key=lambda b: b[2], reverse=True)
            if len(boxes) > 1 and boxes[1][2] >= SIMILAR_SIZE * boxes[0][2]:
                raise SourceError(
                    f"frame {index}: {len(boxes)} faces of similar size ({boxes[0][2]:.0f} and {boxes[1][2]:.0f} px "
                    "wide), so the presenter is ambiguous; crop or trim the source so that one face is clearly "
                    "the largest"
                )
            chosen = boxes[0]
        else:  # lost for a moment: take the face nearest to where the main face was, if it is near
            chosen = min(boxes, key=lambda b: np.hypot(b[0] - self._region[0], b[1] - self._region[1]))
            if np.hypot(chosen[0] - self._region[0], chosen[1] - self._region[1]) > self._region[2] / 2:
                return None
        return chosen[0], chosen[1], 2.2 * chosen[2]

    def _mesh_in(self, rgb: np.ndarray, region: tuple[float, float, float]) -> np.ndarray | None:
        height, width = rgb.shape[:2]
        cx, cy, side = region
        x0, y0 = max(int(cx - side / 2), 0), max(int(cy - side / 2), 0)
        x1, y1 = min(int(cx + side / 2), width), min(int(cy + side / 2), height)
        if x1 - x0 < 16 or y1 - y0 < 16:
            return None
        result = self._mesh.process(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
        if not result.multi_face_landmarks:
            return None
        landmarks = result.multi_face_landmarks[0].landmark
        return np.array([(x0 + p.x * (x1 - x0), y0 + p.y * (y1 - y0)) for p in landmarks], np.float32)

    def finish(self) -> Track:
        detected = np.array([p is not None for p in self._points])
        total = len(self._points)
        if not detected.any():
            raise SourceError(
                f"no face found in any of the {total} frames; the presenter's face must be visible, "
                "frontal or near-frontal, and not too small"
            )
        gap_start, longest = None, (0, 0)
        for i, found in enumerate([*detected, True]):
            if not found and gap_start is None:
                gap_start = i
            elif found and gap_start is not None:
                longest = max(longest, (i - gap_start, gap_start), key=lambda g: g[0])
                gap_start = None
        if longest[0] > MAX_GAP_FRAMES:
            length, first = longest
            raise SourceError(
                f"no face in frames {first}-{first + length - 1} ({length / 25:.1f} s); trim the source so the "
                "presenter's face is visible throughout"
            )
        known = np.flatnonzero(detected)
        stacked = np.stack([self._points[i] for i in known])  # [K, 478, 2]
        flat = stacked.reshape(len(known), -1)
        filled = np.stack([np.interp(np.arange(total), known, flat[:, j]) for j in range(flat.shape[1])], axis=1)
        return Track(landmarks=filled.reshape(total, NUM_LANDMARKS, 2).astype(np.float32), detected=detected)
