"""TURN through a real coturn (Debian's `coturn`) on loopback: a session whose every candidate, on both
sides, is relayed, with per-session credentials from coturn's shared secret (realtime/ice.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from test_server import Viewer, assert_25_fps, serving, wait_for_frames
from test_web_client import free_port

from lipstream.cli import build_parser, main, serve_settings
from lipstream.realtime.ice import IceSettings, turn_credential
from lipstream.realtime.runtime import Runtime

if shutil.which("turnserver") is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's coturn; .ci/run installs it (make test)")
    pytest.skip("needs Debian's coturn package (apt-get install coturn)", allow_module_level=True)

SECRET = "a-test-secret-never-used-elsewhere"


def answers_stun(port: int) -> bool:
    """Whether a STUN binding request (RFC 8489) to 127.0.0.1:port gets an answer within 0.2 s."""
    request = struct.pack("!HHI12s", 0x0001, 0, 0x2112A442, os.urandom(12))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        probe.sendto(request, ("127.0.0.1", port))
        try:
            return probe.recv(512)[8:20] == request[8:20]  # our transaction id, answered
        except OSError:
            return False


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """coturn on loopback with REST-API credentials (use-auth-secret); yields its turn: URL."""
    port = free_port()
    relay_from = free_port()
    log = tmp_path_factory.mktemp("coturn") / "turnserver.log"
    process = subprocess.Popen(
        [
            *("turnserver", "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"),
            *("--listening-port", str(port), "--min-port", str(relay_from), "--max-port", str(relay_from + 50)),
            *("--use-auth-secret", "--static-auth-secret", SECRET, "--realm", "lipstream.test"),
            *("--allow-loopback-peers", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"),
            *("--log-file", str(log), "--simple-log", "--pidfile", str(log.with_suffix(".pid"))),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not answers_stun(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"coturn did not start: {log.read_text() if log.exists() else 'no log'}")
    yield f"turn:127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


def test_turn_credentials_follow_coturns_rest_scheme() -> None:
    username, password = turn_credential("s3cret", "session1", 1_800_000_000)
    expected = base64.b64encode(hmac.new(b"s3cret", b"1800000000:session1", hashlib.sha1).digest()).decode()
    assert (username, password) == ("1800000000:session1", expected)
    settings = IceSettings(urls=("stun:stun.example.net", "turn:t.example.net"), turn_secret="s3cret", turn_ttl_s=60)
    stun, turn = settings.servers("abc", now=1000.0)
    assert stun.urls == ["stun:stun.example.net"] and stun.username is None
    assert turn.username == "1060:abc" and turn.credential == turn_credential("s3cret", "abc", 1060)[1]
    with pytest.raises(ValueError, match="needs a TURN server"):
        IceSettings(urls=("stun:stun.example.net",), relay_only=True)


def test_serve_options_build_the_ice_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "turn-secret"
    secret.write_text("from-a-file\n")
    args = build_parser().parse_args(
        ["serve", "--ice-server", "turn:127.0.0.1:3478", "--turn-secret-file", str(secret), "--ice-relay-only"]
    )
    ice = serve_settings(args).ice
    assert ice.turn_secret == "from-a-file" and ice.relay_only and ice.urls == ("turn:127.0.0.1:3478",)
    args = build_parser().parse_args(
        ["serve", "--ice-server", "turn:h:3478", "--ice-username", "u", "--ice-credential", "p"]
    )
    (server,) = serve_settings(args).ice.servers("any", now=0.0)
    assert (server.username, server.credential) == ("u", "p")
    (tmp_path / "empty").write_text("\n")
    for options, expected in (
        (["--ice-relay-only"], "relay-only ICE needs a TURN server"),
        (["--turn-secret-file", str(tmp_path / "empty")], "is empty"),
        (["--turn-secret-file", str(tmp_path / "missing")], "cannot read the TURN secret file"),
    ):
        assert main(["serve", *options]) == 2, "the settings are checked before anything starts"
        stderr = capsys.readouterr().err
        assert expected in stderr and stderr.startswith("lipstream serve: error:") and "Traceback" not in stderr


def candidate_types(sdp: str) -> set[str]:
    return {line.split(" typ ")[1].split()[0] for line in sdp.splitlines() if line.startswith("a=candidate:")}


def test_a_relay_only_session_streams_through_coturn(runtime: Runtime, coturn: str) -> None:
    ice = IceSettings(urls=(coturn,), turn_secret=SECRET, relay_only=True)

    async def scenario() -> tuple[Viewer, str, str, str]:
        async with serving(runtime, ice=ice) as base, aiohttp.ClientSession() as http:
            async with http.get(f"{base}/ice-servers") as response:
                config = await response.json()
            assert config["iceTransportPolicy"] == "relay"
            (entry,) = config["iceServers"]
            assert entry["username"].split(":")[1].startswith("client-")
            viewer = Viewer()
            await viewer.pc.close()
            viewer.pc = RTCPeerConnection(
                RTCConfiguration(
                    iceServers=[RTCIceServer(entry["urls"], entry["username"], entry["credential"])],
                    iceTransportPolicy=RTCIceTransportPolicy.RELAY,
                )
            )
            viewer.pc.on("track", lambda track: viewer.tasks.append(asyncio.create_task(viewer._read(track))))
            offer = await viewer.offer()
            async with http.post(f"{base}/sessions") as response:
                watch = (await response.json())["watch_url"]
            async with http.post(f"{base}{watch}", data=offer, headers={"Content-Type": "application/sdp"}) as response:
                assert response.status == 201, await response.text()
                answer, link = await response.text(), response.headers["Link"]
            await viewer.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await wait_for_frames(viewer, 60)
            await viewer.close()
        return viewer, offer, answer, link

    viewer, offer, answer, link = asyncio.run(scenario())
    assert candidate_types(offer) == {"relay"} and candidate_types(answer) == {"relay"}  # both sides through coturn
    assert f"<{coturn}>" in link and 'username="' in link  # WHEP's Link header carries the session's credential
    assert_25_fps(viewer.stamps[10:], [t for t, _ in viewer.frames[10:]])
    arrivals = [t for t, _ in viewer.frames[10:]]
    print(f"relay-only: {len(arrivals)} frames at {(len(arrivals) - 1) / (arrivals[-1] - arrivals[0]):.2f} fps")


def test_a_wrong_turn_secret_gets_no_relay(runtime: Runtime, coturn: str) -> None:
    ice = IceSettings(urls=(coturn,), turn_secret="not-the-secret", relay_only=True)

    async def scenario() -> tuple[int, str]:
        async with serving(runtime, ice=ice) as base, aiohttp.ClientSession() as http:
            viewer = Viewer()
            offer = await viewer.offer()
            async with http.post(f"{base}/sessions") as response:
                watch = (await response.json())["watch_url"]
            async with http.post(f"{base}{watch}", data=offer, headers={"Content-Type": "application/sdp"}) as response:
                status, answer = response.status, await response.text()
            await viewer.close()
            return status, answer

    status, answer = asyncio.run(scenario())
    assert status == 502 and "refused the credentials" in answer, answer  # said, not an answer with no path
