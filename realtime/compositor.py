"""What a running avatar needs in memory, and compositing a generated region onto its template frame.

`AvatarAssets` is loaded once per avatar and shared by every session showing it: the cached
face-encoder features (the engine's per-frame inputs), the paste transforms and masks, and decoded
template frames, kept in a bounded cache.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lipstream.avatars.align import add_detail, detail_keep, match_colour, paste_back, region_to_crop, warp_to_crop
from lipstream.avatars.avatar import Avatar, read_frame
from lipstream.avatars.detail import DetailBank
from lipstream.avatars.landmarks import LIP_POINTS
from lipstream.avatars.masks import crop_landmarks
from lipstream.avatars.options import HD_SCALE

if TYPE_CHECKING:
    from .upsampling import Upsampler

FRAME_CACHE_BYTES = 512 * 1024 * 1024
# Where the audio changes the generated region by this many grey levels (mean over RGB) from the region
# the same template frame gets in silence, the generated region is shown whole; where it changes it
# less, the template's own crop shows through in proportion, and where it changes nothing, the real
# frame is untouched. Within REST_REACH pixels (of the 128-px crop) of a change, and smoothed by
# REST_SIGMA, so that the mouth's surroundings follow it without a hard edge.
REST_FADE = 24.0
REST_REACH = 3
REST_SIGMA = 2.0
# The lips themselves (their hull in the template frame, grown by this many crop pixels and smoothed by
# REST_SIGMA) always come from the model: the template's lips showing through a nearly unchanged mouth
# damped its motion (opening correlation with the real mouth 0.27 -> 0.13 on nine unseen clips).
REST_LIPS_MARGIN = 3
# The model's lips are tinted (GRID s4's one-shot lips came out grey-blue: chroma Cr 16 and Cb -15 off
# the template's, steady over frames), so each frame's lips are shifted in chroma by what separates the
# template's lips from the model's in silence on that frame (luma, which shows the opening, is left).
# RGB change per unit of Cr and Cb (the inverse of ITU-R BT.601's YCrCb, as OpenCV's 8-bit conversion).
CHROMA_TO_RGB = np.array([[1.403, 0.0], [-0.714, -0.344], [0.0, 1.773]], np.float32)  # [RGB, (Cr, Cb)]
RGB_TO_CHROMA = np.array(
    [[0.713 * 0.701, -0.713 * 0.587, -0.713 * 0.114], [-0.564 * 0.299, -0.564 * 0.587, 0.564 * 0.886]], np.float32
)


def lips_weight(crop_points: np.ndarray, size: int) -> np.ndarray:
    """1 over the lips' hull (crop landmarks [478, 2] of a frame) grown by REST_LIPS_MARGIN, smoothed
    to 0 around it. [S, S] float32."""
    hull = cv2.convexHull(np.round(crop_points[list(LIP_POINTS)]).astype(np.int32))
    mask = np.zeros((size, size), np.float32)
    cv2.fillConvexPoly(mask, hull, 1.0)
    grow = 2 * REST_LIPS_MARGIN + 1
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow)))
    return cv2.GaussianBlur(mask, (0, 0), REST_SIGMA)


def lips_tint(canvas: np.ndarray, crop: np.ndarray, lips: np.ndarray) -> np.ndarray:
    """The RGB offset [3] that moves the generated lips of `canvas` ([rows, S, 3] float, the model's
    region in silence, colour-matched) to the chroma of the template crop's ([rows, S, 3]) over the lips
    weight `lips` [rows, S]: their mean (Cr, Cb) difference, turned into RGB with no change of luma."""
    total = float(lips.sum())
    if total < 1.0:
        return np.zeros(3, np.float32)
    diff = (crop.astype(np.float32) - canvas) * lips[..., None]
    chroma = RGB_TO_CHROMA @ (diff.sum(axis=(0, 1)) / total)
    return CHROMA_TO_RGB @ chroma


def rest_keep(region: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """How much of the template to keep under a generated region [3, rows, S] (in [-1, 1]), given the
    region its frame gets in silence (same shape, uint8 in 0..255 or float in [-1, 1]): 1 where the audio
    changed nothing, 0 where it changed the region by REST_FADE grey levels or more. [rows, S] float32.

    Why: on a face the model never saw, the generator misses what the reference cannot show it (a
    beard, stubble, skin texture, the light), in silence as much as in speech. What the audio changes
    is the mouth and what moves with it; everything else is better taken from the real frame."""
    rest = rest.astype(np.float32) / 127.5 - 1.0 if rest.dtype == np.uint8 else rest
    change = np.abs(np.asarray(region, np.float32) - rest).mean(axis=0) * 127.5
    change = cv2.dilate(change, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * REST_REACH + 1,) * 2))
    change = cv2.GaussianBlur(change, (0, 0), REST_SIGMA)
    return np.clip(1.0 - change / REST_FADE, 0.0, 1.0)


@dataclass(frozen=True)
class RestFrame:
    """One template frame's silent rendering, as rest keeping (rest_keep) uses it."""

    region: np.ndarray  # [3, rows, S] uint8: the region the model generates for the frame in silence
    lips: np.ndarray  # [rows, S] float32: lips_weight of the frame, kept out of rest keeping
    tint: np.ndarray  # [3] float32: lips_tint of the frame
    lips_box: tuple[slice, slice]  # where `lips` is not zero, in the region's rows


class AvatarAssets:
    def __init__(self, avatar: Avatar, cache_bytes: int = FRAME_CACHE_BYTES) -> None:
        self.avatar = avatar
        self.loop = np.asarray(avatar.array("idle_loop.npy"))
        self.transforms = np.asarray(avatar.array("transforms.npy"))
        self.crops = avatar.array("crops.npy")
        self.paste_masks = avatar.array("paste_masks.npy")
        self.f_f = np.asarray(avatar.array("features/f_f.npy"), np.float32)
        self.delta_w = np.asarray(avatar.array("features/delta_w.npy"), np.float32)
        self.delta_p = avatar.channel_shift()  # per avatar, not per frame
        # The avatar's own motion gain (its manifest's, e.g. the built-in default's), times the server's.
        self.motion_gain = float(avatar.manifest.extra.get("motion_gain", 1.0))
        self.maps = avatar.feature_maps()
        self.frame_size = avatar.manifest.frame_size  # (width, height)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes
        self._lock = Lock()  # compositing runs on worker threads
        self.upsampler: Upsampler | None = None  # the hd path of a photo, when weights exist
        self.hd_features: np.ndarray | None = None
        self.detail = DetailBank.of(avatar) if self.hd_method == "detail" else None  # a video's hd path
        # Template frame -> what rest keeping needs of it (RestFrame), for the frames speech is shown on
        # (the idle loop's); Runtime.with_rest renders them once per load.
        self.rest: dict[int, RestFrame] = {}

    def attach_rest(self, regions: dict[int, np.ndarray]) -> None:
        """Turns on rest keeping (rest_keep) with regions [3, rows, S] in [-1, 1] by template frame; the
        lips of each of those frames (lips_weight) are kept out of it."""
        landmarks = self.avatar.array("landmarks.npy")
        size = self.crops.shape[1]
        for index, region in regions.items():
            rows = region.shape[1]
            lips = lips_weight(crop_landmarks(np.asarray(landmarks[index]), self.transforms[index]), size)[-rows:]
            crop, weight = np.asarray(self.crops[index]), self.paste_masks[index].astype(np.float32) / 255.0
            canvas = match_colour(region_to_crop(crop, region), crop, weight, rows)
            ys, xs = np.nonzero(lips > 1e-3)
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if ys.size else (slice(0), slice(0))
            self.rest[index] = RestFrame(
                np.round((np.clip(region, -1, 1) + 1) * 127.5).astype(np.uint8),
                lips,
                lips_tint(canvas[-rows:], crop[-rows:], lips),
                box,
            )

    @property
    def hd(self) -> bool:
        """Whether the avatar was prepared for the hd path (its face is large enough to show detail)."""
        return bool(self.avatar.manifest.extra.get("hd", {}).get("enabled"))

    @property
    def hd_method(self) -> str | None:
        """How the hd path enlarges the mouth: "detail" (the template's own, avatars/detail.py) or
        "upsampler" (the learned one, models/upsampler.py); None without the hd path."""
        hd = self.avatar.manifest.extra.get("hd", {})
        return hd.get("method", "upsampler") if hd.get("enabled") else None

    @property
    def hd_active(self) -> bool:
        """Whether generated mouths take the hd path now (borrowed detail, or the upsampler)."""
        return self.detail is not None or self.upsampler is not None

    def attach_upsampler(self, upsampler: Upsampler) -> None:
        """Turns on the hd path: the reference face's features for the region upsampler, computed once."""
        index = self.avatar.manifest.reference_frame
        size = self.avatar.manifest.crop_size * HD_SCALE
        crop = warp_to_crop(self.template(index), self.hd_transform(index), size)
        self.hd_features = upsampler.reference_features(crop[size // 2 :])
        self.upsampler = upsampler

    def hd_transform(self, index: int) -> np.ndarray:
        """Frame -> crop at 2x: the crop's own transform, scaled."""
        return self.transforms[index] * HD_SCALE

    @property
    def model_id(self) -> str:
        return self.avatar.manifest.model_id

    def features(self, index: int) -> dict[str, np.ndarray]:
        """The frame graph's face inputs for template frame `index` (no batch axis)."""
        feed = {"f_f": self.f_f[index], "delta_w": self.delta_w[index], "delta_p": self.delta_p}
        for layer, maps in enumerate(self.maps):
            feed[f"maps_{layer:02d}"] = np.asarray(maps[index], np.float32)
        return feed

    def template(self, index: int) -> np.ndarray:
        return self._image(index)

    def composite(self, index: int, region: np.ndarray, blend: float = 1.0) -> np.ndarray:
        """A generated region [3, rows, S] in [-1, 1] pasted onto template frame `index`, colour-matched to
        it and feathered; `blend` in (0, 1] scales the paste weight (entering and leaving speech). [H, W, 3]

        With the frame's rest region attached, only what the audio changes is taken from the model: the
        template crop shows through wherever the region equals the one of silence (rest_keep), except
        on the frame's lips (lips_weight), which are always the model's: a generated region that the
        audio left unchanged gives the template frame back exactly around the mouth.

        The hd path: a video avatar's mouth gets the fine detail of its bank's nearest real mouth, drawn
        into the frame at the 2x crop's scale where the mouth departs from the template; a region the
        upsampler made 2x is composited at the 2x crop."""
        frame = self.template(index)
        crop = np.asarray(self.crops[index])
        weight = self.paste_masks[index].astype(np.float32) / 255.0
        transform = self.transforms[index]
        rows = region.shape[1]
        if region.shape[2] != crop.shape[1]:  # upsampled: the crop at the region's size
            size = region.shape[2]
            transform = transform * (size / crop.shape[1])
            crop = warp_to_crop(frame, transform, size, sharp=True)
            weight = cv2.resize(weight, (size, size), interpolation=cv2.INTER_LINEAR)
        canvas = match_colour(region_to_crop(crop, region), crop, weight, rows)
        upsampled = crop.shape[0] != self.crops.shape[1]
        rest = self.rest.get(index)
        if rest is not None and rest.region.shape == region.shape:  # not the upsampler's 2x region
            lips, box = rest.lips, rest.lips_box
            canvas[-rows:][box] += lips[box][..., None] * rest.tint
            kept = (rest_keep(region, rest.region) * (1.0 - lips))[..., None]
            canvas[-rows:] = kept * crop[-rows:] + (1.0 - kept) * canvas[-rows:]
        keep = detail_keep(canvas, crop)  # once: the paste and the lent detail both use it
        out = paste_back(frame, canvas, transform, weight * blend, crop, sharp=upsampled, keep=keep)
        if self.detail is None or upsampled:
            return out
        changed = (1.0 - keep[-rows:]) * weight[-rows:] * blend
        lent = self.detail.lend(canvas[-rows:], changed)
        if lent is None:
            return out
        detail, (x, y) = lent
        to_detail = transform * HD_SCALE
        to_detail[:, 2] -= (x, y + HD_SCALE * (crop.shape[0] - rows))
        return add_detail(out, detail, to_detail)

    def _image(self, index: int) -> np.ndarray:
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        image = read_frame(self.avatar.path, index)
        with self._lock:
            self._cache[index] = image
            self._cache_bytes += image.nbytes
            while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return image
