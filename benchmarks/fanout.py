"""Fan-out benchmark: one speaking session, N viewers, either each with its own WebRTC peer on the
server (WHEP, `direct`: one VP8 encode per viewer) or all through Janus (`janus`: one encode, Janus
forwards the packets).

    lipstream bench fanout --viewers N --via janus|direct [--seconds 20] [--silent] [--out FILE.json]

`lipstream serve` and Janus (Debian's, started on loopback) run in their own processes; the viewers
are aiortc peers in this one, which receive and decode every frame as a browser would. Reported per
run: each viewer's received fps (by arrival) and the frames missing from its RTP timeline, the CPU of
lipstream, of Janus, of the viewers themselves, and the machine's idle cores, which say whether the
client side was the limit. The session speaks all along (speech pushed on a loop), or with `--silent`
shows its template frames, which needs no inference and so measures what the fan-out alone costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from lipstream.dsp import to_s16

from .report import git_commit, machine_info, write_json
from .session_bench import RATE, _metric, _start_server, cpu_seconds, free_port, load_speech

WARM_UP_S = 3.0
VIAS = ("janus", "direct")


class CountingViewer:
    """A receiving peer that keeps, per video frame, its arrival time and RTP timestamp (it decodes,
    as any viewer must, and keeps nothing else)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.arrivals: list[float] = []
        self.stamps: list[int] = []
        self.tasks: list[asyncio.Task] = []

        @self.pc.on("track")
        def on_track(track: object) -> None:
            self.tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: object) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.arrivals.append(time.monotonic())
                    self.stamps.append(frame.pts)

    def window(self, start: float, end: float) -> tuple[float, int]:
        """(fps received between start and end, frames missing from the RTP timeline there)."""
        arrivals = np.array(self.arrivals)
        inside = (arrivals >= start) & (arrivals < end)
        stamps = np.array(self.stamps, dtype=np.int64)[inside]
        steps = np.diff(stamps) % 2**32
        lost = int(np.maximum(np.round(steps / 3600) - 1, 0).sum()) if len(steps) else 0
        return float(inside.sum()) / (end - start), lost

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()


async def _watch_direct(http: aiohttp.ClientSession, base: str, watch_url: str, viewer: CountingViewer) -> None:
    viewer.pc.addTransceiver("audio", direction="recvonly")
    viewer.pc.addTransceiver("video", direction="recvonly")
    await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
    async with http.post(
        f"{base}{watch_url}", data=viewer.pc.localDescription.sdp, headers={"Content-Type": "application/sdp"}
    ) as response:
        if response.status != 201:
            raise RuntimeError(f"WHEP viewer refused ({response.status}): {await response.text()}")
        await viewer.pc.setRemoteDescription(RTCSessionDescription(await response.text(), "answer"))


async def _speak(http: aiohttp.ClientSession, base: str, session_id: str, speech: np.ndarray) -> None:
    """Pushes the speech again and again: the server throttles it to real time."""
    pcm = to_s16(speech).tobytes()
    while True:
        async with http.post(
            f"{base}/sessions/{session_id}/audio?rate={RATE}", data=pcm, headers={"Content-Type": "audio/pcm"}
        ) as response:
            if response.status != 200:
                raise RuntimeError(f"pushing audio failed ({response.status}): {await response.text()}")


async def _dropped(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(f"{base}/metrics") as response:
        return _metric(await response.text(), "lipstream_frames_dropped_total")


async def _run(
    base: str, via: str, viewers: int, seconds: float, speech: np.ndarray | None, server_pid: int, janus_pid: int | None
) -> dict:
    from lipstream.realtime.janus import subscribe

    server_process = psutil.Process(server_pid)
    janus_process = psutil.Process(janus_pid) if janus_pid else None
    own = psutil.Process()
    peers = [CountingViewer() for _ in range(viewers)]
    subscriptions = []
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/sessions") as response:
            created = await response.json()
        session_id = created["session_id"]
        # silent: the avatar shows its template frames, no inference: what fan-out costs, alone
        speaking = _speak(http, base, session_id, speech) if speech is not None else asyncio.sleep(0)
        speaker = asyncio.create_task(speaking)
        if via == "janus":
            async with http.post(f"{base}/sessions/{session_id}/publish") as response:
                if response.status != 200:
                    raise RuntimeError(f"publishing to Janus failed: {await response.text()}")
                where = await response.json()
            for peer in peers:
                subscriptions.append(await subscribe(where["janus"], where["room"], where["feed"], peer.pc))
        else:
            for peer in peers:
                await _watch_direct(http, base, created["watch_url"], peer)
        await asyncio.sleep(WARM_UP_S)
        dropped0 = await _dropped(http, base)
        start = time.monotonic()
        cpu0 = [cpu_seconds(p) for p in (server_process, janus_process, own)]
        machine0 = psutil.cpu_times()
        await asyncio.sleep(seconds)
        end = time.monotonic()
        cpu1 = [cpu_seconds(p) for p in (server_process, janus_process, own)]
        machine1 = psutil.cpu_times()
        dropped = await _dropped(http, base) - dropped0
        if speaker.done() and speaker.exception() is not None:
            raise speaker.exception()  # the session stopped speaking: the figures would not be what they say
        speaker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await speaker
        for peer in peers:
            await peer.close()
        for janus in subscriptions:
            await janus.close()
        async with http.delete(f"{base}/sessions/{session_id}"):
            pass
    cores = [(b - a) / (end - start) for a, b in zip(cpu0, cpu1, strict=True)]
    idle = (machine1.idle - machine0.idle) / (end - start)
    windows = [peer.window(start, end) for peer in peers]
    fps = [w[0] for w in windows]
    return {
        "viewers": viewers,
        "via": via,
        "speaking": speech is not None,
        "seconds": round(end - start, 2),
        "min_fps": round(min(fps), 2),
        "median_fps": round(float(np.median(fps)), 2),
        "frames_lost": sum(w[1] for w in windows),  # missing from the viewers' RTP timelines
        "frames_dropped_by_server": dropped,  # ticks the server could not make in time (never sent to anyone)
        "lipstream_cpu_cores": round(cores[0], 3),
        "janus_cpu_cores": round(cores[1], 3),
        "viewers_cpu_cores": round(cores[2], 3),
        "machine_idle_cores": round(idle, 3),
        "machine_cores": psutil.cpu_count(),
    }


def run_fanout_bench(
    viewers: int = 10,
    via: str = "janus",
    seconds: float = 20.0,
    out: Path | None = None,
    speech_path: str | None = None,
    silent: bool = False,
) -> dict:
    from lipstream.deploy.janus import start_janus

    if via not in VIAS:
        raise ValueError(f"--via takes one of {VIAS}, not {via!r}")
    speech = None if silent else load_speech(speech_path)
    janus = None
    extra: tuple[str, ...] = ()
    folder = Path(tempfile.mkdtemp(prefix="lipstream-fanout-"))
    if via == "janus":
        janus_port = free_port()
        janus = start_janus(folder, janus_port)
        extra = ("--janus", f"http://127.0.0.1:{janus_port}/janus")
    server, base = _start_server(1, extra=extra)
    try:
        measured = asyncio.run(_run(base, via, viewers, seconds, speech, server.pid, janus.pid if janus else None))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        if janus is not None:
            janus.terminate()
            janus.wait(timeout=10)
    payload = {"benchmark": "fanout", "machine": machine_info(), "commit": git_commit()} | measured
    if out is None:
        out = Path("benchmarks/results") / f"fanout-{via}-{viewers}{'-silent' if silent else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, payload)
    payload["files"] = [str(out)]
    return payload
