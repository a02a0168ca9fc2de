"""A Pipecat frame processor that gives a voice agent a lip-synced face: place it after the TTS service.

    pipeline = Pipeline([transport.input(), stt, llm, tts, LipstreamAvatar("http://127.0.0.1:8080"),
                         transport.output()])

It sends the TTS audio (`TTSAudioRawFrame`) to a running `lipstream serve` and, in its place, pushes
downstream what the server plays: 25 `OutputImageRawFrame`s a second (the avatar idles between
utterances) and, with the frames that speak, the same audio re-timed to them (`TTSAudioRawFrame`,
48 kHz mono), so that picture and sound leave together. `TTSStoppedFrame` ends an utterance;
`InterruptionFrame` drops what is not yet played. Other frames pass through.

Against a server, not in-process: an agent's environment pins protobuf >= 5, which the server's face
tracker (mediapipe 0.10.21) refuses, so the two cannot share one environment. The frames still go
through the server's batched scheduler, with every other session it serves.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from .client import AvatarConnection, LipstreamError


class LipstreamAvatar(FrameProcessor):
    def __init__(
        self,
        server: str,
        *,
        avatar: str | None = None,
        token: str | None = None,
        picture: str = "jpeg",
        **kwargs: object,
    ) -> None:
        """server: the base address of `lipstream serve`; avatar: which of its avatars (default: the
        server's); token: its bearer token, if it needs one; picture: "jpeg", or "rgb" for a server on
        the same machine (no encoding, 20x the bytes)."""
        super().__init__(**kwargs)
        self._server, self._avatar, self._token, self._picture = server, avatar, token, picture
        self._connection: AvatarConnection | None = None
        self._pump: asyncio.Task | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self._open()
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if self._connection is not None:  # replaced by the server's re-timed audio
                await self._connection.send_audio(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, TTSStoppedFrame):
            if self._connection is not None:
                await self._connection.end_utterance()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            if self._connection is not None:
                await self._connection.interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._close()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._close()

    async def _open(self) -> None:
        try:
            self._connection = await AvatarConnection.open(
                self._server, self._avatar, self._token, picture=self._picture
            )
        except (LipstreamError, OSError) as err:  # OSError: aiohttp's connection errors
            await self.push_error(f"lipstream: cannot open a session on {self._server}: {err}", err)
            return
        self._pump = self.create_task(self._play(self._connection))

    async def _play(self, connection: AvatarConnection) -> None:
        try:
            async for shown in connection.frames():
                image = OutputImageRawFrame(image=shown.rgb, size=(shown.width, shown.height), format="RGB")
                await self.push_frame(image)
                if shown.utterance:  # between utterances the avatar idles in silence
                    sound = TTSAudioRawFrame(audio=shown.audio, sample_rate=shown.audio_rate, num_channels=1)
                    await self.push_frame(sound)
        except LipstreamError as err:
            await self.push_error(f"lipstream: {err}", err)

    async def _close(self) -> None:
        if self._pump is not None:
            await self.cancel_task(self._pump)
            self._pump = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()
