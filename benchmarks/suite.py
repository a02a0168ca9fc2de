"""The latency benchmark suite: `lipstream bench all [--minutes 10]`.

Every part drives `lipstream serve`, started in its own process, over loopback with aiortc clients
(session_bench.Client), as a remote client would:

1. audio-to-mouth and audio-to-audio latency, and the A/V offset, per speech burst (a long run);
2. drift: the A/V offset and both latencies along that run (one sample per burst, every 2 s);
3. stage breakdown: the server's per-stage timings (/metrics) over the same run;
4. first frame: offer sent -> first decoded frame, and ICE connected -> first frame;
5. interrupt: the request leaves the client -> the first idle frame arrives (HTTP and data channel);
6. concurrency: 1..N sessions, each for a while: received fps, dropped frames, server CPU per session;
7. the engine benchmark (export issue) for the per-frame graph.

It writes JSON (machine, commit, settings, every sample), PNG plots and a markdown summary
(`benchmarks/RESULTS.md` by default).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from lipstream.dsp import serving_config
from lipstream.realtime.compositor import AvatarAssets
from lipstream.realtime.runtime import load_avatar

from .engine_bench import markdown as engine_markdown
from .engine_bench import run_engine_bench
from .report import git_commit, machine_info, output_stem, write_json
from .session_bench import BENCH_AVATAR, Client, _metric, _start_server, load_speech, stage_breakdown

FRAME_MS = 40.0
DRIFT_BURST_EVERY, DRIFT_BURST_LENGTH = 2.0, 0.8
TARGETS = {
    "audio_to_mouth_p50_ms": 150,
    "audio_to_mouth_p95_ms": 250,
    "first_frame_after_ice_ms": 300,
    "interrupt_ms": 80,
    "drift_frames": 1,
    "sessions_at_25fps": 2,
}
PUBLISHED = [
    ("bitHuman", "< 200 ms end to end at 25 fps on 1-2 CPU cores (claimed)"),
    (
        "LiveTalking",
        "buffers about 0.84 s (16-frame batches + 0.2 s audio look-ahead); users report 2-3 s to interrupt",
    ),
    ("Ditto (online mode)", "< 400 ms to first frame on an A100 (claimed)"),
]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (psutil)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _summary(values: list[float]) -> dict | None:
    if not values:
        return None
    ms = np.array(values) * 1e3
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


async def _scrape(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as response:
        return await response.text()


def burst_summary(client: Client, seconds: float) -> dict:
    """Latency, A/V offset and drift per burst of one client's run, and the frame rate it received."""
    bursts = client.bursts()[1:-1]  # the first may start before the video flows; the last may be cut
    start = bursts[0]["onset"] if bursts else 0.0
    samples = [
        {
            "t_s": b["onset"] - start,
            "mouth_ms": None if b["mouth"] is None else 1e3 * b["mouth"],
            "audio_ms": None if b["audio"] is None else 1e3 * b["audio"],
        }
        for b in bursts
    ]
    pairs = [
        (s["t_s"], s["mouth_ms"] - s["audio_ms"])
        for s in samples
        if s["mouth_ms"] is not None and s["audio_ms"] is not None
    ]
    offsets = np.array([o for _, o in pairs])
    minute = min(60.0, seconds / 4)
    early = [o for t, o in pairs if t < minute]
    late = [o for t, o in pairs if t > pairs[-1][0] - minute] if pairs else []
    drift_ms = float(np.median(late) - np.median(early)) if early and late else None
    arrivals = np.array(client.arrivals[25:])
    return {
        "seconds": seconds,
        "bursts": len(bursts),
        "audio_to_mouth": _summary([b["mouth"] for b in bursts if b["mouth"] is not None]),
        "audio_to_audio": _summary([b["audio"] for b in bursts if b["audio"] is not None]),
        "av_offset_ms": {
            "p50": float(np.median(offsets)),
            "p5": float(np.percentile(offsets, 5)),
            "p95": float(np.percentile(offsets, 95)),
        }
        if len(offsets)
        else None,
        "drift_ms": drift_ms,
        "drift_frames": None if drift_ms is None else abs(drift_ms) / FRAME_MS,
        "fps": float((len(arrivals) - 1) / (arrivals[-1] - arrivals[0])) if len(arrivals) > 1 else 0.0,
        "frames_received": len(client.arrivals),
        "samples": samples,
    }


def _dropped_fraction(after: str, before: str) -> tuple[float, float]:
    """Frames the server dropped between two /metrics scrapes, and their share of all frames due."""
    dropped = _metric(after, "lipstream_frames_dropped_total") - _metric(before, "lipstream_frames_dropped_total")
    made = sum(
        _metric(after, m) - _metric(before, m)
        for m in ("lipstream_frames_generated_total", "lipstream_frames_idle_total")
    )
    return dropped, dropped / max(dropped + made, 1)


async def long_run(base: str, assets: AvatarAssets, speech: np.ndarray, seconds: float, sessions: int = 1) -> dict:
    """Latency, A/V offset and drift per burst over `sessions` sessions at once (the first one's at the
    top level, every one's under "per_session"); the server's stage timings and dropped frames."""
    clients = [Client(assets, speech, every=DRIFT_BURST_EVERY, length=DRIFT_BURST_LENGTH) for _ in range(sessions)]
    async with aiohttp.ClientSession() as http:
        before = await _scrape(http, base)
        for client in clients:
            await client.connect(http, base)
        await asyncio.sleep(seconds)
        after = await _scrape(http, base)
        for client in clients:
            await client.close()
    per_session = [burst_summary(client, seconds) for client in clients]
    dropped, fraction = _dropped_fraction(after, before)
    return per_session[0] | {
        "sessions": sessions,
        "frames_dropped_by_server": dropped,
        "dropped_fraction": fraction,
        "stages": stage_breakdown(after, before),
        "per_session": per_session if sessions > 1 else [],
    }


async def first_frames(base: str, assets: AvatarAssets, speech: np.ndarray, trials: int) -> dict:
    offer_to_frame, ice_to_frame = [], []
    async with aiohttp.ClientSession() as http:
        for _ in range(trials):
            client = Client(assets, speech)
            await client.connect(http, base)
            async with asyncio.timeout(20):
                await client.next_frame()
            offer_to_frame.append(client.first_frame_at - client.offered_at)
            if not np.isnan(client.connected_at):
                ice_to_frame.append(client.first_frame_at - client.connected_at)
            async with http.delete(f"{base}/sessions/{client.session_id}"):
                pass
            await client.close()
    return {
        "trials": trials,
        "offer_to_first_frame": _summary(offer_to_frame),
        "ice_connected_to_first_frame": _summary(ice_to_frame),
    }


async def interrupts(base: str, assets: AvatarAssets, speech: np.ndarray, trials: int) -> dict:
    """Each trial waits for the mouth to move in a burst, waits 0.2 s more, interrupts (HTTP and the
    data channel in turn), and times the first idle frame."""
    client = Client(assets, speech, every=2.5, length=1.5)
    channel = client.pc.createDataChannel("control")
    results: dict[str, list[float]] = {"http": [], "data_channel": []}
    async with aiohttp.ClientSession() as http:
        await client.connect(http, base)
        async with asyncio.timeout(60 + 5 * trials):
            for trial in range(trials):
                while not await client.next_frame():
                    pass
                await asyncio.sleep(0.2)
                if not client.speaking[-1]:
                    continue  # the burst ended meanwhile
                how = "http" if trial % 2 == 0 else "data_channel"
                sent = time.monotonic()
                if how == "http":
                    async with http.post(f"{base}/sessions/{client.session_id}/interrupt"):
                        pass
                else:
                    channel.send("interrupt")
                while await client.next_frame():
                    pass
                results[how].append(client.arrivals[-1] - sent)
                # The rest of this burst still arrives after the interrupt; go on with the next one.
                track = client.track
                next_onset = track.start + np.ceil((time.monotonic() - track.start) / track.every) * track.every
                await asyncio.sleep(next_onset - time.monotonic())
        await client.close()
    return {how: _summary(values) for how, values in results.items()} | {
        "all": _summary(results["http"] + results["data_channel"])
    }


async def concurrency(assets: AvatarAssets, speech: np.ndarray, max_sessions: int, seconds: float) -> list[dict]:
    rows = []
    for sessions in range(1, max_sessions + 1):
        server, base = await asyncio.to_thread(_start_server, sessions)
        try:
            clients = [Client(assets, speech) for _ in range(sessions)]
            async with aiohttp.ClientSession() as http:
                for client in clients:
                    await client.connect(http, base)
                await asyncio.sleep(3)  # connected and flowing
                before, cpu_before, started = await _scrape(http, base), _cpu_seconds(server.pid), time.monotonic()
                counts = [len(c.arrivals) for c in clients]
                await asyncio.sleep(seconds)
                after, cpu_after = await _scrape(http, base), _cpu_seconds(server.pid)
                elapsed = time.monotonic() - started
                received = [len(c.arrivals) - n for c, n in zip(clients, counts, strict=True)]
                for client in clients:
                    await client.close()
        finally:
            server.send_signal(signal.SIGINT)
            await asyncio.to_thread(server.wait, 30)
        _, dropped_fraction = _dropped_fraction(after, before)
        rows.append(
            {
                "sessions": sessions,
                "fps_per_session": [n / elapsed for n in received],
                "min_fps": min(received) / elapsed,
                "dropped_fraction": dropped_fraction,
                "server_cpu_cores": (cpu_after - cpu_before) / elapsed,
                "server_cpu_cores_per_session": (cpu_after - cpu_before) / elapsed / sessions,
            }
        )
    return rows


def holds(row: dict) -> bool:
    """25 fps (24.5 measured at the client) with at most 0.1 % of frames dropped."""
    return row["min_fps"] >= 24.5 and row["dropped_fraction"] <= 0.001


def run_suite(
    minutes: float = 10.0,
    max_sessions: int = 4,
    concurrency_seconds: float = 20.0,
    trials: int = 10,
    speech_path: str | None = None,
    out_dir: Path = Path("benchmarks/results"),
    summary_path: Path | None = Path("benchmarks/RESULTS.md"),
    engine: bool = True,
) -> dict:
    avatar = load_avatar(BENCH_AVATAR)
    assets = AvatarAssets(avatar)
    speech = load_speech(speech_path)

    async def main() -> dict:
        measured: dict = {}
        partial = output_stem(out_dir, "suite-partial").with_suffix(".json")  # what a failed run still keeps
        server, base = await asyncio.to_thread(_start_server, 2)
        try:
            for name, part in (
                ("long_run", long_run(base, assets, speech, 60 * minutes)),
                ("first_frame", first_frames(base, assets, speech, trials)),
                ("interrupt", interrupts(base, assets, speech, trials)),
            ):
                measured[name] = await part
                write_json(partial, measured)
        finally:
            server.send_signal(signal.SIGINT)
            await asyncio.to_thread(server.wait, 30)
        measured["concurrency"] = await concurrency(assets, speech, max_sessions, concurrency_seconds)
        partial.unlink(missing_ok=True)
        return measured

    measured = asyncio.run(main())
    if engine:
        measured["engine"] = run_engine_bench("rt", engines=("onnxruntime",), out_dir=out_dir)
    holding = [row["sessions"] for row in measured["concurrency"] if holds(row)]
    measured["sessions_at_25fps"] = max(holding, default=0)
    payload = {
        "benchmark": "suite",
        "machine": machine_info(),
        "commit": git_commit(),
        "settings": {
            "engine": "onnxruntime (CPU)",
            "profile": "rt",
            "server": "lipstream serve, own process, loopback",
            "avatar": avatar.name,
            "minutes": minutes,
            "burst_every_s": DRIFT_BURST_EVERY,
            "burst_s": DRIFT_BURST_LENGTH,
            "trials": trials,
            "concurrency_seconds": concurrency_seconds,
            "mel_lookahead_ms": 1e3 * serving_config().lookahead_seconds,
        },
    } | measured
    stem = output_stem(out_dir, "suite")
    write_json(stem.with_suffix(".json"), payload)
    plots = plot_suite(payload, stem)
    payload["files"] = [str(stem.with_suffix(".json")), *map(str, plots)]
    if summary_path is not None:
        publish_summary(payload, plots, summary_path)
    return payload


def publish_summary(payload: dict, plots: list[Path], summary_path: Path) -> None:
    """The markdown summary, with copies of the JSON and plots beside it (RESULTS.json,
    RESULTS-plots.png), which are committed while the timestamped history stays local."""
    stem = summary_path.with_suffix("")
    copies = []
    for plot in plots:
        copy = stem.with_name(stem.name + "-" + plot.name.rsplit("-", 1)[-1])
        shutil.copyfile(plot, copy)
        copies.append(copy)
    write_json(stem.with_suffix(".json"), payload)
    summary_path.write_text(summary_markdown(payload, [Path(os.path.relpath(c, summary_path.parent)) for c in copies]))
    payload["files"] += [str(summary_path), str(stem.with_suffix(".json")), *map(str, copies)]


def plot_suite(payload: dict, stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = payload["long_run"]
    samples = run["samples"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    t = [s["t_s"] / 60 for s in samples]
    for key, label in (("mouth_ms", "audio in -> mouth out"), ("audio_ms", "audio in -> audio out")):
        axes[0].plot(t, [s[key] if s[key] is not None else np.nan for s in samples], ".", ms=3, label=label)
    axes[0].set(xlabel="minutes", ylabel="ms", title="latency per burst")
    axes[0].legend(fontsize=8)
    offsets = [
        s["mouth_ms"] - s["audio_ms"] if s["mouth_ms"] is not None and s["audio_ms"] is not None else np.nan
        for s in samples
    ]
    axes[1].plot(t, offsets, ".", ms=3)
    axes[1].axhspan(-FRAME_MS, FRAME_MS, color="g", alpha=0.1, label="within one frame")
    axes[1].set(xlabel="minutes", ylabel="mouth - audio, ms", title="A/V offset (drift)")
    axes[1].legend(fontsize=8)
    rows = payload["concurrency"]
    ns = [r["sessions"] for r in rows]
    axes[2].plot(ns, [r["min_fps"] for r in rows], "o-", label="lowest session fps")
    axes[2].axhline(25, color="gray", lw=0.8)
    axes[2].set(xlabel="sessions", ylabel="fps", title="concurrency")
    twin = axes[2].twinx()
    twin.plot(ns, [r["server_cpu_cores"] for r in rows], "s--", color="C1", label="server CPU (cores)")
    twin.set_ylabel("server CPU, cores")
    axes[2].legend(loc="lower left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = stem.with_name(stem.name + "-plots.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _ms(summary: dict | None, key: str = "p50_ms") -> str:
    return "n/a" if summary is None else f"{summary[key]:.0f} ms"


def summary_markdown(payload: dict, plots: list[Path]) -> str:
    run, first, stop = payload["long_run"], payload["first_frame"], payload["interrupt"]
    machine, settings = payload["machine"], payload["settings"]
    drift = run["drift_frames"]

    def check(summary: dict | None, key: str, target: float) -> str:
        return _verdict(summary is not None and summary[key] <= target)

    latency, audio, ice = run["audio_to_mouth"], run["audio_to_audio"], first["ice_connected_to_first_frame"]
    offset = "n/a" if run["av_offset_ms"] is None else f"{run['av_offset_ms']['p50']:+.0f} ms"
    drift_text = "n/a" if drift is None else f"{drift:.2f} frames ({run['drift_ms']:+.0f} ms)"
    sessions = payload["sessions_at_25fps"]
    t = TARGETS
    rows = [
        ("audio in -> mouth out, p50", _ms(latency), f"<= {t['audio_to_mouth_p50_ms']} ms",
         check(latency, "p50_ms", t["audio_to_mouth_p50_ms"])),
        ("audio in -> mouth out, p95", _ms(latency, "p95_ms"), f"<= {t['audio_to_mouth_p95_ms']} ms",
         check(latency, "p95_ms", t["audio_to_mouth_p95_ms"])),
        ("audio in -> audio out, p50", _ms(audio), "", ""),
        ("A/V offset (mouth - audio), p50", offset, "", ""),
        (f"drift over {settings['minutes']:g} min", drift_text, f"<= {t['drift_frames']} frame",
         _verdict(drift is not None and drift <= t["drift_frames"])),
        ("offer -> first frame, p50", _ms(first["offer_to_first_frame"]), "", ""),
        ("ICE connected -> first frame, p50", _ms(ice), f"<= {t['first_frame_after_ice_ms']} ms",
         check(ice, "p50_ms", t["first_frame_after_ice_ms"])),
        ("interrupt -> first idle frame, p50 (HTTP / data channel)",
         f"{_ms(stop['http'])} / {_ms(stop['data_channel'])}", f"<= {t['interrupt_ms']} ms",
         check(stop["all"], "p50_ms", t["interrupt_ms"])),
        ("sessions holding 25 fps (<= 0.1 % dropped)", str(sessions), f">= {t['sessions_at_25fps']} (stretch 4)",
         _verdict(sessions >= t["sessions_at_25fps"])),
    ]  # fmt: skip
    lines = [
        "# Latency benchmark results",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['platform']}; commit `{payload['commit']}`.",
        f"Engine: {settings['engine']}, profile `{settings['profile']}`, avatar `{settings['avatar']}`; "
        f"the server is `lipstream serve` in its own process, clients are aiortc peers over loopback.",
        "",
        "Regenerate: `lipstream bench all --minutes "
        f"{settings['minutes']:g}` (writes this file, RESULTS.json with every sample, RESULTS-plots.png, "
        "and a timestamped copy under `benchmarks/results/`).",
        "",
        "| measure | measured | target | |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        f"Bursts of {settings['burst_s']:g} s of speech every {settings['burst_every_s']:g} s: {run['bursts']} "
        f"bursts; received {run['fps']:.2f} fps; {run['frames_dropped_by_server']:.0f} frames dropped by the server.",
        "Mouth out is the first frame whose lips are 3 grey levels from rest (`benchmarks/motion.py`). Each "
        f"frame's mel window reaches {settings['mel_lookahead_ms']:.1f} ms past the frame's own audio, so a "
        "frame before the onset's own frame already reacts to it: the first reaction waits for audio up to "
        "the end of that earlier window (0-40 ms after the onset), the jitter buffer (1 frame) and one tick "
        "of inference and compositing. The frame of the onset itself comes a look-ahead later; a shorter "
        "look-ahead (`MelConfig.window_shift` + `SERVING_LEAD`) brings it 40 ms earlier per frame of shift, at the "
        "price of "
        "less future context for the mouth shape (plosives are prepared before they sound).",
        "",
        "## Stage breakdown (server, per call)",
        "",
        "| stage | calls | mean | p95 at most |",
        "|---|---|---|---|",
        *(
            f"| {stage} | {v['calls']} | {v['mean_ms']:.2f} ms | {v['p95_ms_at_most']:.1f} ms |"
            for stage, v in sorted(run["stages"].items(), key=lambda kv: kv[0])
        ),
        "",
        "resample, vad and mel run per pushed audio chunk (20 ms over WebRTC); inference and composite once "
        "per 40 ms tick for all sessions; video_queue is a frame's wait for its sender; encode_send is aiortc's "
        "VP8 encoding and sending of one frame.",
        "",
        "## Concurrency",
        "",
        "| sessions | lowest fps | dropped | server CPU (cores) | per session |",
        "|---|---|---|---|---|",
        *(
            f"| {r['sessions']} | {r['min_fps']:.2f} | {100 * r['dropped_fraction']:.2f} % | "
            f"{r['server_cpu_cores']:.2f} | {r['server_cpu_cores_per_session']:.2f} |"
            for r in payload["concurrency"]
        ),
        "",
    ]
    if "engine" in payload:
        lines += ["## Engine (per-frame graph)", "", engine_markdown(payload["engine"]), ""]
    lines += ["## Published figures of other systems", "", *(f"- {name}: {claim}" for name, claim in PUBLISHED), ""]
    lines += ["## Plots", "", *(f"![suite plots]({p})" for p in plots), ""]
    return "\n".join(lines)
