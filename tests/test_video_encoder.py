"""The VP8 encoder the server's senders use (realtime/video_encoder.py), on real video frames."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc.codecs import get_capabilities
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

from lipstream.realtime import video_encoder

CLIP = Path(__file__).resolve().parents[1].parent / "shared/data/grid_s4_hq/video"


@pytest.fixture(scope="module")
def frames() -> list[av.VideoFrame]:
    clips = sorted(CLIP.glob("*.mp4"))
    if not clips:
        pytest.skip(f"no GRID s4 clips under {CLIP}")
    with av.open(str(clips[0])) as container:
        images = [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)][:60]
    return images


def luma_psnr(
    encoder: Vp8Encoder, images: list[np.ndarray], settle: int = 10, decoder: av.CodecContext | None = None
) -> float:
    """Encodes the frames through aiortc's packetiser, decodes the depayloaded frames, and gives the mean
    luma PSNR against the input after the first `settle` (the key frame and the rate control's start)."""
    decoder = decoder or av.CodecContext.create("libvpx", "r")  # one per stream: frames after the first refer back
    height = images[0].shape[0] * 2 // 3
    scores = []
    for number, planes in enumerate(images):
        picture = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        picture.pts, picture.time_base = number * 3600, Fraction(1, 90_000)
        payloads, _ = encoder.encode(picture)
        data = b"".join(vp8_depayload(p) for p in payloads)
        for decoded in decoder.decode(av.Packet(data)):
            luma = decoded.to_ndarray(format="yuv420p")[:height].astype(np.float64)
            scores.append(10 * np.log10(255**2 / np.mean((luma - planes[:height]) ** 2)))
    assert len(scores) == len(images), "every frame decodes"
    return float(np.mean(scores[settle:]))


def test_the_avatar_encoder_keeps_more_of_the_picture_than_aiortcs_denoising_one(frames: list[np.ndarray]) -> None:
    ours, theirs = video_encoder.AvatarVp8Encoder(), Vp8Encoder()
    ours_db, theirs_db = luma_psnr(ours, frames), luma_psnr(theirs, frames)
    # Measured 42.0 against 40.2 dB at 1 Mb/s on these clips (benchmarks/vp8_settings.py).
    assert ours_db > theirs_db + 0.5, f"{ours_db:.2f} dB against aiortc's {theirs_db:.2f}"


def test_a_rate_change_from_congestion_control_reopens_it_with_the_same_settings(
    frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = []
    real_open = video_encoder.open_vp8
    monkeypatch.setattr(video_encoder, "open_vp8", lambda *args: opened.append(args) or real_open(*args))
    encoder, decoder = video_encoder.AvatarVp8Encoder(), av.CodecContext.create("libvpx", "r")
    luma_psnr(encoder, frames[:12], decoder=decoder)
    first = encoder.codec
    encoder.target_bitrate = int(first.bit_rate * 1.05)  # within aiortc's 10 %: kept
    luma_psnr(encoder, frames[12:24], settle=0, decoder=decoder)
    assert encoder.codec is first
    encoder.target_bitrate = first.bit_rate * 2
    assert luma_psnr(encoder, frames[24:], decoder=decoder) > 30
    assert encoder.codec is not first and encoder.codec.bit_rate == encoder.target_bitrate
    width, height = frames[0].shape[1], frames[0].shape[0] * 2 // 3
    assert opened == [(width, height, first.bit_rate), (width, height, first.bit_rate * 2)]


def test_install_gives_vp8_senders_the_avatar_encoder_and_leaves_other_codecs() -> None:
    assert video_encoder.install() and video_encoder.install()  # idempotent
    assert video_encoder.installed()
    codecs = {c.mimeType.lower(): c for kind in ("audio", "video") for c in get_capabilities(kind).codecs}
    assert isinstance(aiortc.rtcrtpsender.get_encoder(codecs["video/vp8"]), video_encoder.AvatarVp8Encoder)
    opus = aiortc.rtcrtpsender.get_encoder(codecs["audio/opus"])
    assert not isinstance(opus, Vp8Encoder)
