"""Engine benchmark: latency per call and frames/s of the per-frame graph, per engine and batch size.

lipstream bench engine [--profile rt] [--engines onnxruntime,torch] [--batches 1,2,4,8,16]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lipstream.engines.base import Engine
from lipstream.engines.onnxruntime_engine import OnnxRuntimeEngine
from lipstream.engines.select import open_engine, resolve_kind
from lipstream.export.onnx_export import export_onnx
from lipstream.models.weights import load_stylesync

from .report import git_commit, machine_info, output_stem, percentiles_ms, write_json


def random_feed(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal((batch, *s.shape)).astype(np.float32) for s in engine.inputs}


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


def run_engine_bench(
    profile: str = "rt",
    engines: tuple[str, ...] = ("onnxruntime", "torch"),
    batches: tuple[int, ...] = (1, 2, 4, 8, 16),
    runs: int = 30,
    ort_threads: tuple[int, ...] = (1, 2),
    out_dir: Path = Path("benchmarks/results"),
) -> dict:
    kinds = [resolve_kind(k) for k in engines]
    export = export_onnx(profile, fp16=any(k in ("tensorrt", "onnxruntime-cuda") for k in kinds))
    model, _ = load_stylesync(profile)
    results = []
    for kind in kinds:
        if kind == "onnxruntime":  # the thread count is measured, not assumed
            factories = [
                (
                    f"onnxruntime ({t} threads)",
                    lambda t=t: OnnxRuntimeEngine(
                        export.graph_path("frame"), "frame", export.settings["model_id"], threads=t
                    ),
                )
                for t in ort_threads
            ]
        else:
            factories = [(kind, lambda kind=kind: open_engine(kind, export, "frame", model=model))]
        for label, factory in factories:
            engine = factory()
            for batch in batches:
                results.append({"engine": label, "batch": batch} | time_engine(engine, batch, runs))
            engine.close()
    payload = {
        "benchmark": "engine",
        "machine": machine_info(),
        "commit": git_commit(),
        "settings": {
            "profile": profile,
            "graph": "frame",
            "runs": runs,
            "batches": list(batches),
            "model_id": export.settings["model_id"],
        },
        "results": results,
    }
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
        "| engine | batch | median ms/call | p95 ms/call | ms/frame | frames/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['engine']} | {r['batch']} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | "
            f"{r['per_frame_ms']:.2f} | {r['frames_per_s']:.0f} |"
        )
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
