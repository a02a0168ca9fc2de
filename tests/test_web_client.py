"""The browser demo client in a real headless Chromium (Debian's package), against the real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("LIPSTREAM_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
LIPSTREAM = Path(sys.executable).with_name("lipstream")
QUIET_CHROMIUM = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

if not CHROMIUM.is_file():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium at /usr/bin/chromium; .ci/run installs it")
    pytest.skip(
        "needs Debian's chromium package at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import Browser, Page, Playwright, sync_playwright  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(cache: Path, samples: Path, max_sessions: int = 4) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [
            str(LIPSTREAM),
            "serve",
            "--port",
            str(port),
            "--engine",
            "onnxruntime",
            "--samples",
            str(samples),
            "--max-sessions",
            str(max_sessions),
            "--admission",  # Chromium shares these cores: measured admission is tested in test_capacity.py
            "count",
        ],
        env={**os.environ, "LIPSTREAM_CACHE": str(cache)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                json.loads(response.read())
            return server, base
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read()[-3000:]) from None
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start") from None
            time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def server(speech_then_silence: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, base = start_server(tmp_path_factory.mktemp("cache"), speech_then_silence.parent)
    yield base
    stop(process)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="module")
def browser(playwright: Playwright, speech_then_silence: Path) -> Iterator[Browser]:
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=[
            *QUIET_CHROMIUM,
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={speech_then_silence}",
        ],
    )
    yield launched
    launched.close()


# Records, for every decoded video frame, how much the lower middle of the picture (the mouth) changed
# since the previous frame, and the frame's time.
WATCH_MOUTH = """
() => {
  const video = document.getElementById('avatar');
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  window.mouth = [];
  let previous = null;
  const onFrame = (now) => {
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    ctx.drawImage(video, 0, 0);
    const w = canvas.width, h = canvas.height;
    const [x, y, bw, bh] = [w * 0.36, h * 0.2, w * 0.14, h * 0.1].map(Math.round);
    const box = ctx.getImageData(x, y, bw, bh).data;
    if (previous && previous.length === box.length) {
      let sum = 0;
      for (let i = 0; i < box.length; i += 4) {
        sum += Math.abs(box[i] - previous[i]) + Math.abs(box[i + 1] - previous[i + 1]);
      }
      window.mouth.push([now, sum / (box.length / 2)]);
    }
    previous = box;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}
"""


def connect(page: Page, base: str, source: str) -> None:
    page.goto(base)
    page.wait_for_function("document.getElementById('avatar-select').options.length > 0")
    page.select_option("#input-select", source)
    page.click("#connect")
    page.wait_for_function("document.getElementById('avatar').readyState >= 2", timeout=60_000)
    page.evaluate(WATCH_MOUTH)


def mouth_trace(page: Page, seconds: float) -> np.ndarray:
    page.wait_for_timeout(seconds * 1000)
    return np.array(page.evaluate("window.mouth"))


def test_live_session_from_the_microphone(browser: Browser, server: str) -> None:
    page = browser.new_page()
    connect(page, server, "microphone")
    trace = mouth_trace(page, 8.0)  # the fake microphone loops 2 s of speech and 3 s of silence
    page.screenshot(path=str(ARTIFACTS / "web_client_speaking.png"))
    times, motion = trace[:, 0] / 1000, trace[:, 1]
    fps = (len(times) - 1) / (times[-1] - times[0])
    assert 20.0 <= fps <= 30.0, f"the browser saw {fps:.1f} fps"
    assert motion.max() > 5.0, "the mouth moves while the microphone speaks"
    quiet = [motion[(times >= t) & (times < t + 1.0)].max() for t in np.arange(times[0], times[-1] - 1.0, 0.2)]
    # Still: an order of magnitude below speech (what is left is the codec's noise, which a loaded
    # machine's lower bitrate raises to about 1.5 grey levels).
    assert min(quiet) < max(1.0, 0.1 * motion.max()), "and keeps still for a second of silence"
    page.wait_for_function("document.getElementById('stat-fps').textContent !== '-'")
    stats = {k: page.text_content(f"#stat-{k}") for k in ("fps", "resolution", "rtt", "jitter", "lost", "delay")}
    assert float(stats["fps"]) > 15 and "×" in stats["resolution"] and stats["rtt"].endswith("ms")
    assert stats["jitter"].endswith("ms") and stats["lost"].isdigit() and stats["delay"].endswith("ms")
    (ARTIFACTS / "web_client_stats.json").write_text(json.dumps({"fps_measured": fps, "panel": stats}, indent=2))
    page.click("#disconnect")
    page.wait_for_selector("#connect:not([disabled])")
    connect(page, server, "microphone")  # reconnect without reloading
    assert len(mouth_trace(page, 2.0)) > 30
    page.close()


def test_a_sample_streams_and_interrupt_goes_idle(browser: Browser, server: str) -> None:
    page = browser.new_page()
    connect(page, server, "sample:speech_then_silence.wav")
    page.wait_for_function("window.mouth.some(([t, m]) => m > 5)", timeout=20_000)
    page.wait_for_timeout(400)
    page.screenshot(path=str(ARTIFACTS / "web_client_sample.png"))
    page.click("#interrupt")
    clicked = page.evaluate("performance.now()")
    trace = mouth_trace(page, 1.5)
    # Speech moves the mouth region by 10-20 grey levels a frame, often more; a video codec refining a
    # still picture after a change moves it by up to about 8. Idle = never above 12 again, mostly still.
    speaking = trace[(trace[:, 0] > clicked) & (trace[:, 1] > 12.0)]
    idle_after_ms = float(speaking[-1, 0] - clicked) if len(speaking) else 0.0
    (ARTIFACTS / "web_client_interrupt.json").write_text(
        json.dumps({"last_speech_frame_after_click_ms": idle_after_ms})
    )
    after = trace[trace[:, 0] > clicked + 200][:, 1]
    assert len(after) > 20 and after.max() < 12.0 and np.median(after) < 0.5, "idle after the interrupt"
    assert "Interrupted" in page.text_content("#status")
    page.close()


def test_errors_are_shown_plainly(playwright: Playwright, speech_then_silence: Path, tmp_path: Path) -> None:
    # A fake microphone but no fake permission prompt: the request is denied. No device at all: not found.
    denied = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=[*QUIET_CHROMIUM, "--use-fake-device-for-media-stream"]
    )
    no_device = playwright.chromium.launch(executable_path=str(CHROMIUM), args=QUIET_CHROMIUM)
    process, base = start_server(tmp_path / "cache", speech_then_silence.parent, max_sessions=1)
    try:
        for browser, message in ((denied, "Microphone permission was denied"), (no_device, "No microphone")):
            page = browser.new_page()
            page.goto(base)
            page.wait_for_function("document.getElementById('avatar-select').options.length > 0")
            page.click("#connect")
            page.wait_for_selector("#error:not([hidden])")
            assert message in page.text_content("#error")
        page.screenshot(path=str(ARTIFACTS / "web_client_no_microphone.png"))
        page = denied.new_page()
        page.goto(base)
        page.wait_for_function("document.getElementById('avatar-select').options.length > 0")
        # Server busy: one sample session takes the only seat, the next is told to retry.
        first = denied.new_page()
        connect(first, base, "sample:speech_then_silence.wav")
        page.select_option("#input-select", "sample:speech_then_silence.wav")
        page.click("#connect")
        page.wait_for_function("document.getElementById('error').textContent.includes('busy')")
        page.screenshot(path=str(ARTIFACTS / "web_client_busy.png"))
        # Server gone.
        stop(process)
        first.wait_for_function(
            "document.getElementById('error').textContent.includes('server is gone')", timeout=20_000
        )
        first.screenshot(path=str(ARTIFACTS / "web_client_server_gone.png"))
        assert not first.is_disabled("#connect"), "the page can reconnect without reloading"
    finally:
        stop(process)
        denied.close()
        no_device.close()


def test_page_basics_for_keyboard_and_screen_readers(browser: Browser, server: str) -> None:
    page = browser.new_page()
    page.goto(server)
    for control in ("avatar-select", "input-select"):
        assert page.locator(f"label[for='{control}']").count() == 1
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "avatar-select"
    assert page.get_attribute("#error", "role") == "alert" and page.get_attribute("#status", "role") == "status"
    page.close()
