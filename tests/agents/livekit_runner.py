"""Run by tests/test_agents.py with the agents' Python: livekit-agents' own AvatarRunner, in-process as
local avatar plugins run it, with the agent session's QueueAudioOutput as its audio and
LipstreamVideoGenerator as its video. The one thing left out is publishing to a LiveKit room (there is
no LiveKit server here): the runner's frames go to its real AVSynchronizer and are counted there.
Prints the result as one JSON object."""

from __future__ import annotations

import asyncio

from lipstream_agents.livekit import LipstreamVideoGenerator
from livekit import rtc
from livekit.agents.voice.avatar import AvatarRunner, QueueAudioOutput
from stand_in import TTS_RATE, run, tts_pieces


def tts_chunks(path: str) -> tuple[list[rtc.AudioFrame], float]:
    """The recording as a TTS gives it to the agent session."""
    pieces, seconds = tts_pieces(path)
    return [rtc.AudioFrame(piece.tobytes(), TTS_RATE, 1, len(piece)) for piece in pieces], seconds


async def scenario(server: str, speech: str, interrupt_after: float | None) -> dict:
    frames, seconds = tts_chunks(speech)
    generator = LipstreamVideoGenerator(server)
    options = await generator.start()
    audio_out = QueueAudioOutput(sample_rate=TTS_RATE)
    finished: list[dict] = []
    started: list[float] = []
    audio_out.on("playback_started", lambda event: started.append(event.created_at))
    audio_out.on(
        "playback_finished",
        lambda event: finished.append({"position": event.playback_position, "interrupted": event.interrupted}),
    )
    runner = AvatarRunner(rtc.Room(), audio_recv=audio_out, video_gen=generator, options=options)
    runner._video_publication = True  # the test's seam: nothing to publish to without a LiveKit server
    pushed = {"video": 0, "audio_seconds": 0.0, "sizes": set(), "audio_rates": set()}
    push = runner.av_sync.push

    async def counting_push(frame: rtc.VideoFrame | rtc.AudioFrame, timestamp: float | None = None) -> None:
        if isinstance(frame, rtc.VideoFrame):
            pushed["video"] += 1
            pushed["sizes"].add((frame.width, frame.height))
        else:
            pushed["audio_seconds"] += frame.samples_per_channel / frame.sample_rate
            pushed["audio_rates"].add(frame.sample_rate)
        await push(frame, timestamp)

    runner.av_sync.push = counting_push
    await runner.start()
    for frame in frames:
        await audio_out.capture_frame(frame)
    if interrupt_after is None:
        audio_out.flush()
        await asyncio.sleep(seconds + 2.0)
    else:
        await asyncio.sleep(interrupt_after)
        audio_out.clear_buffer()
        await asyncio.sleep(2.0)
    await runner.aclose()
    await generator.aclose()
    return {
        "sent_seconds": seconds,
        "options": [options.video_width, options.video_height, options.video_fps, options.audio_sample_rate],
        "video_frames": pushed["video"],
        "sizes": sorted(pushed["sizes"]),
        "audio_seconds": round(pushed["audio_seconds"], 4),
        "audio_rates": sorted(pushed["audio_rates"]),
        "playback_started": len(started),
        "playback_finished": finished,
    }


if __name__ == "__main__":
    run(scenario)
