"""The hd path of video avatars: the template's own mouths lend their fine detail (avatars/detail.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lipstream.avatars.align import warp_to_crop
from lipstream.avatars.detail import DetailBank, box, build_bank, split_detail


def test_the_detail_is_what_a_1x_crop_cannot_hold() -> None:
    rng = np.random.default_rng(0)
    mouth = rng.integers(0, 256, (84, 128, 3)).astype(np.uint8)
    small, detail = split_detail(mouth)
    assert small.shape == (42, 64, 3) and detail.shape == mouth.shape
    smooth = cv2.resize(small, (128, 84), interpolation=cv2.INTER_LINEAR).round().astype(np.uint8)  # nothing above 1x
    assert np.abs(split_detail(smooth)[1]).mean() < 0.25 * np.abs(detail).mean()


def test_a_generated_mouth_like_a_template_mouth_gets_that_mouths_detail(shared_data: Path) -> None:
    """Frames of a real clip as the bank: a region equal to one frame's 1x crop finds that frame and
    comes back 2x with its real detail, far closer to the real 2x crop than the bilinear enlargement."""
    from lipstream.avatars.align import frame_to_crop, smooth_transforms
    from lipstream.avatars.prepare import track_face
    from lipstream.avatars.source import iter_frames, probe

    info = probe(shared_data / "talking" / "hdtf_RD_Radio10_short.mp4")
    frames = list(iter_frames(info, 25, 30))
    transforms = smooth_transforms(frame_to_crop(track_face(info, 30, False)[0], 128), 2.0)
    detail, keys = build_bank(lambda i: frames[i], transforms, 128)
    bank = DetailBank(detail, keys)
    assert len(keys) == 30 and detail.dtype == np.int8
    picked = 17
    large = warp_to_crop(frames[picked], transforms[picked] * 2, 256, sharp=True)[128:].astype(np.float32)
    mouth = split_detail(large)[0]  # what the generator would draw at best: the mouth at 1x
    rows, cols = box(64, 128)
    assert bank.nearest(mouth[rows, cols]) == (picked, pytest.approx(1.0))
    detail, (x, y) = bank.lend(mouth, np.ones((64, 128), np.float32))
    assert (x, y) == (2 * cols.start, 2 * rows.start) and detail.shape == (84, 128, 3)
    plain = cv2.resize(mouth, (256, 128), interpolation=cv2.INTER_LINEAR)[y : y + 84, x : x + 128]
    real = large[y : y + 84, x : x + 128]
    inner = (slice(10, -10), slice(16, -16))  # past the feather
    assert np.abs(plain + detail - real)[inner].mean() < 0.5 * np.abs(plain - real)[inner].mean()
    assert bank.lend(mouth, np.zeros((64, 128), np.float32))[0].max() == 0, "an unchanged mouth borrows nothing"


def test_a_video_avatar_speaks_with_sharper_lips(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large face in a video takes the hd path without any upsampler weights; a generated mouth gets
    borrowed detail, its lips sharper in the frame than the same mouth without the bank."""
    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import prepare_avatar
    from lipstream.realtime.compositor import AvatarAssets

    monkeypatch.setenv("LIPSTREAM_UPSAMPLER", str(tmp_path / "missing.pt"))
    clip = shared_data / "talking" / "hdtf_RD_Radio10_short.mp4"
    result = prepare_avatar(clip, "radio", root=tmp_path, max_seconds=2.0, show_progress=False)
    hd = result.manifest.extra["hd"]
    assert hd["enabled"] and hd["method"] == "detail" and hd["bank_frames"] == 50, hd
    assets = AvatarAssets(Avatar.load(result.path))
    assert assets.hd_active and assets.upsampler is None
    index = 7
    other = np.asarray(assets.crops[40])  # another moment's mouth, as the generator could draw it at 1x
    region = other[64:].astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
    lent = assets.composite(index, region)
    assets.detail = None
    plain = assets.composite(index, region)
    lips = np.asarray(assets.avatar.array("landmarks.npy"))[index][[61, 291, 0, 17]]
    (x0, y0), (x1, y1) = lips.min(axis=0).astype(int), lips.max(axis=0).astype(int)

    def sharpness(image: np.ndarray) -> float:
        return float(cv2.Laplacian(cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())

    assert sharpness(lent) > 1.3 * sharpness(plain)
    assert np.abs(lent.astype(int) - plain).max(axis=2)[: y0 - 30].max() == 0, "nothing changes above the mouth"
