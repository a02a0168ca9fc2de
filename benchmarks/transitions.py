"""`lipstream bench transitions`: how much the mouth jumps when speech starts and ends.

Silence, then speech, then silence go through the real-time pipeline (`render`'s session, scheduler,
engine and compositor), once with the blend ramps (the default) and once without. For each it reports
the largest frame-to-frame change of the lips box at a transition against the median change between
two speech frames (`benchmarks.motion.transition_report`; 1 would mean nothing pops). JSON under
benchmarks/results/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from lipstream.realtime.clock import MonotonicClock
from lipstream.realtime.runtime import Runtime
from lipstream.realtime.session import BLEND_IN_FRAMES, BLEND_OUT_FRAMES, AvatarSession, FramePlan, OutputFrame

from .motion import mouth_box, transition_report
from .report import git_commit, machine_info, output_stem, write_json

SILENCE_S = 1.0


async def play(
    runtime: Runtime, audio: np.ndarray, blend_frames: tuple[int, int], plans: list[FramePlan] | None = None
) -> list[OutputFrame]:
    """Every frame of `audio` (16 kHz, pushed at once) and 8 after it, ticked as fast as they come;
    `plans`, when given, receives the plan behind each frame."""
    session = AvatarSession(
        "transitions", runtime.assets, queue_frames=len(audio) // 640 + 32, blend_frames=blend_frames
    )
    if plans is not None:
        planned = session.plan

        def recording() -> FramePlan:
            plans.append(planned())
            return plans[-1]

        session.plan = recording
    scheduler = runtime.scheduler(MonotonicClock())
    scheduler.add(session)
    session.push_audio(audio)
    session.end_of_input()
    frames = []
    for _ in range(len(audio) // 640 + 8):
        await scheduler.tick()
        frames.append(await session.next_frame())
    return frames


def run_transitions_bench(runtime: Runtime, speech: np.ndarray, out_dir: Path = Path("benchmarks/results")) -> dict:
    silence = np.zeros(round(SILENCE_S * 16_000), np.float32)
    audio = np.concatenate([silence, speech, silence]).astype(np.float32)
    box = mouth_box(runtime.assets)
    results = {}
    for label, ramps in (("blended", (BLEND_IN_FRAMES, BLEND_OUT_FRAMES)), ("abrupt", (1, 1))):
        frames = asyncio.run(play(runtime, audio, ramps))
        report = transition_report([f.image for f in frames], [f.kind for f in frames], box)
        results[label] = {"blend_frames": list(ramps)} | report
    payload = {
        "benchmark": "transitions",
        "machine": machine_info(),
        "commit": git_commit(),
        "avatar": runtime.assets.avatar.name,
        "model_id": runtime.engine.model_id,
        "results": results,
    }
    stem = output_stem(out_dir, "transitions")
    write_json(stem.with_suffix(".json"), payload)
    payload["files"] = [str(stem.with_suffix(".json"))]
    return payload
