"""Face landmarks (mediapipe's face mesh, 478 points, its models ship in the wheel) and tracking of
the one main face through a video."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SourceError

NUM_LANDMARKS = 478
MAX_GAP_FRAMES = 25  # a face missing for longer than 1 s is an error, not something to interpolate
SIMILAR_SIZE = 0.8  # a second face at least this fraction of the main face's width is ambiguous


def face_width(points: np.ndarray) -> float:
    """Horizontal extent of one face's landmarks [478, 2], pixels."""
    return float(points[:, 0].max() - points[:, 0].min())


@dataclass
class Track:
    """The main face through all frames."""

    landmarks: np.ndarray  # [N, 478, 2] float32 pixel coordinates; missing frames interpolated
    detected: np.ndarray  # [N] bool, False where the landmarks were interpolated

    @property
    def interpolated(self) -> int:
        return int((~self.detected).sum())


class FaceTracker:
    """Feed frames in order with `add`, then `finish` for the track. Raises SourceError on a frame
    with several faces of similar size (when choosing the main face), or when no face is found."""

    def __init__(self, still_image: bool = False) -> None:
        import mediapipe as mp  # heavy import, only needed while preparing avatars

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=still_image, max_num_faces=4, refine_landmarks=True, min_detection_confidence=0.5
        )
        self._points: list[np.ndarray | None] = []
        self._centre: np.ndarray | None = None
        self._width = 0.0

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, rgb: np.ndarray) -> None:
        """rgb: [H, W, 3] uint8."""
        height, width = rgb.shape[:2]
        result = self._mesh.process(rgb)
        faces = [
            np.array([(p.x * width, p.y * height) for p in face.landmark], np.float32)
            for face in (result.multi_face_landmarks or [])
        ]
        self._points.append(self._choose(faces, len(self._points)))

    def _choose(self, faces: list[np.ndarray], index: int) -> np.ndarray | None:
        if not faces:
            return None
        if self._centre is None:
            faces.sort(key=face_width, reverse=True)
            if len(faces) > 1 and face_width(faces[1]) >= SIMILAR_SIZE * face_width(faces[0]):
                raise SourceError(
                    f"frame {index}: {len(faces)} faces of similar size (widths "
                    f"{face_width(faces[0]):.0f} and {face_width(faces[1]):.0f} px), so the presenter is "
                    "ambiguous; crop or trim the source so that one face is clearly the largest"
                )
            chosen = faces[0]
        else:
            chosen = min(faces, key=lambda f: float(np.linalg.norm(f.mean(axis=0) - self._centre)))
            if np.linalg.norm(chosen.mean(axis=0) - self._centre) > 0.5 * self._width:
                return None  # the main face is not among these; another person's face is
        self._centre, self._width = chosen.mean(axis=0), face_width(chosen)
        return chosen

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
