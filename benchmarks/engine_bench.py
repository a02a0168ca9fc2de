"""Engine benchmark: latency per call and frames/s of the per-frame graph, per engine and batch size,
and how well each uses the CPU.

lipstream bench engine [--profile rt] [--engines onnxruntime,torch] [--batches 1,2,4,8,16] [--rounds 3]
    [--ops] [--variants all,extended,basic,fp16]

Efficiency: in the same run, a plain fp32 matmul (PyTorch, 1024 x 1024) is timed on the same thread
count; the graph's achieved GFLOP/s (frames/s x GFLOPs per frame, counted by torch's flop counter)
over the matmul's GFLOP/s is a figure that a different or busy host changes much less than
milliseconds. Each configuration is timed in `rounds` interleaved rounds and the best kept.
`--ops` adds ONNX Runtime's own profile: the share of time per operator type at batch 1 and 8.
`--variants` times ONNX Runtime's ways of running the graph (engines/select.py's CPU_VARIANTS: its
optimisation levels, and the fp16 graph), the candidates of the server's start-up choice.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from lipstream.engines.base import Engine
from lipstream.engines.select import onnxruntime_variant, open_engine, resolve_kind
from lipstream.engines.variants import random_feed
from lipstream.export.onnx_export import export_onnx
from lipstream.models.report import profile_report
from lipstream.models.weights import load_stylesync

from .report import git_commit, machine_info, output_stem, percentiles_ms, write_json


def time_engine(engine: Engine, batch: int, runs: int, warmup: int = 3) -> dict[str, float]:
    feed = random_feed(engine, batch)
    times = []
    for i in range(warmup + runs):
        start = time.perf_counter()
        engine.run(feed)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    stats = percentiles_ms(times)
    return stats | {"per_frame_ms": stats["median_ms"] / batch, "frames_per_s": 1e3 * batch / stats["median_ms"]}


def matmul_gflops(threads: int, size: int = 1024, runs: int = 10) -> float:
    """The best GFLOP/s of an fp32 size x size matmul in PyTorch on `threads` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(runs))
    finally:
        torch.set_num_threads(before)
    return 2 * size**3 / best / 1e9


def _seconds(fn: object) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ort_op_profile(path: Path, batch: int, runs: int = 20, threads: int = 2) -> list[dict]:
    """ONNX Runtime's profiler over `runs` calls: per operator type, its share of the nodes' time and
    its microseconds per call, largest first."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "ort")
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {i.name: rng.standard_normal((batch, *i.shape[1:])).astype(np.float32) for i in session.get_inputs()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += event["dur"]
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    return [{"op": op, "share": us / whole, "us_per_call": us / runs} for op, us in ranked]


def run_engine_bench(
    profile: str = "rt",
    engines: tuple[str, ...] = ("onnxruntime", "torch"),
    batches: tuple[int, ...] = (1, 2, 4, 8, 16),
    runs: int = 30,
    ort_threads: tuple[int, ...] = (1, 2),
    out_dir: Path = Path("benchmarks/results"),
    rounds: int = 3,
    ops: bool = False,
    variants: tuple[str, ...] = ("all",),
) -> dict:
    import torch

    kinds = [resolve_kind(k) for k in engines]
    export = export_onnx(profile, fp16=any(k in ("tensorrt", "onnxruntime-cuda") for k in kinds) or "fp16" in variants)
    model, _ = load_stylesync(profile)
    gflops = profile_report(profile)["gflops_per_frame"]
    engines_open: list[tuple[str, int, Engine]] = []  # (label, threads, engine)
    for kind in kinds:
        if kind == "onnxruntime":  # the thread count is measured, not assumed
            for variant, t in itertools.product(variants, ort_threads):
                engine = onnxruntime_variant(export, "frame", variant, threads=t)
                label = f"onnxruntime ({t} threads)" if variant == "all" else f"onnxruntime ({t} threads, {variant})"
                engines_open.append((label, t, engine))
        else:
            engine = open_engine(kind, export, "frame", model=model)
            engines_open.append((kind, torch.get_num_threads(), engine))
    best: dict[tuple[str, int], dict] = {}
    matmul: dict[int, float] = {}
    for _ in range(rounds):  # interleaved, so that a neighbour's burst of load hits every configuration
        for label, threads, engine in engines_open:
            for batch in batches:
                timed = time_engine(engine, batch, runs)
                if (label, batch) not in best or timed["median_ms"] < best[label, batch]["median_ms"]:
                    best[label, batch] = timed
            matmul[threads] = max(matmul.get(threads, 0.0), matmul_gflops(threads))
    results = []
    for label, threads, engine in engines_open:
        engine.close()
        for batch in batches:
            timed = best[label, batch]
            achieved = timed["frames_per_s"] * gflops
            results.append(
                {"engine": label, "batch": batch, "threads": threads}
                | timed
                | {
                    "graph_gflops_per_s": achieved,
                    "matmul_gflops_per_s": matmul[threads],
                    "efficiency": achieved / matmul[threads],
                }
            )
    payload = {
        "benchmark": "engine",
        "machine": machine_info(),
        "commit": git_commit(),
        "settings": {
            "profile": profile,
            "graph": "frame",
            "runs": runs,
            "rounds": rounds,
            "batches": list(batches),
            "variants": list(variants),
            "model_id": export.settings["model_id"],
            "gflops_per_frame": gflops,
        },
        "results": results,
    }
    if ops:
        path = export.graph_path("frame")
        payload["ort_ops"] = {str(b): ort_op_profile(path, b, threads=max(ort_threads)) for b in (1, 8)}
    stem = output_stem(out_dir, f"engine-{profile}")
    write_json(stem.with_suffix(".json"), payload)
    plot(results, stem.with_suffix(".png"), profile)
    stem.with_suffix(".md").write_text(markdown(payload))
    payload["files"] = [str(stem.with_suffix(s)) for s in (".json", ".png", ".md")]
    return payload


def markdown(payload: dict) -> str:
    lines = [
        f"Engine benchmark, profile {payload['settings']['profile']}, per-frame graph; "
        f"{payload['machine']['cpu']} ({payload['machine']['cores']} cores), commit {payload['commit']}",
        "",
        f"GFLOPs per frame {payload['settings']['gflops_per_frame']:.3f}; best of "
        f"{payload['settings']['rounds']} interleaved rounds; efficiency = graph GFLOP/s / fp32 matmul GFLOP/s "
        "on the same threads",
        "",
        "| engine | batch | median ms/call | p95 ms/call | ms/frame | frames/s | graph GFLOP/s | matmul GFLOP/s "
        "| efficiency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['engine']} | {r['batch']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['per_frame_ms']:.2f} | {r['frames_per_s']:.0f} | {r['graph_gflops_per_s']:.0f} | "
            f"{r['matmul_gflops_per_s']:.0f} | {r['efficiency']:.2f} |"
        )
    for batch, ops in payload.get("ort_ops", {}).items():
        lines += [
            "",
            f"ONNX Runtime time per operator type, batch {batch}:",
            "",
            "| op | share | us/call |",
            "|---|---|---|",
        ]
        lines += [f"| {o['op']} | {100 * o['share']:.1f} % | {o['us_per_call']:.0f} |" for o in ops[:12]]
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, profile: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["engine"] for r in results):
        rows = [r for r in results if r["engine"] == label]
        axis.plot([r["batch"] for r in rows], [r["frames_per_s"] for r in rows], marker="o", label=label)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size")
    axis.set_ylabel("frames/s (median)")
    axis.set_title(f"per-frame graph, {profile} profile")
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
