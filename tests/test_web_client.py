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
from dataclasses import dataclass
from pathlib import Path

import cv2
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
from test_server import assert_25_fps  # noqa: E402

from lipstream.benchmarks.motion import CELL, SPEAKING, lips_box, luma_cells  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(
    cache: Path, samples: Path, max_sessions: int = 4, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
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
            *extra,
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
def server_cache(cache: Path) -> Path:
    return cache  # the run's cache: the default avatar and the graphs are already made


@pytest.fixture(scope="module")
def other_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A page served from another origin (another port), as a customer's web app would be."""
    folder = tmp_path_factory.mktemp("other-origin")
    (folder / "index.html").write_text("<!doctype html><title>another site</title>")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(base, timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("the other origin's page server did not start") from None
            time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(speech_then_silence: Path, server_cache: Path, other_origin: str) -> Iterator[str]:
    # The photo: a still template, so that rest and stillness are exact (the default is a video).
    extra = ("--cors-origin", other_origin, "--avatar", "photo")
    process, base = start_server(server_cache, speech_then_silence.parent, extra=extra)
    yield base
    stop(process)


@dataclass
class Lips:
    """Where the served avatar's lips are, and their luma cells at rest (see lipstream.benchmarks.motion)."""

    box: tuple[int, int, int, int]  # x, y, width, height in pixels
    idle: np.ndarray

    def change(self, cells: np.ndarray) -> np.ndarray:
        """How far the mouth is from rest in each of the frames' cells [frames, rows, cols]."""
        return np.abs(cells - self.idle).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def lips(server: str, server_cache: Path) -> Lips:
    avatar = server_cache / "avatars" / "photo-rt"  # prepared by the server as it started
    rows, cols = lips_box(np.load(avatar / "landmarks.npy")[0])
    idle = cv2.imread(str(avatar / "frames" / "000000.jpg"))[..., ::-1]  # what is shown in silence
    return Lips((cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start), luma_cells(idle[rows, cols]))


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


# Records, for every decoded video frame, its time, its RTP timestamp and the mean luma of 6 x 6 pixel cells in a box
# (whole cells), as lipstream.benchmarks.motion does for the server tests.
WATCH_MOUTH = """
([x, y, width, height]) => {
  const video = document.getElementById('avatar');
  const canvas = document.createElement('canvas');
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  const columns = width / 6;
  window.mouth = [];
  const onFrame = (now, metadata) => {
    canvas.width = video.videoWidth; canvas.height = video.videoHeight;
    ctx.drawImage(video, 0, 0);
    const pixels = ctx.getImageData(x, y, width, height).data;
    const cells = new Array(columns * (height / 6)).fill(0);
    for (let i = 0; i < width * height; i++) {
      const luma = 0.299 * pixels[4 * i] + 0.587 * pixels[4 * i + 1] + 0.114 * pixels[4 * i + 2];
      cells[Math.floor(i / width / 6) * columns + Math.floor((i % width) / 6)] += luma / 36;
    }
    window.mouth.push([now, metadata.rtpTimestamp, cells]);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}
"""


def connect(page: Page, base: str, source: str, box: tuple[int, int, int, int] = (0, 0, CELL, CELL)) -> None:
    page.goto(base)
    page.wait_for_function("document.getElementById('avatar-select').options.length > 0")
    page.select_option("#input-select", source)
    page.click("#connect")
    page.wait_for_function("document.getElementById('avatar').readyState >= 2", timeout=60_000)
    page.evaluate(WATCH_MOUTH, list(box))


def leave(page: Page) -> None:
    """Disconnects as a user does (the page ends its session on the server), then closes the page: the
    module's server allows two sessions per client, and a closed page's peer is noticed only later."""
    page.click("#disconnect")
    page.wait_for_selector("#connect:not([disabled])")
    page.close()


def mouth_trace(page: Page, seconds: float, lips: Lips) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """After `seconds`: each frame's time (s), its distance from rest, its motion since the previous
    frame (grey levels over the lips' cells), and its RTP timestamp."""
    page.wait_for_timeout(seconds * 1000)
    trace = page.evaluate("window.mouth")
    rows, cols = lips.idle.shape
    cells = np.array([frame for _, _, frame in trace], np.float32).reshape(-1, rows, cols)
    motion = np.r_[0.0, np.abs(np.diff(cells, axis=0)).mean(axis=(1, 2))]
    times = np.array([t for t, _, _ in trace]) / 1000
    return times, lips.change(cells), motion, [stamp for _, stamp, _ in trace]


def test_live_session_from_the_microphone(browser: Browser, server: str, lips: Lips) -> None:
    page = browser.new_page()
    connect(page, server, "microphone", lips.box)
    # The fake microphone loops 2 s of speech and 3 s of silence.
    times, change, motion, stamps = mouth_trace(page, 8.0, lips)
    page.screenshot(path=str(ARTIFACTS / "web_client_speaking.png"))
    assert_25_fps(stamps, list(times), share=0.75)  # the browser may leave a frame unshown now and then
    fps = (len(times) - 1) / (times[-1] - times[0])  # reported, not asserted: it is the machine's speed
    assert (change > SPEAKING).sum() >= 25, "the mouth moves while the microphone speaks"
    rest = [change[(times >= t) & (times < t + 1.0)].max() for t in np.arange(times[0], times[-1] - 1.0, 0.2)]
    still = [motion[(times >= t) & (times < t + 1.0)].max() for t in np.arange(times[0], times[-1] - 1.0, 0.2)]
    assert min(rest) < SPEAKING and min(still) < 1.0, "and rests, still, for a second of silence"
    page.wait_for_function("document.getElementById('stat-fps').textContent !== '-'")
    stats = {k: page.text_content(f"#stat-{k}") for k in ("fps", "resolution", "rtt", "jitter", "lost", "delay")}
    assert float(stats["fps"]) > 0 and "×" in stats["resolution"] and stats["rtt"].endswith("ms")
    assert stats["jitter"].endswith("ms") and stats["lost"].isdigit() and stats["delay"].endswith("ms")
    (ARTIFACTS / "web_client_stats.json").write_text(json.dumps({"fps_measured": fps, "panel": stats}, indent=2))
    page.click("#disconnect")
    page.wait_for_selector("#connect:not([disabled])")
    connect(page, server, "microphone", lips.box)  # reconnect without reloading
    times, _, _, stamps = mouth_trace(page, 2.0, lips)
    assert_25_fps(stamps, list(times), share=0.75)
    leave(page)


def test_a_sample_streams_and_interrupt_goes_idle(browser: Browser, server: str, lips: Lips) -> None:
    page = browser.new_page()
    connect(page, server, "sample:speech_then_silence.wav", lips.box)
    times, change, _, _ = mouth_trace(page, 1.2, lips)  # the sample speaks for 2 s
    assert (change > SPEAKING).sum() >= 5, "the sample moves the mouth"
    page.screenshot(path=str(ARTIFACTS / "web_client_sample.png"))
    page.click("#interrupt")
    clicked = page.evaluate("performance.now()") / 1000
    times, change, motion, _ = mouth_trace(page, 1.5, lips)
    speaking = times[(times > clicked) & (change > SPEAKING)]
    idle_after_ms = 1000 * float(speaking[-1] - clicked) if len(speaking) else 0.0
    (ARTIFACTS / "web_client_interrupt.json").write_text(
        json.dumps({"last_speech_frame_after_click_ms": idle_after_ms})
    )
    after = times > clicked + 0.2
    assert after.sum() > 20 and change[after].max() < SPEAKING and np.median(motion[after]) < 0.5, "idle after"
    assert "Interrupted" in page.text_content("#status")
    # The server's playback events reached the page over its data channel, and the page shows them.
    events = page.evaluate("window.lipstreamEvents")
    # (On a loaded host an underrun may end an utterance before the click; the interrupted one must come.)
    ended = [e for e in events if e["event"] == "speech_ended" and e["interrupted"]]
    assert ended and ended[0]["position_s"] > 0, events
    # A microphone (or a sample played through it) never stops sending: after the interrupt its audio
    # starts a new utterance, which the panel shows.
    last = events[-1]
    expected = {
        "speech_started": lambda: f"speaking (from frame {last['frame']})",
        "speech_ended": lambda: (
            f"{'interrupted' if last['interrupted'] else 'finished'} after {last['position_s']:.2f} s"
        ),
        "idle": lambda: "idle",
    }[last["event"]]()
    assert page.text_content("#stat-playback") == expected
    leave(page)


def test_microphone_errors_are_shown_plainly(playwright: Playwright, server: str) -> None:
    # A fake microphone but no fake permission prompt: the request is denied. No device at all: not found.
    denied = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=[*QUIET_CHROMIUM, "--use-fake-device-for-media-stream"]
    )
    no_device = playwright.chromium.launch(executable_path=str(CHROMIUM), args=QUIET_CHROMIUM)
    try:
        for browser, message in ((denied, "Microphone permission was denied"), (no_device, "No microphone")):
            page = browser.new_page()
            page.goto(server)
            page.wait_for_function("document.getElementById('avatar-select').options.length > 0")
            page.click("#connect")
            page.wait_for_selector("#error:not([hidden])")
            assert message in page.text_content("#error")
            assert not page.is_disabled("#connect"), "the page can try again"
        page.screenshot(path=str(ARTIFACTS / "web_client_no_microphone.png"))
    finally:
        denied.close()
        no_device.close()


def test_a_busy_or_vanished_server_is_shown_plainly(
    browser: Browser, speech_then_silence: Path, server_cache: Path
) -> None:
    process, base = start_server(server_cache, speech_then_silence.parent, max_sessions=1)
    try:
        # Server busy: one sample session takes the only seat, the next is told to retry.
        first, page = browser.new_page(), browser.new_page()
        connect(first, base, "sample:speech_then_silence.wav")
        page.goto(base)
        page.wait_for_function("document.getElementById('avatar-select').options.length > 0")
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
        for each in (first, page):
            each.close()
    finally:
        stop(process)


def test_page_basics_for_keyboard_and_screen_readers(browser: Browser, server: str) -> None:
    page = browser.new_page()
    page.goto(server)
    for control in ("avatar-select", "input-select"):
        assert page.locator(f"label[for='{control}']").count() == 1
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "avatar-select"
    assert page.get_attribute("#error", "role") == "alert" and page.get_attribute("#status", "role") == "status"
    page.close()


CROSS_ORIGIN_CALL = """async (server) => {
  try {
    const response = await fetch(`${server}/sessions`, {method: "POST", headers: {"Content-Type": "application/json"},
                                                        body: JSON.stringify({})});
    const body = await response.json();
    await fetch(`${server}/sessions/${body.session_id}`, {method: "DELETE"});
    return {status: response.status, location: response.headers.get("Location")};
  } catch (err) {
    return {error: String(err)};
  }
}"""


def test_cors_lets_the_allowed_origin_call_the_api_and_no_other(
    browser: Browser, server: str, other_origin: str
) -> None:
    page = browser.new_page()
    page.goto(other_origin)
    allowed = page.evaluate(CROSS_ORIGIN_CALL, server)
    assert allowed["status"] == 201 and allowed["location"].startswith("/sessions/"), allowed  # Location exposed
    elsewhere = other_origin.replace("127.0.0.1", "localhost")  # the same page server, another origin
    page.goto(elsewhere)
    refused = page.evaluate(CROSS_ORIGIN_CALL, server)
    assert "error" in refused and "Failed to fetch" in refused["error"], refused
    page.close()


def test_an_audience_watches_through_janus(
    browser: Browser, server_cache: Path, speech_then_silence: Path, lips: Lips, tmp_path: Path
) -> None:
    """The watch page subscribes to a session that the server published once into Janus."""
    import shutil

    from lipstream.deploy.janus import start_janus

    if shutil.which("janus") is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI needs Debian's janus; make test installs it")
        pytest.skip("needs Debian's janus package (apt-get install janus)")
    janus_port = free_port()
    janus = start_janus(tmp_path / "janus", janus_port)
    janus_url = f"http://127.0.0.1:{janus_port}/janus"
    process, base = start_server(server_cache, speech_then_silence.parent, extra=("--janus", janus_url))
    try:

        def post(path: str, data: bytes | None = None, kind: str = "application/json") -> dict:
            request = urllib.request.Request(f"{base}{path}", data=data or b"", headers={"Content-Type": kind})
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        session = post("/sessions")["session_id"]
        where = post(f"/sessions/{session}/publish")
        page = browser.new_page()
        page.goto(f"{base}{where['watch_page']}")
        page.wait_for_function("document.getElementById('avatar').readyState >= 2", timeout=60_000)
        assert page.evaluate("window.watchState.state") == "watching"
        page.evaluate(WATCH_MOUTH, list(lips.box))
        post(f"/sessions/{session}/audio", speech_then_silence.read_bytes(), "audio/wav")
        times, change, _, stamps = mouth_trace(page, 4.0, lips)
        page.screenshot(path=str(ARTIFACTS / "watch_through_janus.png"))
        assert_25_fps(stamps, list(times), share=0.75)
        assert (change > SPEAKING).sum() >= 10, "the viewer sees the avatar speak"
        page.goto(f"{base}/watch")
        page.wait_for_selector("#error:not([hidden])")
        assert "Nothing to watch" in page.text_content("#error")
        page.close()
    finally:
        stop(process)
        janus.terminate()
        janus.wait(timeout=10)
