"""Session benchmark: N clients on one server over loopback; frame rate, dropped frames, and
audio-in -> mouth-out latency measured at the client.

    lipstream bench session [--sessions 2] [--seconds 60] [--speech WAV]

Each client sends silence with speech bursts at known times (1 s of speech every 3 s) through a real
aiortc peer connection and receives the avatar. Audio in = when the burst's first 20 ms frame is
handed to the client's sender; mouth out = when the first frame whose lips differ from the template
frame shown in silence (benchmarks/motion.py) arrives back. The server runs in its own process, as `lipstream serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import aiohttp
import av
import numpy as np
import psutil
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lipstream.deploy import wait_until_answers
from lipstream.dsp import read_wav, to_s16
from lipstream.realtime.audio_in import Resampler
from lipstream.realtime.compositor import AvatarAssets
from lipstream.realtime.jitter import LowDelayAudioBuffer, MarkerVideoBuffer, install
from lipstream.realtime.runtime import load_avatar

from .motion import SPEAKING, IdleMouths, frame_luma
from .report import git_commit, machine_info, output_stem, write_json

RATE, CHUNK = 16_000, 320
BURST_EVERY, BURST_LENGTH = 3.0, 1.0
LOUD = 0.05  # an audio sample above this (of full scale) is speech

# The benchmarks' avatar unless told otherwise: the built-in photo, as in every latency figure so far.
# Its generated mouth departs from rest from the first blended frame on; the personalised default's
# resembles its own rest, so a viewer's measure sees it move about two frames (80 ms) later.
BENCH_AVATAR = "photo"


class BurstTrack(MediaStreamTrack):
    """Silence with a speech burst every `every` seconds, paced in real time; records burst onsets."""

    kind = "audio"

    def __init__(self, speech: np.ndarray, every: float = BURST_EVERY, length: float = BURST_LENGTH) -> None:
        super().__init__()
        # Each burst starts right at the speech's first loud sample, so the onset time is the speech's.
        first_loud = int(np.flatnonzero(np.abs(speech) > LOUD)[0])
        self.speech = (speech[first_loud : first_loud + int(length * RATE)] * 32767).astype(np.int16)
        self.every = every
        self.sent = 0
        self.start: float | None = None
        self.onsets: list[float] = []

    async def recv(self) -> av.AudioFrame:
        if self.start is None:
            self.start = time.monotonic()
        deadline = self.start + self.sent / RATE
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        position = self.sent % int(self.every * RATE)
        chunk = np.zeros(CHUNK, np.int16)
        if position < len(self.speech):
            chunk[:] = self.speech[position : position + CHUNK]
            if position == 0:
                self.onsets.append(time.monotonic())
        frame = av.AudioFrame.from_ndarray(chunk[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.sent, Fraction(1, RATE)
        self.sent += CHUNK
        return frame


class Client:
    """An aiortc peer that sends `track` (speech bursts) and receives the avatar. It records each video
    frame's arrival and whether its mouth differs from the template frame shown in silence, each 20 ms
    of returned audio's arrival and whether it is loud, and the connection's milestones."""

    def __init__(self, assets: AvatarAssets, speech: np.ndarray, avatar: str | None = None, **burst: float) -> None:
        self.avatar = avatar  # asked for in the offer (None: the server's default)
        self.pc = RTCPeerConnection()
        self.track = BurstTrack(speech, **burst)
        self.arrivals: list[float] = []
        self.speaking: list[bool] = []
        self.audio_arrivals: list[float] = []
        self.loud: list[bool] = []
        self.session_id = ""
        self.offered_at = self.connected_at = self.first_frame_at = float("nan")
        self.new_frame = asyncio.Event()
        self._rest = IdleMouths(assets)
        self._tasks: list[asyncio.Task] = []
        self.pc.addTrack(self.track)
        self.pc.addTransceiver("video", direction="recvonly")

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._read(track)))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected" and np.isnan(self.connected_at):
                self.connected_at = time.monotonic()

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "audio":
                    self.audio_arrivals.append(now)
                    self.loud.append(float(np.abs(frame.to_ndarray()).max()) > LOUD * 32767)
                    continue
                if np.isnan(self.first_frame_at):
                    self.first_frame_at = now
                self.arrivals.append(now)
                luma = frame_luma(frame) if frame.format.name == "yuv420p" else frame.to_ndarray(format="rgb24")
                self.speaking.append(self._rest.change(luma) > SPEAKING)
                self.new_frame.set()

    async def connect(self, http: aiohttp.ClientSession, base: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"} | ({"avatar": self.avatar} if self.avatar else {})
        self.offered_at = time.monotonic()
        async with http.post(f"{base}/offer", json=body) as response:
            answer = await response.json()
            if response.status != 200:
                raise RuntimeError(f"the server refused a benchmark session: {answer.get('error', response.status)}")
        self.session_id = answer["session_id"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        # This client stands in for a browser, whose receive buffers are not what the benchmark measures:
        # aiortc's hold audio for 4 packets (80 ms) and each video frame until the next one begins
        # (40 ms); a browser releases a video frame on its RTP marker bit and keeps a short adaptive
        # audio buffer. The client gets buffers that behave that way (realtime/jitter.py).
        install(self.pc, "audio", LowDelayAudioBuffer)
        install(self.pc, "video", MarkerVideoBuffer)

    async def next_frame(self) -> bool:
        """Waits for the next video frame; returns whether its mouth moves."""
        self.new_frame.clear()
        await self.new_frame.wait()
        return self.speaking[-1]

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()

    def latencies(self) -> list[float]:
        """Per burst: seconds from its onset leaving the client to the first speaking frame arriving."""
        return [b["mouth"] for b in self.bursts() if b["mouth"] is not None]

    def bursts(self) -> list[dict]:
        """Per burst: onset (client clock), and seconds from it to the first speaking video frame
        ("mouth") and to the first loud returned audio ("audio"); None where none arrived."""

        def first_after(onset: float, times: list[float], flags: list[bool]) -> float | None:
            t, f = np.array(times[: len(flags)]), np.array(flags)
            hit = np.flatnonzero((t > onset) & f & (t < onset + self.track.every)) if len(t) else []
            return float(t[hit[0]] - onset) if len(hit) else None

        return [
            {
                "onset": onset,
                "mouth": first_after(onset, self.arrivals, self.speaking),
                "audio": first_after(onset, self.audio_arrivals, self.loud),
            }
            for onset in self.track.onsets
        ]


# Real speech beside a development checkout (../shared/data/speech); elsewhere pass --speech.
DEFAULT_SPEECH = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech" / "hdtf_RD_Radio31_000.wav"


def load_speech(path: str | Path | None = None) -> np.ndarray:
    """16 kHz mono speech for the bursts; any rate is resampled."""
    path = Path(path) if path else DEFAULT_SPEECH
    if not path.is_file():
        raise ValueError(f"no speech file at {path}; pass --speech WAV with a few seconds of real speech")
    samples, rate = read_wav(path)
    if rate != RATE:
        samples = Resampler(rate, 1).push(to_s16(samples)[:, None]).features
    if np.abs(samples).max() < 2 * LOUD:
        raise ValueError(f"{path} is (nearly) silent; pass --speech WAV with real speech")
    return samples


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def stage_breakdown(metrics_text: str, before_text: str = "") -> dict:
    """Mean and approximate p95 per stage, from the lipstream_stage_seconds histogram (difference of
    two scrapes when `before_text` is given)."""

    def parse(text: str) -> dict[str, dict]:
        stages: dict[str, dict] = {}
        for line in text.splitlines():
            if not line.startswith("lipstream_stage_seconds"):
                continue
            name, value = line.rsplit(" ", 1)
            labels = dict(part.split("=", 1) for part in name[name.index("{") + 1 : -1].split(","))
            stage = labels["stage"].strip('"')
            entry = stages.setdefault(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
            if name.startswith("lipstream_stage_seconds_bucket"):
                entry["buckets"][labels["le"].strip('"')] = float(value)
            elif name.startswith("lipstream_stage_seconds_sum"):
                entry["sum"] = float(value)
            elif name.startswith("lipstream_stage_seconds_count"):
                entry["count"] = float(value)
        return stages

    now, then = parse(metrics_text), parse(before_text)
    out = {}
    for stage, entry in now.items():
        old = then.get(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = entry["count"] - old["count"]
        if count <= 0:
            continue
        cumulative = [(float(le), n - old["buckets"].get(le, 0.0)) for le, n in entry["buckets"].items()]
        p95 = next((le for le, n in sorted(cumulative) if n >= 0.95 * count), float("inf"))
        out[stage] = {
            "calls": int(count),
            "mean_ms": 1e3 * (entry["sum"] - old["sum"]) / count,
            "p95_ms_at_most": 1e3 * p95,
        }
    return out


def cpu_seconds(process: psutil.Process | None) -> float:
    """User + system CPU seconds of a process so far (0 for None)."""
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


async def _run(
    shown: list[tuple[str | None, AvatarAssets]],
    base: str,
    sessions: int,
    seconds: float,
    speech: np.ndarray,
    server_pid: int,
) -> dict:
    """shown: the avatars the sessions ask for in turn, with their assets."""
    clients = [Client(shown[i % len(shown)][1], speech, shown[i % len(shown)][0]) for i in range(sessions)]
    processes = (psutil.Process(server_pid), psutil.Process())  # the server, and these clients
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as response:
            metrics_before = await response.text()
        dropped_before = _metric(metrics_before, "lipstream_frames_dropped_total")
        for client in clients:
            await client.connect(http, base)
        settle = min(1.0, seconds / 2)
        await asyncio.sleep(settle)  # connected and streaming: the CPU window starts
        start, before = time.monotonic(), [cpu_seconds(p) for p in processes]
        await asyncio.sleep(seconds - settle)
        cores = [(cpu_seconds(p) - b) / (time.monotonic() - start) for p, b in zip(processes, before, strict=True)]
        async with http.get(f"{base}/metrics") as response:
            metrics_after = await response.text()
        dropped = _metric(metrics_after, "lipstream_frames_dropped_total") - dropped_before
        for client in clients:
            await client.close()
    results = []
    for index, client in enumerate(clients):
        arrivals = np.array(client.arrivals[25:])  # after the first second
        fps = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0
        latency = np.array(client.latencies()) * 1e3
        results.append(
            {
                "session": index,
                "avatar": client.avatar,
                "frames": len(client.arrivals),
                "fps": fps,
                "bursts": len(client.track.onsets),
                "bursts_seen": len(latency),
                "audio_to_mouth_ms": {
                    "p50": float(np.percentile(latency, 50)),
                    "p95": float(np.percentile(latency, 95)),
                    "min": float(latency.min()),
                }
                if len(latency)
                else None,
            }
        )
    return {
        "sessions": results,
        "frames_dropped_by_server": dropped,
        "stages": stage_breakdown(metrics_after, metrics_before),  # the server's, over the whole run
        # The clients share the machine with the server here; viewers elsewhere would not.
        "cpu_cores": {"server": cores[0], "clients": cores[1]},
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(
    sessions: int, avatar: str = BENCH_AVATAR, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    """`lipstream serve` showing `avatar` in its own process, as clients elsewhere would see it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lipstream.cli",
        "serve",
        "--port",
        str(port),
        "--engine",
        "onnxruntime",
        "--max-sessions",
        str(max(sessions, 1)),
        "--max-sessions-per-client",  # every benchmark client comes from 127.0.0.1
        str(max(sessions, 1)),
        "--admission",  # the benchmarks measure how the pipeline holds up, also beyond what admission allows
        "count",
        "--avatar",
        avatar,
        *extra,
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{base}/health", server, 300.0)
    except (RuntimeError, TimeoutError) as err:
        server.kill()
        raise RuntimeError(
            f"the benchmark's server did not start ({err}); run `lipstream serve` by hand to see why"
        ) from None
    return server, base


def run_session_bench(
    sessions: int = 2,
    seconds: float = 60.0,
    speech_path: str | None = None,
    out_dir: Path = Path("benchmarks/results"),
    avatar: str | None = None,
) -> dict:
    """avatar: the server's (default: BENCH_AVATAR), or several, comma-separated, which the sessions ask
    for in turn (the first is the server's). A frame's mouth is at rest when it matches the template
    frame shown (motion.IdleMouths)."""
    names = avatar.split(",") if avatar else [BENCH_AVATAR]
    shown = [(name, AvatarAssets(load_avatar(name))) for name in names]
    speech = load_speech(speech_path)
    server, base = _start_server(sessions, names[0])
    try:
        measured = asyncio.run(_run(shown, base, sessions, seconds, speech, server.pid))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    payload = {
        "benchmark": "session",
        "machine": machine_info(),
        "commit": git_commit(),
        "settings": {
            "sessions": sessions,
            "seconds": seconds,
            "engine": "onnxruntime",
            "server": "lipstream serve, own process",
            "avatars": [assets.avatar.name for _, assets in shown],
            "personalised": [bool(assets.delta_p.any()) for _, assets in shown],
            "hd": [assets.hd for _, assets in shown],
            "burst_every_s": BURST_EVERY,
            "burst_s": BURST_LENGTH,
        },
    } | measured
    stem = output_stem(out_dir, f"session-{sessions}x{round(seconds)}s")
    write_json(stem.with_suffix(".json"), payload)
    payload["files"] = [str(stem.with_suffix(".json"))]
    return payload
