"""Lower-face masks in crop coordinates: StyleSync's fixed U shape, and a pose-aware U that follows the
head (StyleLipSync), plus the feathered mask used to paste the generated region back.

Masks are [S, S] float32 with 1 where the lower face is erased. The pose-aware mask is the U shape
moved by an affine fitted to landmarks that do not move with the mouth (eyes, nose, cheek sides):
it turns and tilts with the head, but its outline never depends on how open the mouth is, which
would tell the generator the answer.
"""

from __future__ import annotations

import cv2
import numpy as np

from .align import CROP_SIDE_D, to_crop_units, transform_points
from .options import MASK_KINDS

# U geometry in eye distances d (see align.py): the top edge runs under the nose, the sides reach the
# cheeks, the bottom is below the chin with room for the jaw to drop.
U_TOP_D = 0.78
U_HALF_WIDTH_D = 1.15
U_BOTTOM_D = 2.28

# Landmarks steady while talking, with their mean positions in d units (eye corners, nose bridge, nose
# tip, the face's sides at eye level).
POSE_POINTS = {
    33: (-0.73, -0.02),
    133: (-0.27, 0.02),
    362: (0.27, 0.02),
    263: (0.73, -0.02),
    168: (0.0, -0.06),
    1: (0.0, 0.68),
    234: (-1.19, 0.30),
    454: (1.17, 0.30),
}


def ushape_mask(size: int) -> np.ndarray:
    """The fixed U: the bottom half of an ellipse hanging from a line under the nose. [S, S]"""
    unit = size / CROP_SIDE_D
    top = to_crop_units(np.array([[0.0, U_TOP_D]]), size)[0, 1]
    bottom = to_crop_units(np.array([[0.0, U_BOTTOM_D]]), size)[0, 1]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    inside = ((x - size / 2) / (U_HALF_WIDTH_D * unit)) ** 2 + ((y - top) / (bottom - top)) ** 2 <= 1.0
    return (inside & (y >= top)).astype(np.float32)


def pose_affine(crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    """Least-squares affine [2, 3] from the canonical pose points to where they are in this crop."""
    index = list(POSE_POINTS)
    canonical = to_crop_units(np.array(list(POSE_POINTS.values())), size)
    src = np.concatenate([canonical, np.ones((len(index), 1))], axis=1)  # [K, 3]
    solution, *_ = np.linalg.lstsq(src, crop_landmarks[index].astype(np.float64), rcond=None)  # [3, 2]
    return solution.T


def pose_mask(crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    """The U moved with the head. crop_landmarks: [478, 2] in crop pixels. [S, S]"""
    warped = cv2.warpAffine(ushape_mask(size), pose_affine(crop_landmarks, size), (size, size), flags=cv2.INTER_NEAREST)
    return warped.astype(np.float32)


def lower_face_mask(kind: str, crop_landmarks: np.ndarray, size: int) -> np.ndarray:
    if kind == "ushape":
        return ushape_mask(size)
    if kind == "pose":
        return pose_mask(crop_landmarks, size)
    raise ValueError(f"unknown mask kind {kind!r}; choose one of: {', '.join(MASK_KINDS)}")


def paste_mask(mask: np.ndarray, region_rows: int) -> np.ndarray:
    """Feathered paste weight [S, S] in [0, 1] for a lower-face mask [S, S].

    The mask is grown a little and blurred so the seam falls on unchanged skin, then faded to zero
    before the top of the generated region (the bottom `region_rows` rows) and the crop's edges.
    """
    size = mask.shape[0]
    grow = max(1, round(0.04 * size))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    weight = cv2.GaussianBlur(cv2.dilate(mask.astype(np.float32), kernel), (0, 0), sigmaX=0.03 * size)
    fade = max(2, round(0.05 * size))
    rows = np.arange(size, dtype=np.float32)
    top = size - region_rows
    vertical = np.clip((rows - top) / fade, 0, 1) * np.clip((size - 1 - rows) / fade, 0, 1)
    horizontal = np.clip(rows / fade, 0, 1) * np.clip((size - 1 - rows) / fade, 0, 1)
    return np.clip(weight * vertical[:, None] * horizontal[None, :], 0.0, 1.0).astype(np.float32)


def points_inside(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Whether each crop point [K, 2] lies on a masked pixel. [K] bool"""
    size = mask.shape[0]
    xy = np.clip(np.round(points - 0.5).astype(int), 0, size - 1)
    return mask[xy[:, 1], xy[:, 0]] > 0.5


def crop_landmarks(landmarks: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Frame landmarks [478, 2] -> crop coordinates."""
    return transform_points(landmarks.astype(np.float64), transform)
