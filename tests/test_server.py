"""The real server on a loopback port, driven by in-process aiortc peers and HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from lipstream.avatars.prepare import write_wav
from lipstream.benchmarks import motion
from lipstream.benchmarks.motion import SPEAKING, luma_cells, mouth_box
from lipstream.dsp import read_wav, to_s16
from lipstream.realtime.audio_in import RateConverter
from lipstream.realtime.render import rendered_frames
from lipstream.realtime.runtime import Runtime
from lipstream.realtime.server import ServerSettings, create_app
from lipstream.realtime.session import MAX_BUFFER_SECONDS


def mouth_change(runtime: Runtime, image: np.ndarray) -> float:
    """How far the mouth is from rest (grey levels; see lipstream.benchmarks.motion)."""
    return motion.mouth_change(image, runtime.assets.template(0), mouth_box(runtime.assets))


async def rendered_cells(runtime: Runtime, samples: np.ndarray) -> np.ndarray:
    """The lips of every frame that the same audio gives offline, as luma cells [frames, rows, cols]."""
    box = mouth_box(runtime.assets)
    return np.stack([luma_cells(frame.image[box]) async for frame in rendered_frames(runtime, samples)])


def best_match(received: np.ndarray, reference: np.ndarray) -> int:
    """The index of `received` (luma cells per frame) where the `reference` sequence fits best."""
    distances = [
        np.abs(received[start : start + len(reference)] - reference).mean()
        for start in range(len(received) - len(reference) + 1)
    ]
    return int(np.argmin(distances))


@contextlib.asynccontextmanager
async def serving(runtime: Runtime, **settings: object) -> AsyncIterator[str]:
    # The test's own client peers run in the server's process, so its CPU is no measure of a session's
    # cost here: measured admission is tested on its own (test_capacity.py).
    settings.setdefault("measured_admission", False)
    runner = web.AppRunner(create_app(runtime, ServerSettings(**settings)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class Viewer:
    """A client peer that receives the avatar: records (arrival time, image) and audio."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.frames: list[tuple[float, np.ndarray]] = []
        self.stamps: list[int] = []  # each frame's RTP timestamp (90 kHz, from a random origin)
        self.audio: list[tuple[float, np.ndarray]] = []
        self.tasks: list[asyncio.Task] = []
        self.arrived = asyncio.Event()

        @self.pc.on("track")
        def on_track(track: object) -> None:
            self.tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: object) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.frames.append((time.monotonic(), frame.to_ndarray(format="rgb24")))
                    self.stamps.append(frame.pts)
                    self.arrived.set()
                else:
                    pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
                    self.audio.append((time.monotonic(), pcm.astype(np.float32) / 32768))

    async def offer(self, send_audio: object | None = None) -> str:
        if send_audio is not None:
            self.pc.addTrack(send_audio)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


async def connect(http: aiohttp.ClientSession, base: str, viewer: Viewer, send_audio: object | None = None) -> str:
    sdp = await viewer.offer(send_audio)
    async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    await viewer.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
    return answer["session_id"]


async def wait_for_frames(viewer: Viewer, count: int) -> None:
    try:
        async with asyncio.timeout(30):
            while len(viewer.frames) < count:
                viewer.arrived.clear()
                await viewer.arrived.wait()
    except TimeoutError:
        pytest.fail(f"only {len(viewer.frames)} of {count} frames arrived in 30 s")


def assert_25_fps(stamps: list[int], arrivals: list[float], share: float = 0.9) -> None:
    """The stream runs at 25 fps by its own clock: RTP timestamps 3600 apart (90 kHz / 25), a gap only
    where a frame was skipped (a tick the server could not make in time, or one a browser did not
    show), and at least `share` of the steps single frames. Nor do the frames come faster than that
    clock (seconds of arrival against seconds of media).

    Arrival is bounded only from below: on a loaded machine it stretches (the receiving peer decodes
    in this same process), and speed belongs in the benchmarks (`lipstream bench session`)."""
    steps = np.diff(np.array(stamps, dtype=np.int64)) % 2**32  # RTP timestamps wrap at 2**32
    assert len(steps) >= 20, f"only {len(steps) + 1} frames to judge"
    assert (steps % 3600 == 0).all() and (steps > 0).all(), f"timestamps not whole 40-ms frames: {set(steps)}"
    assert (steps == 3600).mean() >= share, f"frames skipped: steps in frames {np.bincount(steps // 3600)}"
    media, wall = steps.sum() / 90_000, arrivals[-1] - arrivals[0]
    assert wall > 0.9 * media, f"{media:.2f} s of frames arrived in {wall:.2f} s: faster than real time"


def test_offer_round_trip_streams_the_avatar_in_sync(runtime: Runtime, speech_then_silence: Path) -> None:
    async def scenario() -> None:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            player = MediaPlayer(str(speech_then_silence))
            await connect(http, base, viewer, send_audio=player.audio)
            await wait_for_frames(viewer, 130)
            health = await (await http.get(f"{base}/health")).json()
            await viewer.close()
        assert health["video_encoder"] == "vp8, denoiser off"  # realtime/video_encoder.py
        assert_25_fps(viewer.stamps[10:], [t for t, _ in viewer.frames[10:]])
        width, height = runtime.assets.frame_size
        assert viewer.frames[0][1].shape == (height, width, 3)
        change = np.array([mouth_change(runtime, image) for _, image in viewer.frames])
        speaking = change > SPEAKING
        assert speaking.sum() >= 25, "the mouth moves while the client speaks"
        rows, cols = mouth_box(runtime.assets)
        tail = np.stack([image[rows, cols].astype(float) for _, image in viewer.frames[-25:]])
        stillness = np.abs(np.diff(tail, axis=0)).mean(axis=(1, 2, 3))
        # Still: the same template frame again and again (a video key frame may shift it all once).
        assert not speaking[-25:].any() and np.median(stillness) < 0.5, "and rests on the idle frame in silence"
        # The audio that came back is the audio that went in.
        received = np.concatenate([pcm for _, pcm in viewer.audio])
        sent = read_wav(speech_then_silence)[0]
        received16 = cv2.resize(received[None], (len(received) // 3, 1), interpolation=cv2.INTER_AREA)[0]
        # Normalised cross-correlation with pieces of a quarter second of the speech: long enough to be
        # unmistakable, short enough that one of them falls between two frames that a loaded machine
        # dropped from the live input (each drop takes 40 ms of audio out); the best piece counts.
        centred = received16 - received16.mean()
        best = (-1.0, 0, 0)  # (correlation, where in the received audio, where in the sent audio)
        for first in range(4000, 24000, 4000):
            piece = sent[first : first + 4000] - sent[first : first + 4000].mean()
            energy = np.sqrt(np.convolve(centred**2, np.ones(len(piece)), "valid"))
            ncc = np.correlate(centred, piece, "valid") / (np.linalg.norm(piece) * energy + 1e-9)
            best = max(best, (float(ncc.max()), int(ncc.argmax()), first))
        assert best[0] > 0.5, f"normalised correlation {best[0]:.2f}"
        origin = best[1] - best[2]  # where the sent audio's sample 0 is in the received audio
        # Mouth and sound together. Offline, the same audio gives frame k for samples k*640 onwards; the
        # received frames that match those show when frame k arrived, the received audio when sample
        # k*640 did.
        reference = (await rendered_cells(runtime, sent))[:60]  # 2 s of speech, then rest
        cells = np.stack([luma_cells(image[rows, cols]) for _, image in viewer.frames])
        first = best_match(cells, reference)
        audio_ends = np.cumsum([len(pcm) for _, pcm in viewer.audio])
        skews = []
        for k in range(50):
            packet = np.searchsorted(audio_ends, 3 * (origin + 640 * k), side="right")
            skews.append(viewer.frames[first + k][0] - viewer.audio[packet][0])
        assert abs(np.median(skews)) <= 0.08, f"video minus audio arrival: {np.median(skews):+.3f} s"

    asyncio.run(scenario())


def test_a_render_longer_than_a_session_holds_gives_every_frame_and_the_same_frames(
    runtime: Runtime, speech: np.ndarray
) -> None:
    """An offline render (render, evaluate --video) feeds its session a little ahead of the frames, so audio
    longer than a session may hold waiting (MAX_BUFFER_SECONDS) renders whole, with the frames that a
    shorter render of its start gives."""
    samples = np.tile(speech, 6)[: int((MAX_BUFFER_SECONDS + 6) * 16_000)]

    async def frames(audio: np.ndarray) -> list:
        return [frame async for frame in rendered_frames(runtime, audio)]

    whole = asyncio.run(frames(samples))
    assert len(whole) == len(samples) // 640
    assert sum(frame.kind == "speech" for frame in whole[-250:]) > 100  # the last 10 s are spoken too
    start = asyncio.run(frames(samples[: 8 * 16_000]))
    for long, short in zip(whole[:150], start[:150], strict=True):
        np.testing.assert_array_equal(long.image, short.image)


async def push_wav(http: aiohttp.ClientSession, base: str, session_id: str, path: Path) -> dict:
    data = await asyncio.to_thread(path.read_bytes)

    async def body() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 8192):  # streamed, as a TTS engine would
            yield data[start : start + 8192]

    async with http.post(
        f"{base}/sessions/{session_id}/audio", data=body(), headers={"Content-Type": "audio/wav"}
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def test_http_push_drives_the_avatar_and_interrupt_goes_idle(runtime: Runtime, speech_then_silence: Path) -> None:
    async def scenario() -> None:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            session_id = await connect(http, base, viewer)
            await wait_for_frames(viewer, 10)
            push = asyncio.create_task(push_wav(http, base, session_id, speech_then_silence))
            async with asyncio.timeout(20):
                while not viewer.frames or mouth_change(runtime, viewer.frames[-1][1]) < SPEAKING:
                    viewer.arrived.clear()
                    await viewer.arrived.wait()
            await wait_for_frames(viewer, len(viewer.frames) + 5)  # speaking now
            async with http.post(f"{base}/sessions/{session_id}/interrupt") as response:
                assert response.status == 200
                interrupted_at = time.monotonic()
            await wait_for_frames(viewer, len(viewer.frames) + 20)
            pushed = await push
            async with http.get(f"{base}/metrics") as response:
                metrics = await response.text()
            await viewer.close()
        after = [(t, mouth_change(runtime, image)) for t, image in viewer.frames if t > interrupted_at]
        # 5 s pushed at once fit in push_ahead_seconds (5 s): reading was not held back for long.
        assert pushed["seconds"] == pytest.approx(5.0, abs=0.01) and pushed["throttled_seconds"] < 1.0
        for stage in ("resample", "vad", "mel", "inference", "composite", "video_queue", "encode_send"):
            count = next(line for line in metrics.splitlines() if f'_count{{stage="{stage}"}}' in line)
            assert float(count.split()[1]) > 0, f"stage {stage} was timed"
        # Frames already on their way may still show speech (counted in frames, not in wall-clock time,
        # which a loaded machine stretches): at most 3, then the avatar is idle for good.
        in_flight = next(i for i, (_, change) in enumerate(after) if change < SPEAKING)
        assert in_flight <= 3, f"{in_flight} speaking frames arrived after the interrupt"
        assert all(change < SPEAKING for _, change in after[in_flight:])

    asyncio.run(scenario())


def test_two_sessions_at_once_each_get_25_fps(runtime: Runtime, speech_then_silence: Path) -> None:
    async def scenario() -> None:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            viewers = [Viewer(), Viewer()]
            for viewer in viewers:
                await connect(http, base, viewer, send_audio=MediaPlayer(str(speech_then_silence)).audio)
            await asyncio.gather(*(wait_for_frames(v, 100) for v in viewers))
            for viewer in viewers:
                await viewer.close()
        for viewer in viewers:
            assert_25_fps(viewer.stamps[10:], [t for t, _ in viewer.frames[10:]])
            assert sum(mouth_change(runtime, image) > SPEAKING for _, image in viewer.frames) >= 20

    asyncio.run(scenario())


def test_whip_ingest_and_whep_viewer(runtime: Runtime, speech_then_silence: Path) -> None:
    async def scenario() -> None:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            sender = RTCPeerConnection()
            sender.addTrack(MediaPlayer(str(speech_then_silence)).audio)
            await sender.setLocalDescription(await sender.createOffer())
            async with http.post(
                f"{base}/whip", data=sender.localDescription.sdp, headers={"Content-Type": "application/sdp"}
            ) as response:
                assert response.status == 201 and response.content_type == "application/sdp"
                location, watch_url = response.headers["Location"], response.headers["X-Watch-Url"]
                await sender.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
            viewer = Viewer()
            offer = await viewer.offer()
            async with http.post(
                f"{base}{watch_url}", data=offer, headers={"Content-Type": "application/sdp"}
            ) as response:
                assert response.status == 201
                viewer_location = response.headers["Location"]
                await viewer.pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
            await wait_for_frames(viewer, 75)
            async with http.delete(f"{base}{viewer_location}") as response:
                assert response.status == 200
            async with http.delete(f"{base}{location}") as response:
                assert response.status == 200
            async with http.get(f"{base}/health") as response:
                assert (await response.json())["sessions"] == 0
            await viewer.close()
            await sender.close()
        assert sum(mouth_change(runtime, image) > SPEAKING for _, image in viewer.frames) >= 20

    asyncio.run(scenario())


def test_bad_requests_get_clear_4xx(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime, max_sessions=1) as base, aiohttp.ClientSession() as http:

            async def status(method: str, path: str, **kwargs: object) -> tuple[int, str]:
                async with http.request(method, f"{base}{path}", **kwargs) as response:
                    return response.status, await response.text()

            assert (await status("POST", "/offer", data="nonsense"))[0] == 400
            code, text = await status("POST", "/offer", json={"sdp": "hello", "type": "offer"})
            assert code == 400 and "SDP offer" in text
            assert (await status("POST", "/whip", data="v=0", headers={"Content-Type": "text/plain"}))[0] == 415
            assert (await status("POST", "/sessions/nope/interrupt"))[0] == 404
            viewer = Viewer()
            session_id = await connect(http, base, viewer)
            code, text = await status("POST", "/offer", json={"sdp": await Viewer().offer(), "type": "offer"})
            assert code == 503 and "full" in text
            audio = f"/sessions/{session_id}/audio"
            assert (await status("POST", audio, data=b"x", headers={"Content-Type": "text/plain"}))[0] == 415
            code, text = await status("POST", audio, data=b"\0\0", headers={"Content-Type": "audio/pcm"})
            assert code == 400 and "rate" in text
            code, text = await status("POST", audio + "?rate=5", data=b"\0\0", headers={"Content-Type": "audio/pcm"})
            assert code == 400 and "8000..192000" in text
            code, text = await status("POST", audio, data=b"RIFF\0\0", headers={"Content-Type": "audio/wav"})
            assert code == 400 and "truncated" in text
            code, _ = await status(
                "POST", audio + "?rate=16000", data=b"\1" * 3201, headers={"Content-Type": "audio/pcm"}
            )
            assert code == 200, "an odd trailing byte is not an error"
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            assert "lipstream_frames_idle_total" in text and "lipstream_sessions 1" in text
            assert (await status("DELETE", f"/sessions/{session_id}"))[0] == 200
            assert (await status("DELETE", f"/sessions/{session_id}"))[0] == 404
            await viewer.close()

    asyncio.run(scenario())


def test_websocket_audio_and_data_channel_interrupt(runtime: Runtime, speech: np.ndarray) -> None:
    async def scenario() -> tuple[list[dict], list[dict]]:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            channel = viewer.pc.createDataChannel("control")
            on_channel: list[dict] = []
            channel.on("message", lambda message: on_channel.append(json.loads(message)))
            session_id = await connect(http, base, viewer)
            pcm = (speech[8000:40000] * 32767).astype("<i2").tobytes()
            async with http.ws_connect(f"{base}/sessions/{session_id}/ws?rate=16000") as socket:
                buffered, events = [], []
                for start in range(0, len(pcm), 3200):  # 100 ms messages, sent faster than real time
                    await socket.send_bytes(pcm[start : start + 3200])
                    while "buffered_seconds" not in (reply := await socket.receive_json()):
                        events.append(reply)  # playback events arrive between the acknowledgements
                    buffered.append(reply["buffered_seconds"])
                assert max(buffered) > 0.3, "the replies report the audio waiting to be played"
                await socket.send_str("end")
                await socket.send_str("hello")
                while "error" not in (reply := await socket.receive_json()):
                    events.append(reply)
                async with asyncio.timeout(20):
                    while not viewer.frames or mouth_change(runtime, viewer.frames[-1][1]) < SPEAKING:
                        viewer.arrived.clear()
                        await viewer.arrived.wait()
                channel.send("interrupt")
                interrupted_at = time.monotonic()
                await wait_for_frames(viewer, len(viewer.frames) + 15)
                async with asyncio.timeout(5):
                    while not any(e.get("event") == "idle" for e in events):
                        events.append(await socket.receive_json())
            await viewer.close()
        after = [mouth_change(runtime, image) for t, image in viewer.frames if t > interrupted_at]
        assert after and max(after[3:]) < SPEAKING, "the data-channel interrupt took it idle (3 frames in flight)"
        return events, on_channel

    on_socket, on_channel = asyncio.run(scenario())
    started, ended, idle = (
        next(e for e in on_socket if e["event"] == kind) for kind in ("speech_started", "speech_ended", "idle")
    )
    assert ended["interrupted"] is True and 0 < ended["position_s"] < 2.0
    # Positions count frames exactly: the utterance played from its first frame to the interrupt.
    assert ended["position_s"] == pytest.approx(0.04 * (ended["frame"] - started["frame"]))
    assert idle["frame"] >= ended["frame"]
    # The data channel says the same from the moment it opened (the push may have started before).
    assert ended in on_channel and idle in on_channel


def test_talk_streams_a_file_to_a_session_that_whep_viewers_watch(runtime: Runtime, speech_then_silence: Path) -> None:
    from lipstream.realtime.talk import file_blocks, open_session, stream

    async def scenario() -> float:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            session = await open_session(http, base, None)
            viewer = Viewer()
            async with http.post(
                f"{base}{session['watch_url']}", data=await viewer.offer(), headers={"Content-Type": "application/sdp"}
            ) as response:
                assert response.status == 201
                await viewer.pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))
            await wait_for_frames(viewer, 5)
            rate, blocks = await file_blocks(speech_then_silence)
            seconds = await stream(http, base, session["session_id"], rate, blocks)
            await viewer.close()
            assert sum(mouth_change(runtime, image) > SPEAKING for _, image in viewer.frames) >= 20
            return seconds

    assert asyncio.run(scenario()) == pytest.approx(5.0, abs=0.02)


def test_a_session_nobody_uses_is_ended(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with serving(runtime, abandoned_after=0.5) as base, aiohttp.ClientSession() as http:
            async with http.post(f"{base}/sessions", json={"avatar": "../etc"}) as response:
                assert response.status == 404
            async with http.post(f"{base}/sessions") as response:
                assert response.status == 201 and response.headers["Location"].startswith("/sessions/")
            async with http.get(f"{base}/health") as response:
                assert (await response.json())["sessions"] == 1
            await asyncio.sleep(2.0)
            async with http.get(f"{base}/health") as response:
                assert (await response.json())["sessions"] == 0, "abandoned sessions are reaped"

    asyncio.run(scenario())


def test_talk_without_a_microphone_library_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from lipstream.realtime.talk import TalkError, microphone_blocks

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # as if it were not installed

    async def open_microphone() -> None:
        microphone_blocks()

    with pytest.raises(TalkError, match="pip install sounddevice"):
        asyncio.run(open_microphone())


def test_playback_events_stream_as_server_sent_events(runtime: Runtime, speech_then_silence: Path) -> None:
    async def scenario() -> list[tuple[str, dict]]:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            async with http.post(f"{base}/sessions") as response:
                session_id = (await response.json())["session_id"]
            received: list[tuple[str, dict]] = []
            async with http.get(f"{base}/sessions/{session_id}/events") as stream:
                assert stream.headers["Content-Type"] == "text/event-stream"
                push = asyncio.create_task(push_wav(http, base, session_id, speech_then_silence))
                kind = None
                async with asyncio.timeout(20):
                    async for raw in stream.content:
                        line = raw.decode().strip()
                        if line.startswith("event: "):
                            kind = line.removeprefix("event: ")
                        elif line.startswith("data: "):
                            received.append((kind, json.loads(line.removeprefix("data: "))))
                            if kind == "idle":
                                break
                await push
            return received

    received = asyncio.run(scenario())
    assert [kind for kind, _ in received] == ["speech_started", "speech_ended", "idle"]
    started, ended = received[0][1], received[1][1]
    assert ended == {"event": "speech_ended", "frame": ended["frame"], "position_s": 5.0, "interrupted": False}
    assert ended["frame"] - started["frame"] == 125  # 5 s of audio, played frame for frame


def _encode(samples: np.ndarray, rate: int, path: Path, codec: str, container: str | None = None) -> Path:
    """float32 mono at `rate` -> a file of `codec` (made for the test, never committed)."""
    import av

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fifo = av.AudioFifo()
        frame = av.AudioFrame.from_ndarray(to_s16(samples)[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        fifo.write(frame)
        while (chunk := fifo.read(stream.codec_context.frame_size or 1024)) is not None:
            out.mux(stream.encode(chunk))
        if (rest := fifo.read()) is not None:
            out.mux(stream.encode(rest))
        out.mux(stream.encode())
    return path


def test_push_accepts_mp3_ogg_mulaw_and_float_wav_and_415_names_the_formats(
    runtime: Runtime, speech: np.ndarray, tmp_path: Path
) -> None:
    two_seconds = speech[8_000:40_000]
    at_48k = RateConverter(16_000, 48_000).push(two_seconds)
    at_8k = RateConverter(16_000, 8_000).push(two_seconds)
    bodies = {
        "audio/mpeg": _encode(at_48k, 48_000, tmp_path / "speech.mp3", "libmp3lame"),
        "audio/ogg": _encode(at_48k, 48_000, tmp_path / "speech.ogg", "libopus"),
        "audio/wav": _encode(at_48k, 48_000, tmp_path / "float.wav", "pcm_f32le"),  # not 16-bit: FFmpeg decodes
        "audio/basic": _encode(at_8k, 8_000, tmp_path / "speech.ul", "pcm_mulaw", "mulaw"),
    }

    async def scenario() -> dict[str, tuple[int, str]]:
        answers = {}
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            async with http.post(f"{base}/sessions") as response:
                session_id = (await response.json())["session_id"]
            url = f"{base}/sessions/{session_id}/audio"
            for kind, path in bodies.items():
                async with http.post(url, data=path.read_bytes(), headers={"Content-Type": kind}) as response:
                    answers[kind] = response.status, await response.text()
            for kind, data in (("audio/mpeg", b"not an mp3 at all" * 40), ("video/mp4", b"\0" * 64)):
                async with http.post(url, data=data, headers={"Content-Type": kind}) as response:
                    answers[f"bad {kind}"] = response.status, await response.text()
        return answers

    answers = asyncio.run(scenario())
    for kind in bodies:
        status, text = answers[kind]
        assert status == 200, f"{kind}: {text}"
        # Encoders pad a little (MP3's and Opus's priming), so the length is close, not exact.
        assert json.loads(text)["seconds"] == pytest.approx(2.0, abs=0.08), kind
    for kind in ("audio/mpeg", "video/mp4"):
        status, text = answers[f"bad {kind}"]
        assert status == 415 and "audio/mpeg" in text and "audio/ogg" in text, text


def test_mulaw_table_matches_ffmpegs_decoder() -> None:
    import av

    from lipstream.realtime.ingest import mulaw_to_s16

    codes = bytes(range(256))
    decoder = av.CodecContext.create("pcm_mulaw", "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"
    (frame,) = decoder.decode(av.Packet(codes))
    assert np.array_equal(np.frombuffer(mulaw_to_s16(codes), "<i2"), frame.to_ndarray().reshape(-1))


def band_share(samples: np.ndarray, rate: int, low: float, high: float) -> float:
    """The share of the signal's energy between `low` and `high` Hz."""
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def test_viewers_hear_the_input_at_its_full_band(runtime: Runtime, speech: np.ndarray, tmp_path: Path) -> None:
    """48 kHz speech with a 12 kHz tone in it, pushed as WAV, comes back over WebRTC (Opus) with the
    tone: the returned audio is not the 16 kHz the features use (which cut everything above 8 kHz)."""
    speech48 = RateConverter(16_000, 48_000).push(speech[8_000:56_000])
    t = np.arange(len(speech48)) / 48_000
    sent = 0.5 * speech48 + 0.05 * np.sin(2 * np.pi * 12_000 * t).astype(np.float32)
    path = tmp_path / "full_band.wav"
    write_wav(path, sent, 48_000)

    async def scenario() -> Viewer:
        async with serving(runtime) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            session_id = await connect(http, base, viewer)
            await wait_for_frames(viewer, 5)
            await push_wav(http, base, session_id, path)
            await wait_for_frames(viewer, len(viewer.frames) + 100)
            await viewer.close()
        return viewer

    viewer = asyncio.run(scenario())
    received = np.concatenate([pcm for _, pcm in viewer.audio])
    rate = 48_000
    assert len(received) > 3 * rate
    sent_share = band_share(sent, rate, 11_500, 12_500)
    back_share = band_share(received, rate, 11_500, 12_500)
    above_8k = band_share(received, rate, 8_000, 24_000)
    assert back_share > 0.3 * sent_share and above_8k > 0.01, (sent_share, back_share, above_8k)
