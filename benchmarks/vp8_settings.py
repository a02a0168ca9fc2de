"""What libvpx's VP8 settings cost and give on real video: per setting (denoiser strength, speed), the
median milliseconds to encode a frame (on the threads aiortc gives a frame this size; one on 2 cores),
the bit rate reached and the luma PSNR of the decoded frames against the input, at each target rate.
With `--avatar`, also the PSNR inside that avatar's lips box, where a viewer looks. The server's
choice (realtime/video_encoder.py) rests on this.

python -m benchmarks.vp8_settings [--video FILE ...] [--avatar NAME] [--frames 150] [--rates 500000,1000000]
on a render: lipstream render default speech.wav -o r.mp4
             python -m benchmarks.vp8_settings --video r.mp4 --avatar default
"""

from __future__ import annotations

import argparse
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipstream.realtime import video_encoder

from .report import git_commit, machine_info, output_stem, write_json

DEFAULT_VIDEOS = sorted(Path("../shared/data/grid_s4_hq/video").glob("*.mp4"))[:2]
# (noise sensitivity, cpu-used): aiortc's own first, then the server's, then faster speeds
SETTINGS = ((4, -6), (0, -6), (0, -8), (0, -12), (0, -16))


def read_frames(paths: list[Path]) -> list[np.ndarray]:
    """Every frame of the videos as yuv420p planes stacked [H * 3 / 2, W]; all must share one size."""
    frames = []
    for path in paths:
        with av.open(str(path)) as container:
            frames += [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)]
    if not frames or len({f.shape for f in frames}) != 1:
        raise SystemExit(f"need frames of one size from {', '.join(map(str, paths))}")
    return frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * np.log10(255**2 / max(float(np.mean((a - b) ** 2)), 1e-10))


def measure(
    frames: list[np.ndarray],
    noise: int,
    cpu_used: int,
    bitrate: int,
    count: int,
    box: tuple[slice, slice] | None = None,
) -> dict:
    saved = video_encoder.NOISE_SENSITIVITY, video_encoder.CPU_USED
    video_encoder.NOISE_SENSITIVITY, video_encoder.CPU_USED = noise, cpu_used
    try:
        height, width = frames[0].shape[0] * 2 // 3, frames[0].shape[1]
        encoder = video_encoder.open_vp8(width, height, bitrate)
    finally:
        video_encoder.NOISE_SENSITIVITY, video_encoder.CPU_USED = saved
    decoder = av.CodecContext.create("libvpx", "r")
    seconds, whole, lips, size = [], [], [], 0
    for number in range(count):
        planes = frames[number % len(frames)]
        picture = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        picture.pts, picture.time_base = number, Fraction(1, 25)
        started = time.perf_counter()
        packets = encoder.encode(picture)
        seconds.append(time.perf_counter() - started)
        for packet in packets:
            size += packet.size
            for decoded in decoder.decode(packet):
                luma = decoded.to_ndarray(format="yuv420p")[:height].astype(np.float64)
                source = planes[:height].astype(np.float64)
                whole.append(psnr(luma, source))
                if box is not None:
                    lips.append(psnr(luma[box], source[box]))
    settle = min(10, count // 2)  # the key frame and the rate control's first frames
    row = {
        "noise_sensitivity": noise,
        "cpu_used": cpu_used,
        "target_bps": bitrate,
        "ms_per_frame": 1e3 * float(np.median(seconds[settle:])),
        "bps": 8 * size * 25 / count,
        "luma_psnr_db": float(np.mean(whole[settle:])),
    }
    if box is not None:
        row["lips_psnr_db"] = float(np.mean(lips[settle:]))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, action="append", help="video to encode (default: two GRID s4 clips)")
    parser.add_argument("--avatar", help="score the lips box of this avatar too (its frames' size)")
    parser.add_argument("--frames", type=int, default=150, help="frames encoded per setting (default 150)")
    parser.add_argument("--rates", default="500000,1000000", help="target bit rates, b/s (default 500000,1000000)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the fastest of each is kept")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    frames = read_frames(args.video or DEFAULT_VIDEOS)
    box = None
    if args.avatar:
        from lipstream.realtime.runtime import load_avatar

        from .motion import lips_box

        box = lips_box(np.asarray(load_avatar(args.avatar).array("landmarks.npy")[0]))
    best: dict[tuple, dict] = {}
    for _ in range(args.rounds):
        for rate in map(int, args.rates.split(",")):
            for noise, cpu_used in SETTINGS:
                row = measure(frames, noise, cpu_used, rate, args.frames, box)
                key = (noise, cpu_used, rate)
                if key not in best or row["ms_per_frame"] < best[key]["ms_per_frame"]:
                    best[key] = row
    rows = list(best.values())
    for row in rows:
        print(
            f"noise {row['noise_sensitivity']} cpu-used {row['cpu_used']:>3} at {row['target_bps'] / 1e3:.0f} kb/s: "
            f"{row['ms_per_frame']:.2f} ms a frame, {row['bps'] / 1e3:.0f} kb/s, luma PSNR {row['luma_psnr_db']:.2f} dB"
            + (f"; lips {row['lips_psnr_db']:.2f} dB" if box is not None else "")
        )
    stem = output_stem(args.out, "vp8-settings")
    write_json(
        stem.with_suffix(".json"),
        {
            "benchmark": "vp8_settings",
            "machine": machine_info(),
            "commit": git_commit(),
            "videos": [str(p) for p in args.video or DEFAULT_VIDEOS],
            "avatar": args.avatar,
            "frames": args.frames,
            "frame_size": [frames[0].shape[1], frames[0].shape[0] * 2 // 3],
            "rows": rows,
        },
    )
    print(stem.with_suffix(".json"))


if __name__ == "__main__":
    main()
