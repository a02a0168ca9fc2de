"""The frames WebSocket (`GET /sessions/{id}/frames`): a session's composed video frames, each with the
audio that plays with it, for clients that are not WebRTC peers, such as a voice agent's pipeline
(Pipecat, LiveKit Agents) that puts the avatar into a transport of its own.

Each frame is one binary message: an 18-byte header, the picture, then the frame's audio.

    header: struct "<4sIBBBxHHH" = b"LSF1", frame number (u32), kind (u8: 0 idle, 1 blend, 2 speech),
            format (u8: 0 raw RGB, 1 JPEG), flags (u8: 1 = the audio is an utterance's, pauses included,
            not filler silence), a pad byte, width (u16), height (u16), audio samples (u16)
    picture: width x height x 3 bytes of RGB, or a JPEG of them (?format=jpeg, the default: 20x smaller)
    audio:  that many s16le mono samples at PLAYBACK_RATE (48 kHz): frame k's audio starts at sample
            PLAYBACK_SAMPLES_PER_FRAME x k of the session, so picture and sound stay locked

Playback events come on the same socket as JSON text messages ({"event": ..., "frame": ...}). A client
that reads too slowly loses its oldest frames (the session and its other viewers never wait for it);
the frame numbers say how many it lost. The socket ends when the client closes it or the session ends.
"""

from __future__ import annotations

import asyncio
import secrets
import struct

import cv2
from aiohttp import web

from lipstream.dsp import to_s16

from .ingest import forward_events
from .registry import STATE, LiveSession
from .security import error_response
from .session import OutputFrame
from .tracks import AvatarVideoTrack

HEADER = struct.Struct("<4sIBBBxHHH")
FROM_INPUT = 1
MAGIC = b"LSF1"
KINDS = {"idle": 0, "blend": 1, "speech": 2}
FORMATS = {"rgb": 0, "jpeg": 1}
JPEG_QUALITY = 90


def encode_frame(frame: OutputFrame, picture_format: str) -> bytes:
    """One frame as the socket's binary message (see the module's docstring)."""
    height, width = frame.image.shape[:2]
    if picture_format == "jpeg":
        ok, data = cv2.imencode(
            ".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY)
        )
        if not ok:
            raise RuntimeError("OpenCV could not encode a frame as JPEG")
        picture = data.tobytes()
    else:
        picture = frame.image.tobytes()
    audio = to_s16(frame.audio)
    flags = FROM_INPUT if frame.from_input else 0
    kind, encoding = KINDS[frame.kind], FORMATS[picture_format]
    head = HEADER.pack(MAGIC, frame.number, kind, encoding, flags, width, height, len(audio))
    return head + picture + audio.tobytes()


async def _send_frames(
    socket: web.WebSocketResponse, live: LiveSession, video: AvatarVideoTrack, picture_format: str
) -> None:
    """Until the client goes or the session ends (this task is one of the session's: closing it cancels
    this, and the socket is closed with it)."""
    loop = asyncio.get_running_loop()
    try:
        while True:
            _, frame = await video.next()
            if picture_format == "jpeg":  # a few ms of OpenCV: off the loop
                message = await loop.run_in_executor(None, encode_frame, frame, picture_format)
            else:
                message = encode_frame(frame, picture_format)
            await socket.send_bytes(message)
            live.touch()  # a client that watches is using the session, speech or not
    except (ConnectionResetError, RuntimeError):  # the client went away (aiohttp: "socket is closing")
        return
    finally:
        await socket.close()


async def frame_socket(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    live = state.get(request.match_info["session"])
    picture_format = request.query.get("format", "jpeg")
    if picture_format not in FORMATS:
        expected = " or ".join(FORMATS)
        message = f"?format= takes {expected} (the pictures' encoding), not {picture_format!r}"
        raise error_response(web.HTTPBadRequest, message)
    socket = web.WebSocketResponse(heartbeat=30.0)
    await socket.prepare(request)
    viewer = f"frames-{secrets.token_urlsafe(6)}"
    video, _ = live.broadcast.attach(viewer)  # its audio track stays unread: each frame carries its audio
    sender = state.spawn(live, _send_frames(socket, live, video, picture_format), "frames")
    events = state.spawn(live, forward_events(live, socket.send_json), "frames-events")
    try:
        async for message in socket:  # nothing is expected from the client; its close ends the stream
            if message.type == web.WSMsgType.TEXT:
                await socket.send_json({"error": "this socket only sends; push audio to /sessions/{id}/ws"})
    finally:
        for task in (sender, events):
            task.cancel()
        live.broadcast.detach(viewer)
    return socket
