"""The mouth's fine detail from the avatar's own video: the hd path without a learned upsampler.

The generator draws the mouth at the profile's crop (128 px); a face of 200 px or more in the source
holds detail that no 128-px image carries (lip lines, the edges of teeth), and the generated mouth is
blurred even below that. Every video avatar has seconds of its own real mouth, so at prepare time a
bank of its frames is kept: for each, the lips box at 2x the crop, split into what a 1x crop shows and
the rest (the detail), and a small descriptor of the 1x mouth. Per generated frame, the real frame
whose mouth looks most like the generated one lends its detail, which the compositor draws into the
frame at the 2x scale where the generated mouth departs from the template frame (example-based
super-resolution, Freeman, Jones and Pasztor, 2002; here with the exemplars taken from the same
person). The generated shape and colour stay; only the fine texture is borrowed.

Files (in the avatar's `features/`): detail.npy [N, 2H, 2W, 3] int8, the detail of N bank frames in
the lips box at 2x; detail_keys.npy [N, D] float32, their unit-norm descriptors.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .align import warp_to_crop

if TYPE_CHECKING:
    from .avatar import Avatar

BANK_FRAMES = 1024  # at most, spread evenly over the template
MIN_FRAMES = 25  # a template shorter than a second (a photo) shows too few mouths to borrow from
DETAIL_FILE, KEYS_FILE = "features/detail.npy", "features/detail_keys.npy"
# The lips box in the generated region (the crop's lower half), as fractions of the region's rows and
# the crop's columns: it holds both lips and the teeth at any opening, with skin around them.
BOX_ROWS = (0.09, 0.75)
BOX_COLS = (0.25, 0.75)
KEY_SIZE = (24, 12)  # (width, height) of the luma thumbnail a descriptor is made of
# The detail's weight fades out over this fraction of the box's size at its edges.
FEATHER = 0.2
# Below this cosine similarity between descriptors the bank has no mouth like the generated one, and
# the detail fades out (none at MIN_SIMILARITY, all of it at FULL_SIMILARITY).
MIN_SIMILARITY, FULL_SIMILARITY = 0.80, 0.95


def box(rows: int, cols: int, scale: int = 1) -> tuple[slice, slice]:
    """The lips box in a region of `rows` x `cols` at 1x, scaled by `scale`."""
    r0, r1 = round(BOX_ROWS[0] * rows), round(BOX_ROWS[1] * rows)
    c0, c1 = round(BOX_COLS[0] * cols), round(BOX_COLS[1] * cols)
    return slice(r0 * scale, r1 * scale), slice(c0 * scale, c1 * scale)


def descriptor(mouth: np.ndarray) -> np.ndarray:
    """The lips box at 1x [h, w, 3] (uint8 or float 0..255) -> unit-norm luma thumbnail [D] float32,
    blind to brightness and contrast (the generated mouth is colour-matched only later)."""
    grey = cv2.cvtColor(np.asarray(mouth, np.float32), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(grey, KEY_SIZE, interpolation=cv2.INTER_AREA).ravel()
    small -= small.mean()
    return small / max(float(np.linalg.norm(small)), 1e-6)


def split_detail(mouth_2x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lips box at 2x [2h, 2w, 3] uint8 -> (the same box as a 1x crop shows it [h, w, 3] float32,
    the detail the 1x crop cannot hold [2h, 2w, 3] float32: the box minus its 1x image enlarged)."""
    image = mouth_2x.astype(np.float32)
    height, width = image.shape[:2]
    small = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return small, image - cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def build_bank(
    frame_at: Callable[[int], np.ndarray], transforms: np.ndarray, crop_size: int, count: int = BANK_FRAMES
) -> tuple[np.ndarray, np.ndarray]:
    """The bank of an avatar: frame_at(i) gives template frame i [H, W, 3] uint8, transforms [N, 2, 3]
    its frame -> crop transforms at 1x. Returns (detail [K, 2h, 2w, 3] int8, keys [K, D] float32)."""
    picks = np.unique(np.linspace(0, len(transforms) - 1, min(count, len(transforms))).round().astype(int))
    rows_box, cols_box = box(crop_size // 2, crop_size, 2)
    details, keys = [], []
    for index in picks:
        crop = warp_to_crop(frame_at(int(index)), transforms[index] * 2, crop_size * 2, sharp=True)
        small, detail = split_detail(crop[crop_size:][rows_box, cols_box])
        details.append(np.clip(np.round(detail), -127, 127).astype(np.int8))
        keys.append(descriptor(small))
    return np.stack(details), np.stack(keys)


def feather(height: int, width: int) -> np.ndarray:
    """The detail's weight over the box [height, width, 1]: 1 inside, a cosine fade at the edges."""

    def ramp(n: int) -> np.ndarray:
        edge = max(1, round(FEATHER * n))
        t = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / edge
        return np.where(t >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(t, 0, 1)))

    return (ramp(height)[:, None] * ramp(width)[None, :])[..., None].astype(np.float32)


def write_bank(folder: Path, frame_at: Callable[[int], np.ndarray], transforms: np.ndarray, crop_size: int) -> int:
    """Builds an avatar's bank into its (partial) folder; returns how many frames it holds."""
    detail, keys = build_bank(frame_at, transforms, crop_size)
    np.save(folder / DETAIL_FILE, detail)
    np.save(folder / KEYS_FILE, keys)
    return len(keys)


class DetailBank:
    """An avatar's bank at run time: `lend` gives a generated mouth the detail of the most similar real one."""

    def __init__(self, detail: np.ndarray, keys: np.ndarray) -> None:
        if detail.ndim != 4 or keys.ndim != 2 or len(detail) != len(keys) or len(keys) == 0:
            got = f"{detail.shape} and {keys.shape}"
            raise ValueError(f"a detail bank needs detail [N, h, w, 3] and keys [N, D] of the same N > 0; got {got}")
        self.detail = detail
        self.keys = np.ascontiguousarray(keys, np.float32)
        self.weight = feather(*detail.shape[1:3])

    @classmethod
    def of(cls, avatar: Avatar) -> DetailBank:
        """The bank an avatar was prepared with."""
        return cls(np.asarray(avatar.array(DETAIL_FILE)), np.asarray(avatar.array(KEYS_FILE)))

    def nearest(self, mouth: np.ndarray) -> tuple[int, float]:
        """The bank frame whose 1x lips box is most like `mouth` [h, w, 3], and the cosine similarity."""
        similarity = self.keys @ descriptor(mouth)
        best = int(np.argmax(similarity))
        return best, float(similarity[best])

    def lend(self, mouth: np.ndarray, changed: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The detail for a generated region: mouth [R, W, 3] (0..255, as composited at 1x), changed
        [R, W] in [0, 1] (where it departs from the template frame, whose own detail stays elsewhere).
        Returns (the bank's nearest mouth's detail, weighted [2h, 2w, 3] float32, the (x, y) of its top
        left in the region at 2x), or None when the bank has no mouth like it."""
        rows, cols = mouth.shape[:2]
        rows_1x, cols_1x = box(rows, cols)
        best, similarity = self.nearest(mouth[rows_1x, cols_1x])
        strength = float(np.clip((similarity - MIN_SIMILARITY) / (FULL_SIMILARITY - MIN_SIMILARITY), 0.0, 1.0))
        if strength <= 0:
            return None
        where = cv2.resize(np.ascontiguousarray(changed[rows_1x, cols_1x], np.float32), self.detail.shape[2:0:-1])
        detail = self.detail[best].astype(np.float32) * (self.weight * where[..., None] * strength)
        return detail, (2 * cols_1x.start, 2 * rows_1x.start)
