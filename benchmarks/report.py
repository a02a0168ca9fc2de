"""What every benchmark records beside its numbers: the machine, the commit, and where files go."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np


def machine_info() -> dict:
    """The host a figure was measured on. The CPU is named with its family and model: virtual machines
    often report only "AMD EPYC" or "Intel Xeon", and the same graph ran 3x slower on one Xeon model
    than on the EPYC it was tuned on."""
    cpu = platform.processor()
    try:
        fields = dict(
            (key.strip(), value.strip())
            for key, _, value in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines())
            if value
        )
        cpu = fields.get("model name", cpu)
        if "cpu family" in fields and "model" in fields:
            cpu = f"{cpu} (family {fields['cpu family']}, model {fields['model']})"
    except OSError:
        pass
    packages = {}
    for name in ("lipstream", "torch", "onnxruntime", "numpy"):
        try:
            packages[name] = version(name)
        except Exception:  # a package that is not installed is simply not listed
            continue
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "packages": packages,
    }


def _git(*args: str) -> str:
    here = Path(__file__).resolve().parent
    return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True, cwd=here).stdout


def git_commit() -> str:
    """Short hash of the checkout the benchmark ran from, "-dirty" when tracked files were changed."""
    try:
        dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
        return _git("rev-parse", "--short", "HEAD").strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)), "min_ms": float(ms.min())}


def output_stem(out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2))
