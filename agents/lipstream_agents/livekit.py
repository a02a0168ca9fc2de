"""LiveKit Agents: the avatar drawn by a running `lipstream serve`.

- `LipstreamVideoGenerator`: a `VideoGenerator` for livekit-agents' `AvatarRunner`. The runner gives it
  the agent's speech (`rtc.AudioFrame`s, and `AudioSegmentEnd` when an utterance ends) and calls
  `clear_buffer()` on an interruption; it yields what the server plays, 25 `rtc.VideoFrame`s a second
  (RGB24) and, with the frames that speak, their audio (48 kHz mono `rtc.AudioFrame`s), and
  `AudioSegmentEnd` when an utterance has played, which the runner reports as playback finished.
- `run_avatar_worker(room, server)`: the avatar worker of LiveKit's avatar protocol, in a room it has
  joined. livekit-agents' own `DataStreamAudioReceiver` reads `lk.audio_stream`, answers
  `lk.clear_buffer` and sends `lk.playback_started` / `lk.playback_finished {playback_position,
  interrupted}`; `AvatarRunner` publishes the tracks. For the in-process mode that local avatar plugins
  use, hand the runner a `QueueAudioOutput` (the agent session's audio output) instead.

Against a server, not in-process, for the reason given in pipecat.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    DataStreamAudioReceiver,
    VideoGenerator,
)

from .client import FPS, PLAYBACK_RATE, AvatarConnection, AvatarFrame


class LipstreamVideoGenerator(VideoGenerator):
    def __init__(
        self, server: str, *, avatar: str | None = None, token: str | None = None, picture: str = "jpeg"
    ) -> None:
        """server: the base address of `lipstream serve`; avatar: which of its avatars (default: the
        server's); token: its bearer token, if it needs one; picture: "jpeg", or "rgb" on one machine."""
        self._server, self._avatar, self._token, self._picture = server, avatar, token, picture
        self._connection: AvatarConnection | None = None
        self._frames: AsyncIterator[AvatarFrame] | None = None
        self._first: AvatarFrame | None = None

    async def start(self) -> AvatarOptions:
        """Opens the session and reads its first frame: the options the runner's tracks need."""
        self._connection = await AvatarConnection.open(self._server, self._avatar, self._token, picture=self._picture)
        self._frames = aiter(self._connection.frames())
        self._first = await anext(self._frames)
        return AvatarOptions(
            video_width=self._first.width,
            video_height=self._first.height,
            video_fps=FPS,
            audio_sample_rate=PLAYBACK_RATE,
            audio_channels=1,
        )

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        connection = self._started()
        if isinstance(frame, AudioSegmentEnd):
            await connection.end_utterance()
        else:
            await connection.send_audio(bytes(frame.data.cast("B")), frame.sample_rate, frame.num_channels)

    async def clear_buffer(self) -> None:
        await self._started().interrupt()

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._play()

    async def _play(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        self._started()
        speaking = False
        shown = self._first
        while shown is not None:
            if speaking and not shown.utterance:  # its audio has all played (or was cleared)
                yield AudioSegmentEnd()
            speaking = shown.utterance
            yield rtc.VideoFrame(shown.width, shown.height, rtc.VideoBufferType.RGB24, shown.rgb)
            if shown.utterance:
                yield rtc.AudioFrame(shown.audio, shown.audio_rate, 1, len(shown.audio) // 2)
            shown = await anext(self._frames, None)

    def _started(self) -> AvatarConnection:
        if self._connection is None or self._frames is None:
            raise RuntimeError("call LipstreamVideoGenerator.start() first (it opens the session)")
        return self._connection

    async def aclose(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


async def run_avatar_worker(
    room: rtc.Room, server: str, *, avatar: str | None = None, token: str | None = None, sender: str | None = None
) -> None:
    """Serves LiveKit's avatar protocol in `room` (joined already) until the room or the session ends.
    sender: the agent participant's identity (default: the first agent that joins)."""
    generator = LipstreamVideoGenerator(server, avatar=avatar, token=token)
    options = await generator.start()
    runner = AvatarRunner(
        room, audio_recv=DataStreamAudioReceiver(room, sender_identity=sender), video_gen=generator, options=options
    )
    try:
        await runner.start()
        await runner.wait_for_complete()
    finally:
        await runner.aclose()
        await generator.aclose()
