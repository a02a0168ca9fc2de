"""Run by tests/test_agents.py with the agents' Python, only where a LiveKit server is given
(LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET): the avatar worker joins a room, an agent participant
streams speech to it with livekit-agents' own DataStreamAudioOutput (lk.audio_stream) and subscribes to
the avatar's video; playback finished comes back by RPC (lk.playback_finished). Prints one JSON object."""

from __future__ import annotations

import asyncio
import os
import secrets

from lipstream_agents.livekit import run_avatar_worker
from livekit import api, rtc
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit_runner import tts_chunks
from stand_in import run


def token(identity: str, room: str) -> str:
    grants = api.VideoGrants(room_join=True, room=room)
    access = api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
    return access.with_identity(identity).with_grants(grants).to_jwt()


async def scenario(server: str, speech: str, interrupt_after: float | None) -> dict:
    assert interrupt_after is None, "not in a room test"
    url, name = os.environ["LIVEKIT_URL"], f"lipstream-{secrets.token_hex(4)}"
    avatar_room, agent_room = rtc.Room(), rtc.Room()
    await avatar_room.connect(url, token("avatar", name))
    worker = asyncio.create_task(run_avatar_worker(avatar_room, server, sender="agent"))
    await agent_room.connect(url, token("agent", name))
    video_frames = 0

    async def watch(track: rtc.Track) -> None:
        nonlocal video_frames
        async for _ in rtc.VideoStream(track):
            video_frames += 1

    watchers: list[asyncio.Task] = []
    agent_room.on(
        "track_subscribed",
        lambda track, *_: (
            watchers.append(asyncio.create_task(watch(track))) if track.kind == rtc.TrackKind.KIND_VIDEO else None
        ),
    )
    output = DataStreamAudioOutput(
        agent_room, destination_identity="avatar", wait_remote_track=rtc.TrackKind.KIND_VIDEO
    )
    finished: list[dict] = []
    output.on(
        "playback_finished",
        lambda event: finished.append({"position": event.playback_position, "interrupted": event.interrupted}),
    )
    frames, seconds = tts_chunks(speech)
    for frame in frames:
        await output.capture_frame(frame)
    output.flush()
    await asyncio.sleep(seconds + 3.0)
    for task in [worker, *watchers]:
        task.cancel()
    await agent_room.disconnect()
    await avatar_room.disconnect()
    return {"sent_seconds": seconds, "video_frames": video_frames, "playback_finished": finished}


if __name__ == "__main__":
    run(scenario)
