"""Soak run: `lipstream bench soak [--minutes 30] [--sessions 2]`.

The suite's drift mode held for a long time with several sessions at once: `lipstream serve` in its
own process, N aiortc clients over loopback, each sending a 0.8 s speech burst every 2 s. It checks
what a presenter relies on over a long show:

- the server is still alive at the end and answers /health;
- at most 0.1 % of frames dropped by the server, every session received at 25 fps;
- A/V drift (median mouth - audio offset of the last minute minus the first) of at most one frame,
  per session;
- the server's resident memory and threads at the start and the end, and its error counters.

It writes `benchmarks/SOAK.md`, `benchmarks/SOAK.json` (every burst of every session) and
`benchmarks/SOAK-plots.png`, with a timestamped copy of the JSON under `benchmarks/results/`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from lipstream.realtime.compositor import AvatarAssets
from lipstream.realtime.runtime import load_avatar

from .report import git_commit, machine_info, output_stem, write_json
from .session_bench import BENCH_AVATAR, _metric, _start_server, load_speech
from .suite import DRIFT_BURST_EVERY, DRIFT_BURST_LENGTH, FRAME_MS, _cpu_seconds, _scrape, long_run

MAX_DROPPED = 0.001
MIN_FPS = 24.5
ERROR_COUNTERS = (
    "lipstream_inference_errors_total",
    "lipstream_inference_timeouts_total",
    "lipstream_inference_skipped_total",
)


def process_status(pid: int) -> dict:
    """Resident memory (MiB) and thread count of a process (psutil)."""
    process = psutil.Process(pid)
    with process.oneshot():
        return {"rss_mib": process.memory_info().rss / 2**20, "threads": process.num_threads()}


def verdicts(payload: dict) -> dict[str, bool]:
    run = payload["run"]
    sessions = run["per_session"] or [run]
    drifts = [s["drift_frames"] for s in sessions]
    return {
        "server alive at the end": payload["server_alive"],
        f"dropped <= {100 * MAX_DROPPED:g} %": run["dropped_fraction"] <= MAX_DROPPED,
        f"every session >= {MIN_FPS} fps": min(s["fps"] for s in sessions) >= MIN_FPS,
        "A/V drift <= 1 frame": all(d is not None and d <= 1 for d in drifts),
    }


async def _soak(base: str, pid: int, assets: AvatarAssets, speech: np.ndarray, seconds: float, sessions: int) -> dict:
    async with aiohttp.ClientSession() as http:
        before = await _scrape(http, base)
    start_status, cpu_before, started = process_status(pid), _cpu_seconds(pid), time.monotonic()
    running = asyncio.ensure_future(long_run(base, assets, speech, seconds, sessions))
    await asyncio.sleep(min(60.0, seconds / 4))  # sessions open and warm: later growth would be a leak
    warm_status = process_status(pid)
    run = await running
    elapsed = time.monotonic() - started
    end_status, cpu_after = process_status(pid), _cpu_seconds(pid)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/health") as response:
            healthy = response.status == 200
        after = await _scrape(http, base)
    return {
        "run": run,
        "server_alive": healthy,
        "server_start": start_status,
        "server_warm": warm_status,
        "server_end": end_status,
        "server_cpu_cores": (cpu_after - cpu_before) / elapsed,
        "errors": {name: _metric(after, name) - _metric(before, name) for name in ERROR_COUNTERS},
    }


def run_soak(
    minutes: float = 30.0,
    sessions: int = 2,
    speech_path: str | None = None,
    out_dir: Path = Path("benchmarks/results"),
    summary_path: Path | None = Path("benchmarks/SOAK.md"),
) -> dict:
    avatar = load_avatar(BENCH_AVATAR)
    assets = AvatarAssets(avatar)
    speech = load_speech(speech_path)
    server, base = _start_server(sessions)
    try:
        measured = asyncio.run(_soak(base, server.pid, assets, speech, 60 * minutes, sessions))
        measured["server_alive"] = measured["server_alive"] and server.poll() is None
    finally:
        server.send_signal(signal.SIGINT)
        exit_code = server.wait(timeout=30)
    payload = {
        "benchmark": "soak",
        "machine": machine_info(),
        "commit": git_commit(),
        "settings": {
            "minutes": minutes,
            "sessions": sessions,
            "engine": "onnxruntime (CPU)",
            "server": "lipstream serve, own process, loopback",
            "avatar": avatar.name,
            "burst_every_s": DRIFT_BURST_EVERY,
            "burst_s": DRIFT_BURST_LENGTH,
        },
        "server_exit_code": exit_code,
    } | measured
    payload["verdicts"] = verdicts(payload)
    payload["passed"] = all(payload["verdicts"].values())
    stem = output_stem(out_dir, f"soak-{sessions}x{round(60 * minutes)}s")
    write_json(stem.with_suffix(".json"), payload)
    payload["files"] = [str(stem.with_suffix(".json"))]
    if summary_path is not None:
        plot = summary_path.with_name(summary_path.stem + "-plots.png")
        plot_soak(payload, plot)
        write_json(summary_path.with_suffix(".json"), payload)
        summary_path.write_text(soak_markdown(payload, plot.name))
        payload["files"] += [str(summary_path), str(summary_path.with_suffix(".json")), str(plot)]
    return payload


def plot_soak(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = payload["run"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    for index, session in enumerate(run["per_session"] or [run]):
        samples = session["samples"]
        t = [s["t_s"] / 60 for s in samples]
        offsets = [
            s["mouth_ms"] - s["audio_ms"] if s["mouth_ms"] is not None and s["audio_ms"] is not None else np.nan
            for s in samples
        ]
        mouth = [s["mouth_ms"] if s["mouth_ms"] is not None else np.nan for s in samples]
        axes[0].plot(t, offsets, ".", ms=2, label=f"session {index + 1}")
        axes[1].plot(t, mouth, ".", ms=2, label=f"session {index + 1}")
    axes[0].axhspan(-FRAME_MS, FRAME_MS, color="g", alpha=0.1)
    axes[0].set(xlabel="minutes", ylabel="mouth - audio, ms", title="A/V offset per burst")
    axes[1].set(xlabel="minutes", ylabel="ms", title="audio in -> mouth out per burst")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


OFFSET_NOTE = (
    "A/V offset: per burst, the first frame whose mouth differs from the template minus the first loud "
    "audio. The blend into the generated mouth starts up to 4 frames before the speech it leads to (so that "
    "it is complete at the onset), so about -100 ms is the design, not a lag of the sound; lip sync over "
    "time is judged by the drift, the change of that offset from the first minute to the last."
)


def soak_markdown(payload: dict, plot_name: str) -> str:
    run, settings, machine = payload["run"], payload["settings"], payload["machine"]
    sessions = run["per_session"] or [run]
    start, warm, end = payload["server_start"], payload["server_warm"], payload["server_end"]
    lines = [
        "# Soak run",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; commit `{payload['commit']}`. "
        f"{settings['sessions']} sessions for {settings['minutes']:g} minutes on `lipstream serve` "
        f"({settings['engine']}, avatar `{settings['avatar']}`), aiortc clients over loopback, each sending "
        f"{settings['burst_s']:g} s of speech every {settings['burst_every_s']:g} s.",
        "",
        f"Regenerate: `lipstream bench soak --minutes {settings['minutes']:g} --sessions {settings['sessions']}` "
        "(writes this file, SOAK.json with every burst, SOAK-plots.png).",
        "",
        f"Result: **{'passed' if payload['passed'] else 'failed'}**.",
        "",
        "| check | |",
        "|---|---|",
        *(f"| {name} | {'met' if ok else '**missed**'} |" for name, ok in payload["verdicts"].items()),
        "",
        "| session | bursts | fps received | audio -> mouth p50 / p95 | A/V offset p50 | drift |",
        "|---|---|---|---|---|---|",
    ]
    for index, s in enumerate(sessions):
        mouth, offset = s["audio_to_mouth"], s["av_offset_ms"]
        drift = "n/a" if s["drift_ms"] is None else f"{s['drift_frames']:.2f} frames ({s['drift_ms']:+.0f} ms)"
        lines.append(
            f"| {index + 1} | {s['bursts']} | {s['fps']:.2f} | "
            + ("n/a" if mouth is None else f"{mouth['p50_ms']:.0f} / {mouth['p95_ms']:.0f} ms")
            + f" | {'n/a' if offset is None else format(offset['p50'], '+.0f') + ' ms'} | {drift} |"
        )
    errors = ", ".join(f"{name.removeprefix('lipstream_')} {value:g}" for name, value in payload["errors"].items())
    lines += [
        "",
        f"Frames dropped by the server: {run['frames_dropped_by_server']:.0f} "
        f"({100 * run['dropped_fraction']:.3f} % of all frames due). Error counters over the run: {errors}.",
        f"Server, before the sessions -> sessions warm (after {min(60.0, 60 * settings['minutes'] / 4):g} s) -> "
        f"end: resident memory {start['rss_mib']:.0f} -> {warm['rss_mib']:.0f} -> {end['rss_mib']:.0f} MiB, "
        f"threads {start['threads']} -> {warm['threads']} -> {end['threads']}; "
        f"{payload['server_cpu_cores']:.2f} cores on average; exit code after SIGINT {payload['server_exit_code']}.",
        "",
        OFFSET_NOTE,
        "",
        f"![soak plots]({plot_name})",
        "",
    ]
    return "\n".join(lines)
