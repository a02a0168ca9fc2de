"""A contact sheet of one prepared frame, for a person to check an avatar at a glance:
the template frame with its crop outline, the crop with the mask over it, the untouched crop pasted
back, and the difference that paste makes (x10)."""

from __future__ import annotations

import cv2
import numpy as np

from .align import invert, paste_back, transform_points
from .avatar import Avatar, read_frame


def _tile(image: np.ndarray, height: int, label: str) -> np.ndarray:
    scale = height / image.shape[0]
    tile = cv2.resize(image, (round(image.shape[1] * scale), height), interpolation=cv2.INTER_AREA)
    cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def contact_sheet(avatar: Avatar, index: int = 0, height: int = 256) -> np.ndarray:
    """[height, W, 3] uint8 RGB."""
    frame = read_frame(avatar.path, index)
    transform = avatar.array("transforms.npy")[index]
    crop = np.array(avatar.array("crops.npy")[index])
    mask = avatar.array("masks.npy")[index].astype(np.float32)
    weight = avatar.array("paste_masks.npy")[index].astype(np.float32) / 255.0
    size = crop.shape[0]

    outlined = frame.copy()
    corners = transform_points(np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float64), invert(transform))
    cv2.polylines(outlined, [np.round(corners).astype(np.int32)], True, (0, 255, 0), max(1, frame.shape[0] // 256))
    for x, y in avatar.array("landmarks.npy")[index][::7]:
        cv2.circle(outlined, (round(float(x)), round(float(y))), 1, (255, 0, 0), -1)

    tint = 0.5 * mask[..., None]
    overlay = crop.astype(np.float32) * (1 - tint) + np.array([255.0, 0.0, 64.0]) * tint
    outline = cv2.morphologyEx((weight > 0.02).astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    overlay[outline > 0] = (255, 255, 0)

    pasted = paste_back(frame, crop, transform, weight)  # plain replace: shows the crop's own resolution
    difference = np.clip(np.abs(pasted.astype(np.int16) - frame.astype(np.int16)) * 10, 0, 255).astype(np.uint8)
    tiles = [
        _tile(outlined, height, f"frame {index}"),
        _tile(overlay.astype(np.uint8), height, "crop + mask"),
        _tile(pasted, height, "crop pasted back (replace)"),
        _tile(difference, height, "|difference| x10"),
    ]
    return np.concatenate(tiles, axis=1)
