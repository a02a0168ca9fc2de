"""Joins short clips of one speaker into one template video, to prepare and personalise an avatar on.

GRID's clips last 3 s each; StyleSync personalises on about a minute of the speaker's own video. This
writes the clips one after another (H.264 + AAC, the first clip's frame size and rate), so that
`lipstream prepare` and `lipstream personalize` can take them like any recording.

    python -m lipstream.training.template OUT.mp4 CLIP.mp4 [CLIP.mp4 ...]
    python -m lipstream.training.template OUT.mp4 --grid ../shared/data/grid_s1 --split train --seconds 60
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lipstream.dsp import to_s16
from lipstream.realtime.audio_in import SAMPLE_RATE, read_audio_file


def join_clips(sources: list[Path], out: Path, crf: int = 16) -> float:
    """Writes `sources` back to back into `out` (H.264 at constant quality `crf`); returns its length in seconds."""
    if not sources:
        raise ValueError("join_clips needs at least one clip")
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = 0
    with av.open(str(out), "w") as output:
        video = audio = None
        rate = None
        for source in sources:
            with av.open(str(source)) as clip:
                if not clip.streams.video or not clip.streams.audio:
                    raise ValueError(f"{source}: a template clip needs both video and audio")
                if video is None:
                    rate = Fraction(clip.streams.video[0].average_rate or 25).limit_denominator(1000)
                    first = clip.streams.video[0].codec_context
                    video = output.add_stream("libx264", rate=rate)
                    video.width, video.height, video.pix_fmt = first.width, first.height, "yuv420p"
                    video.options = {"crf": str(crf), "preset": "fast"}
                    audio = output.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
                images = [f.to_ndarray(format="rgb24") for f in clip.decode(video=0)]
            # Each clip's audio is cut or padded to its video, so that the two never drift apart.
            pcm = read_audio_file(str(source))
            wanted = round(len(images) * SAMPLE_RATE / rate)
            pcm = np.pad(pcm[:wanted], (0, max(0, wanted - len(pcm))))
            for image in images:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = frames
                frame.time_base = 1 / rate
                output.mux(video.encode(frame))
                frames += 1
            chunk = av.AudioFrame.from_ndarray(to_s16(pcm)[None], format="s16", layout="mono")
            chunk.sample_rate = SAMPLE_RATE
            output.mux(audio.encode(chunk))
        output.mux(video.encode())
        output.mux(audio.encode())
    return float(frames / rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipstream.training.template", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("clips", nargs="*", type=Path)
    parser.add_argument("--grid", type=Path, help="a GRID speaker folder (video/ and splits.json)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--seconds", type=float, default=60.0, help="with --grid: about this much, in split order")
    parser.add_argument("--crf", type=int, default=16, help="H.264 constant quality (lower: better, larger)")
    args = parser.parse_args(argv)
    clips = list(args.clips)
    if args.grid:
        from .dataset import grid_sources

        clips += [s.path for s in grid_sources(args.grid) if s.split == args.split][: max(1, round(args.seconds / 3))]
    if not clips:
        parser.error("give clips, or --grid FOLDER")
    seconds = join_clips(clips, args.out, args.crf)
    print(f"wrote {args.out}: {len(clips)} clips, {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
