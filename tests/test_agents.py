"""Voice agents' side: the frames WebSocket with the light client (`agents/`, lipstream_agents), and a real
Pipecat pipeline in its own environment (`.venv-agents`: pipecat pins protobuf >= 5, mediapipe < 5)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from conftest import REPO
from lipstream_agents.client import AvatarConnection, LipstreamError, parse_frame
from test_server import serving

from lipstream.dsp import PLAYBACK_SAMPLES_PER_FRAME
from lipstream.realtime.frames import encode_frame
from lipstream.realtime.runtime import Runtime
from lipstream.realtime.session import OutputFrame

AGENTS_PYTHON = Path(os.environ.get("LIPSTREAM_AGENTS_PYTHON", REPO / ".venv-agents" / "bin" / "python"))


@pytest.mark.parametrize("picture", ["rgb", "jpeg"])
def test_the_client_reads_what_the_server_writes(picture: str) -> None:
    y, x = np.mgrid[0:72, 0:128]
    image = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)  # 128 x 72, smooth ramps
    audio = np.sin(np.arange(PLAYBACK_SAMPLES_PER_FRAME) / 7).astype(np.float32) * 0.5
    frame = parse_frame(encode_frame(OutputFrame(41, image, audio, "blend", from_input=True), picture))
    assert (frame.number, frame.kind, frame.width, frame.height, frame.utterance) == (41, "blend", 128, 72, True)
    received = np.frombuffer(frame.rgb, np.uint8).reshape(72, 128, 3).astype(int)
    error = np.abs(received - image)
    assert error.max() == 0 if picture == "rgb" else error.mean() < 4, "JPEG: lossy, but the same picture"
    assert np.abs(np.frombuffer(frame.audio, "<i2") / 32767 - audio).max() < 1e-4
    with pytest.raises(LipstreamError, match="not a lipstream frame"):
        parse_frame(b"RIFF" + bytes(40))


def test_frames_socket_streams_every_frame_with_its_audio_and_events(runtime: Runtime, speech: np.ndarray) -> None:
    """An agent drives a session by the audio socket and reads the frames socket: consecutive frames,
    each with its 40 ms of audio; the pushed speech comes back, and the mouth moves only while it plays;
    the playback events arrive on the same socket; ending the session ends the stream."""
    pcm = (speech[8000:40000] * 32767).astype("<i2").tobytes()  # 2 s

    async def scenario() -> tuple[list, list[dict]]:
        async with serving(runtime) as base:
            avatar = await AvatarConnection.open(base, picture="rgb")
            frames = []
            async with asyncio.timeout(30):
                async for frame in avatar.frames():
                    frames.append(frame)
                    if len(frames) == 10:
                        await avatar.send_audio(pcm, 16_000)
                        await avatar.end_utterance()
                    if len(frames) == 110:
                        async with aiohttp.ClientSession() as http:  # the session ends under the client
                            await http.delete(f"{base}/sessions/{avatar.session}")
            events = [avatar.events.get_nowait() for _ in range(avatar.events.qsize())]
            await avatar.close()
            return frames, events

    frames, events = asyncio.run(scenario())
    assert 110 <= len(frames) <= 115, "the stream ended with the session"
    numbers = [f.number for f in frames]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "no frame lost on loopback"
    assert {len(f.audio) for f in frames} == {2 * PLAYBACK_SAMPLES_PER_FRAME}
    speaking = [f for f in frames if f.kind == "speech"]
    assert sum(f.utterance for f in frames) == 50, "2 s of speech plays in 50 frames"
    assert 45 <= len(speaking) <= 50, "and all (or, if an inference overran, nearly all) are generated"
    sound = np.concatenate([np.frombuffer(f.audio, "<i2") for f in frames]).astype(np.float64)
    loud = np.abs(sound) > 300
    assert 1.0 < loud.sum() / 48_000 < 2.2, "the pushed speech plays back once, with the frames"
    idle = [f for f in frames if f.kind == "idle"]
    assert len({f.rgb for f in idle}) == 1, "idle frames are the template itself (a photo: one picture)"
    assert len({f.rgb for f in speaking}) > 40, "the mouth moves while it speaks"
    started, ended = (next(e for e in events if e["event"] == kind) for kind in ("speech_started", "speech_ended"))
    by_number = {f.number: f for f in frames}
    assert by_number[started["frame"]].kind != "idle" and ended["interrupted"] is False


def test_frames_socket_refuses_a_bad_format_and_an_unknown_session(runtime: Runtime) -> None:
    async def scenario() -> list[str]:
        async with serving(runtime) as base:
            avatar = await AvatarConnection.open(base, picture="png")
            errors = []
            for connection in (avatar, AvatarConnection(avatar.http, base, "nope", False, "rgb")):
                with pytest.raises(LipstreamError) as refused:
                    async for _ in connection.frames():
                        break
                errors.append(str(refused.value))
            await avatar.close()
            return errors

    bad_format, unknown = asyncio.run(scenario())
    assert "(400)" in bad_format and "unknown" not in bad_format
    assert "(404)" in unknown


needs_agents_environment = pytest.mark.skipif(
    not AGENTS_PYTHON.is_file(),
    reason=f"no agents' environment at {AGENTS_PYTHON} (make test builds it: pipecat-ai, livekit-agents, agents/)",
)


@pytest.fixture(scope="module")
def tts_speech(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of the recording as a 16-bit WAV (made for the test, never committed)."""
    from lipstream.avatars.prepare import write_wav

    path = tmp_path_factory.mktemp("agents") / "speech.wav"
    write_wav(path, speech[8_000:56_000], 16_000)
    return path


def run_agent(runtime: Runtime, script: str, speech: Path, runs: tuple[str, ...]) -> list[dict]:
    """Runs tests/agents/SCRIPT with the agents' Python against a server in this process, once per run
    ("whole", or the seconds after which it interrupts); their JSON results."""

    async def scenario() -> list[dict]:
        async with serving(runtime) as base:
            child = await asyncio.create_subprocess_exec(
                str(AGENTS_PYTHON),
                str(REPO / "tests" / "agents" / script),
                *("--server", base, "--speech", str(speech)),
                *(option for run in runs for option in ("--run", run)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(child.communicate(), 120 * len(runs))
            assert child.returncode == 0, err.decode()[-3000:]
            return json.loads(out.decode().strip().splitlines()[-1])

    return asyncio.run(scenario())


INTERRUPT_AFTER = 1.5


@needs_agents_environment
def test_a_pipecat_pipeline_gets_the_avatars_frames_and_retimed_audio(runtime: Runtime, tts_speech: Path) -> None:
    """pipecat's own test helper runs a pipeline with LipstreamAvatar after a stand-in TTS (3 s of a
    recording as 24 kHz TTSAudioRawFrames): whole, then interrupted."""
    whole, interrupted = run_agent(runtime, "pipecat_pipeline.py", tts_speech, ("whole", str(INTERRUPT_AFTER)))
    for result in (whole, interrupted):
        assert result["errors"] == []
        assert result["audio_rates"] == [48_000] and result["sizes"] == [[512, 512]]
        assert result["largest_change_speaking"] > 10 and result["largest_change_idle"] == 0
    # every sample comes back, re-timed to whole frames; 25 pictures a second meanwhile
    assert whole["sent_seconds"] <= whole["audio_seconds"] <= whole["sent_seconds"] + 0.04
    assert whole["images"] >= 25 * (whole["sent_seconds"] + 1.5)
    assert whole["other_frames_down"] == ["TTSStartedFrame", "TTSStoppedFrame"]
    assert INTERRUPT_AFTER - 0.5 < interrupted["audio_seconds"] < INTERRUPT_AFTER + 0.5, "the rest was dropped"
    assert "InterruptionFrame" in interrupted["other_frames_down"]


@needs_agents_environment
def test_livekits_avatar_runner_plays_the_generators_frames_and_reports_playback(
    runtime: Runtime, tts_speech: Path
) -> None:
    """livekit-agents' AvatarRunner, in-process, with its QueueAudioOutput and LipstreamVideoGenerator:
    the frames reach its AVSynchronizer, and playback finished is reported with the position played
    (interrupted after clear_buffer)."""
    whole, interrupted = run_agent(runtime, "livekit_runner.py", tts_speech, ("whole", str(INTERRUPT_AFTER)))
    for result in (whole, interrupted):
        assert result["options"] == [512, 512, 25, 48_000]
        assert result["sizes"] == [[512, 512]] and result["audio_rates"] == [48_000]
        assert result["playback_started"] == 1
    (finished,) = whole["playback_finished"]
    assert whole["sent_seconds"] <= whole["audio_seconds"] <= whole["sent_seconds"] + 0.04
    assert finished == {"position": pytest.approx(whole["audio_seconds"]), "interrupted": False}
    assert whole["video_frames"] >= 25 * (whole["sent_seconds"] + 1.5)
    (finished,) = interrupted["playback_finished"]
    assert finished["interrupted"] is True
    assert INTERRUPT_AFTER - 0.5 < finished["position"] <= interrupted["audio_seconds"] + 1e-9  # summed floats
    assert interrupted["audio_seconds"] < INTERRUPT_AFTER + 0.5


@needs_agents_environment
@pytest.mark.skipif(
    not os.environ.get("LIVEKIT_URL"),
    reason="no LiveKit server: set LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET (none installs here)",
)
def test_the_avatar_worker_in_a_livekit_room(runtime: Runtime, tts_speech: Path) -> None:
    """End to end through a LiveKit server: an agent streams speech to the worker over lk.audio_stream,
    sees the avatar's video, and is told by RPC when the speech has played."""
    (result,) = run_agent(runtime, "livekit_room.py", tts_speech, ("whole",))
    assert result["video_frames"] >= 25 * result["sent_seconds"]
    (finished,) = result["playback_finished"]
    assert finished["interrupted"] is False
    assert finished["position"] == pytest.approx(result["sent_seconds"], abs=0.05)
