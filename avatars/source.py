"""Reading a template: any video PyAV decodes (converted to 25 fps, audio kept) or a still image."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from .errors import SourceError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class SourceInfo:
    path: Path
    kind: str  # "video" or "image"
    width: int
    height: int
    fps: float  # of the source; 0 for an image
    has_audio: bool


def _open(path: Path) -> av.container.InputContainer:
    if not path.is_file():
        raise SourceError(f"{path}: no such file; give the path of a video or an image")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty; give a video or an image with content")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: not a video or image that FFmpeg can read ({err})") from err


def probe(path: str | Path) -> SourceInfo:
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(path)
        return SourceInfo(path, "image", image.shape[1], image.shape[0], 0.0, False)
    with _open(path) as container:
        if not container.streams.video:
            raise SourceError(f"{path}: has no video stream; give a video of the presenter or a photo")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        return SourceInfo(path, "video", stream.width, stream.height, fps, bool(container.streams.audio))


def read_image(path: Path) -> np.ndarray:
    """[H, W, 3] uint8 RGB."""
    if not path.is_file() or path.stat().st_size == 0:
        raise SourceError(f"{path}: missing or empty; give a photo (PNG or JPEG)")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise SourceError(f"{path}: not an image OpenCV can read; convert it to PNG or JPEG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def iter_frames(info: SourceInfo, fps: int, max_frames: int) -> Iterator[np.ndarray]:
    """Frames at `fps` as [H, W, 3] uint8 RGB, at most `max_frames`; an image gives one frame.

    Output frame k shows the source frame nearest to time k / fps, so any source rate converts
    (frames are repeated or dropped) without holding more than two decoded frames.
    """
    if info.kind == "image":
        yield read_image(info.path)
        return
    emitted = 0
    previous: tuple[float, np.ndarray] | None = None
    with _open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = None
        try:
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                start = frame.time if start is None else start
                t = frame.time - start
                if previous is not None:
                    # Every output time before the midpoint of the two source frames shows the older one.
                    while emitted < max_frames and emitted / fps < (previous[0] + t) / 2:
                        yield previous[1]
                        emitted += 1
                if emitted >= max_frames:
                    return
                previous = (t, frame.to_ndarray(format="rgb24"))
        except av.error.FFmpegError as err:
            if previous is None:
                raise SourceError(f"{info.path}: could not decode the video ({err})") from err
        if previous is None:
            raise SourceError(f"{info.path}: the video has no frames")
        source_step = 1.0 / info.fps if info.fps else 1.0 / fps
        while emitted < max_frames and emitted / fps < previous[0] + source_step / 2:
            yield previous[1]
            emitted += 1


def read_audio(info: SourceInfo, sample_rate: int, num_samples: int) -> np.ndarray:
    """The source's audio as [num_samples] float32 mono (silence for an image or a silent video)."""
    out = np.zeros(num_samples, np.float32)
    if not info.has_audio:
        return out
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks, total = [], 0
    with _open(info.path) as container:
        for frame in container.decode(container.streams.audio[0]):
            for resampled in resampler.resample(frame):
                chunk = resampled.to_ndarray().reshape(-1)
                chunks.append(chunk)
                total += chunk.size
            if total >= num_samples:
                break
    audio = np.concatenate(chunks)[:num_samples] if chunks else out
    out[: audio.size] = audio
    return out
