"""Alignment: a similarity transform from a frame to the profile's canonical face crop, its
smoothing over time, the crop itself, and pasting a crop back with a feathered mask.

Geometry is in units of d, the distance between the eye centres, measured on mediapipe landmarks of
real talking-head clips. The crop is a square of side 3.4 d with the eye line at 0.33 of its height:
forehead to below the chin (with room for the jaw to open) and cheek to cheek fit inside, and the
bottom half of the crop runs from the nose tip to below the chin.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from .options import REFERENCE_PERCENTILE

CROP_SIDE_D = 3.4  # crop side, in eye distances
EYE_LINE = 0.33  # height of the eye line, as a fraction of the crop side

# Points that do not move when the mouth does (eye corners and the nose bridge), with their mean
# position in d units relative to the midpoint of the eyes; the alignment is fitted to these.
STABLE_POINTS = {33: (-0.73, -0.02), 133: (-0.27, 0.02), 362: (0.27, 0.02), 263: (0.73, -0.02), 168: (0.0, -0.06)}
LEFT_EYE, RIGHT_EYE = (33, 133), (362, 263)
LIP_TOP, LIP_BOTTOM = 13, 14


def to_crop_units(points_d: np.ndarray, size: int) -> np.ndarray:
    """Canonical positions [K, 2] in d units -> pixel positions in a crop of side `size`."""
    unit = size / CROP_SIDE_D
    return np.stack([size / 2 + points_d[:, 0] * unit, EYE_LINE * size + points_d[:, 1] * unit], axis=1)


def eye_distance(landmarks: np.ndarray) -> np.ndarray:
    """Eye-centre distance of landmarks [..., 478, 2], pixels. Returns [...]."""
    left = landmarks[..., LEFT_EYE, :].mean(axis=-2)
    right = landmarks[..., RIGHT_EYE, :].mean(axis=-2)
    return np.linalg.norm(right - left, axis=-1)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking src [K, 2] to dst [K, 2]. [2, 3]"""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    denom = (s**2).sum()
    a = (s * d).sum() / denom  # s cos(theta)
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / denom  # s sin(theta)
    rot = np.array([[a, -b], [b, a]])
    return np.concatenate([rot, (dst_mean - rot @ src_mean)[:, None]], axis=1)


def frame_to_crop(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Per-frame transforms from the frame to the canonical crop. landmarks [N, 478, 2] -> [N, 2, 3]."""
    index = list(STABLE_POINTS)
    target = to_crop_units(np.array(list(STABLE_POINTS.values())), size)
    return np.stack([fit_similarity(points[index].astype(np.float64), target) for points in landmarks])


def smooth_transforms(transforms: np.ndarray, sigma: float) -> np.ndarray:
    """Zero-phase Gaussian smoothing over time of similarity transforms [N, 2, 3] (sigma in frames).

    Similarities [[a, -b, tx], [b, a, ty]] form a linear space, so a weighted mean of them is one too.
    """
    if sigma <= 0 or len(transforms) < 2:
        return transforms.copy()
    return gaussian_filter1d(transforms, sigma, axis=0, mode="nearest")


def invert(transform: np.ndarray) -> np.ndarray:
    """Inverse of an affine transform [2, 3]."""
    return cv2.invertAffineTransform(transform)


def crop_centres(transforms: np.ndarray, size: int) -> np.ndarray:
    """Where the crop's centre falls in each frame, pixels. [N, 2, 3] -> [N, 2]"""
    centre = np.array([size / 2, size / 2, 1.0])
    return np.stack([invert(t) @ centre for t in transforms])


def centre_jitter(transforms: np.ndarray, size: int) -> dict[str, float]:
    """How much the crop centre moves, in source pixels.

    speed: mean movement between consecutive frames (px/frame), real head motion included.
    shake: mean size of the second difference (px/frame^2): frame-to-frame changes of direction, which
    real head motion at 25 fps hardly has and detector noise mostly is.
    """
    centres = crop_centres(transforms, size)
    if len(centres) < 3:
        return {"speed": 0.0, "shake": 0.0}
    return {
        "speed": float(np.linalg.norm(np.diff(centres, axis=0), axis=1).mean()),
        "shake": float(np.linalg.norm(np.diff(centres, n=2, axis=0), axis=1).mean()),
    }


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """points [..., 2] through an affine [2, 3]."""
    return points @ transform[:, :2].T + transform[:, 2]


# Crops that keep the frame's detail (`sharp`): bicubic, and area averaging first only for reductions
# below this scale. Measured on GRID s4 (a 0.7x reduction to the 2x crop and back into the frame), the
# lips keep 0.73 of their Laplacian variance this way, 0.30 with area averaging and bilinear.
SHARP_AREA_SCALE = 0.5


def warp_to_crop(frame: np.ndarray, transform: np.ndarray, size: int, sharp: bool = False) -> np.ndarray:
    """The canonical crop [size, size, 3] uint8 of frame [H, W, 3] uint8.

    When the face is larger than the crop, the frame is first shrunk with area averaging, so that
    the crop is not aliased (the networks' inputs). `sharp` keeps more detail for the hd path: bicubic,
    and area averaging only below SHARP_AREA_SCALE, where aliasing would show.
    """
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    if scale < (SHARP_AREA_SCALE if sharp else 0.9):
        frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        transform = transform.copy()
        transform[:, :2] /= scale
    flags = cv2.INTER_CUBIC if sharp else cv2.INTER_LINEAR
    return cv2.warpAffine(frame, transform, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE)


def region_to_crop(crop: np.ndarray, region: np.ndarray) -> np.ndarray:
    """The crop [S, S, 3] uint8 with its bottom rows replaced by a generated region [3, rows, S] in [-1, 1].
    Returns [S, S, 3] float32 in 0..255."""
    canvas = crop.astype(np.float32)
    rows = region.shape[1]
    canvas[-rows:] = ((np.clip(region, -1, 1) + 1) * 127.5).transpose(1, 2, 0)
    return canvas


# The band of the paste weight where the generated region must look like the skin it is laid over.
MATCH_BAND = (0.05, 0.9)
MATCH_SIGMA = 0.12  # smoothness of the colour correction, as a fraction of the crop side


def match_colour(canvas: np.ndarray, template_crop: np.ndarray, weight: np.ndarray, rows: int) -> np.ndarray:
    """The generated bottom `rows` of `canvas` shifted in colour and brightness to the template crop.

    canvas: [S, S, 3] float 0..255 (the template crop with a generated region); template_crop:
    [S, S, 3]; weight: the paste weight [S, S] in [0, 1]. The offset is measured where the paste
    fades in (MATCH_BAND of the weight: cheeks, jaw, the skin under the seam) and spread smoothly
    over the region (normalised Gaussian averaging), so a generator that renders the skin a little
    darker or tinted leaves no seam, while the mouth's own shading is kept. Returns a new canvas.
    """
    size = canvas.shape[0]
    top = size - rows
    band = ((weight[top:] > MATCH_BAND[0]) & (weight[top:] < MATCH_BAND[1])).astype(np.float32)
    if band.sum() < 1:
        return canvas
    diff = template_crop[top:].astype(np.float32) - canvas[top:]  # [rows, S, 3]
    mean = (diff * band[..., None]).sum(axis=(0, 1)) / band.sum()  # [3]
    # The field is smooth, so it is worked out on a grid 4x coarser (a tenth of the time) and scaled up.
    coarse = (max(1, size // 4), max(1, rows // 4))
    sigma = MATCH_SIGMA * size / 4
    prior = 0.05  # pulls the correction towards the mean offset far from the band

    def smooth(image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, coarse, interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)

    spread, support = smooth(diff * band[..., None]), smooth(band)[..., None]
    field = cv2.resize((spread + prior * mean) / (support + prior), (size, rows), interpolation=cv2.INTER_LINEAR)
    out = canvas.copy()
    out[top:] = np.clip(canvas[top:] + field, 0.0, 255.0)
    return out


DETAIL_FADE = 24.0  # grey levels of change over which the template's fine detail fades out
# How far from a changed pixel the template's detail still fades, as a fraction of the crop side: an
# edge of the old lips just beside the new mouth must not show through as a thin bright line.
DETAIL_REACH = 0.015


def paste_back(
    frame: np.ndarray,
    crop: np.ndarray,
    transform: np.ndarray,
    mask: np.ndarray,
    template_crop: np.ndarray | None = None,
    sharp: bool = False,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a crop into its frame through the inverse transform.

    frame: [H, W, 3] uint8; crop: [S, S, 3] uint8 or float in 0..255; transform: frame -> crop [2, 3];
    mask: [S, S] float in [0, 1], the crop's weight (feathered). Only the face's bounding box is
    touched. Returns a new frame [H, W, 3] uint8.

    template_crop: the crop the frame itself gives ([S, S, 3]). When the face is larger than the crop,
    the crop cannot carry the frame's finest detail (skin, stubble); with the template crop the paste
    keeps that detail, frame - upsampled(template crop), wherever the new crop stays close to the
    template, and fades it out where the new crop differs by DETAIL_FADE grey levels or more, or does
    within DETAIL_REACH of the crop side (an opened mouth must not show the old lips' outline). An
    unchanged crop then gives the frame back exactly. Without it, the upsampled crop replaces the frame under the mask.

    sharp: bicubic instead of bilinear, for a crop that carries detail at the frame's own scale (the hd
    path): about 3x the warps' cost, and bilinear would blur what the crop adds.
    keep: detail_keep(crop, template_crop), when the caller has worked it out already.
    """
    size = crop.shape[0]
    out = frame.copy()
    # Only where the mask weighs anything (and the pixel around it that bilinear sampling reaches).
    left, top, cols, rows = cv2.boundingRect((np.asarray(mask) > 0).astype(np.uint8))
    if cols == 0 or rows == 0:
        return out
    left, top, right, bottom = max(left - 1, 0), max(top - 1, 0), min(left + cols + 1, size), min(top + rows + 1, size)
    found = frame_box(transform, (left, top, right, bottom), frame.shape)
    if found is None:
        return out
    (x0, y0, x1, y1), box = found
    interpolation = cv2.INTER_CUBIC if sharp else cv2.INTER_LINEAR

    def warp(image: np.ndarray) -> np.ndarray:
        return cv2.warpAffine(image, box, (x1 - x0, y1 - y0), flags=interpolation)

    region = out[y0:y1, x0:x1].astype(np.float32)
    # Four channels per warp (the crop with its weight, the template crop with its detail keep): one
    # interpolation pass each, the same result as warping every image on its own.
    pasted_weight = warp(cv2.merge([np.asarray(crop, np.float32), np.asarray(mask, np.float32)]))
    pasted, weight = pasted_weight[..., :3], np.clip(pasted_weight[..., 3:], 0.0, 1.0)
    if template_crop is not None:
        keep = detail_keep(crop, template_crop) if keep is None else keep
        base_keep = warp(cv2.merge([np.asarray(template_crop, np.float32), keep]))
        pasted = pasted + base_keep[..., 3:] * (region - base_keep[..., :3])
    out[y0:y1, x0:x1] = np.clip(region + weight * (pasted - region) + 0.5, 0, 255).astype(np.uint8)
    return out


def detail_keep(crop: np.ndarray, template_crop: np.ndarray) -> np.ndarray:
    """Where paste_back keeps the frame's own fine detail under a new crop: 1 where the crop equals the
    template crop, fading to 0 at DETAIL_FADE grey levels of change or within DETAIL_REACH of it. [S, S]"""
    size = crop.shape[0]
    # Measured on the crop (cheap), spread to the neighbourhood.
    change = np.abs(np.asarray(crop, np.float32) - np.asarray(template_crop, np.float32)).mean(axis=2)
    reach = 2 * max(1, round(DETAIL_REACH * size)) + 1
    change = cv2.dilate(change, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (reach, reach)))
    return np.clip(1.0 - change / DETAIL_FADE, 0.0, 1.0)


def frame_box(
    transform: np.ndarray, rect: tuple[int, int, int, int], shape: tuple[int, ...]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The frame's pixels that the crop's rectangle (left, top, right, bottom) covers, clipped to a frame
    of `shape`, as (x0, y0, x1, y1), and the affine [2, 3] from that box's own pixels to the crop's
    (what cv2.warpAffine takes to warp the crop into the box); None when it falls outside the frame."""
    left, top, right, bottom = rect
    back = invert(transform)
    corners = transform_points(np.array([[left, top], [right, top], [left, bottom], [right, bottom]], np.float64), back)
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    box = back.copy()
    box[:, 2] -= (x0, y0)  # into the box's own coordinates
    return (x0, y0, x1, y1), box


def add_detail(frame: np.ndarray, detail: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """frame [H, W, 3] uint8 plus `detail` [h, w, 3] float (signed grey levels) drawn where `transform`
    (frame -> the detail's pixels) puts it, bicubic. Returns a new frame."""
    out = frame.copy()
    found = frame_box(transform, (0, 0, detail.shape[1], detail.shape[0]), frame.shape)
    if found is None:
        return out
    (x0, y0, x1, y1), box = found
    warped = cv2.warpAffine(np.asarray(detail, np.float32), box, (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC)
    out[y0:y1, x0:x1] = np.clip(out[y0:y1, x0:x1] + warped + 0.5, 0, 255).astype(np.uint8)
    return out


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over eye distance, per frame. [N, 478, 2] -> [N]"""
    gap = np.linalg.norm(landmarks[:, LIP_TOP] - landmarks[:, LIP_BOTTOM], axis=-1)
    return gap / np.maximum(eye_distance(landmarks), 1e-6)


def choose_reference(landmarks: np.ndarray, percentile: float = REFERENCE_PERCENTILE) -> int:
    """The frame used as the reference for every template frame: the one whose mouth opening is
    nearest the clip's `percentile`, so the generator sees the teeth and the inside of the mouth
    as this person shows them while talking. One reference for all frames keeps that appearance steady.
    """
    opening = mouth_opening(landmarks)
    return int(np.argmin(np.abs(opening - np.percentile(opening, percentile))))
