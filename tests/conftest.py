"""Shared fixtures: the recordings in ../shared (never copied into the repository)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from lipstream.dsp import read_wav

if TYPE_CHECKING:
    from lipstream.realtime.runtime import Runtime

REPO = Path(__file__).resolve().parent.parent


# `pytest --cpu-durations=N`: the N tests that used the most CPU (this process and the children it has
# waited for), beside pytest's --durations (wall clock). On a busy 2-core machine the run's length follows
# its CPU time, so this list says what to shorten or mark slow.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N", help="list the N most CPU-hungry tests")


_CPU_SECONDS: dict[str, float] = {}


def _cpu_now() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    start = _cpu_now()
    yield
    _CPU_SECONDS[item.nodeid] = _cpu_now() - start


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    count = config.getoption("--cpu-durations")
    if count is None:
        return
    ranked = sorted(_CPU_SECONDS.items(), key=lambda item: -item[1])
    terminalreporter.write_sep("=", f"most CPU time (all tests: {sum(_CPU_SECONDS.values()):.0f} s)")
    for nodeid, seconds in ranked[: count or None]:
        terminalreporter.write_line(f"{seconds:7.2f}s cpu  {nodeid}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout (or $LIPSTREAM_SHARED/data). CI must have it: there a missing
    folder fails the run instead of skipping the tests that read real recordings."""
    root = Path(os.environ.get("LIPSTREAM_SHARED", REPO.parent / "shared")) / "data"
    if not root.is_dir():
        message = f"recordings not found at {root}; put the shared folder beside the checkout or set LIPSTREAM_SHARED"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def speech(shared_data: Path) -> np.ndarray:
    """7.3 s of real English speech, 16 kHz mono float32."""
    samples, rate = read_wav(shared_data / "speech" / "espeak_en.wav")
    assert rate == 16_000
    return samples


@pytest.fixture(scope="session")
def speech_then_silence(speech: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of real speech, then 3 s of silence, as a 16-bit WAV made for the test (never committed),
    alone in its folder so that a server can offer it as a sample."""
    from lipstream.avatars.prepare import write_wav

    path = tmp_path_factory.mktemp("samples") / "speech_then_silence.wav"
    write_wav(path, np.concatenate([speech[8000:40000], np.zeros(48000, np.float32)]), 16_000)
    return path


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One lipstream cache for the run: the default avatar and the exported graphs are made once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def runtime(cache: Path) -> Runtime:
    """The server's runtime on ONNX Runtime with the built-in photo avatar, one per module: a still
    template, so that a frame's mouth is at rest exactly when it equals template frame 0."""
    from lipstream.realtime.runtime import build_runtime

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIPSTREAM_CACHE", str(cache))
        return build_runtime("photo", engine="onnxruntime")
