"""Text in: POST /sessions/{id}/speak through the TTS providers, and `lipstream talk --text`."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import wave
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from test_hardening import _call
from test_server import serving

from lipstream.realtime.runtime import Runtime
from lipstream.realtime.talk import say
from lipstream.realtime.tts import EspeakProvider, OpenAISpeechProvider, TTSProvider

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="needs Debian's espeak-ng (apt-get install espeak-ng)"
)


def tone_wav(seconds: float, rate: int = 24_000) -> bytes:
    """A 16-bit mono WAV of a 220 Hz tone, as a speech server might answer (24 kHz, as OpenAI's does)."""
    t = np.arange(round(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


async def _session(http: aiohttp.ClientSession, base: str) -> str:
    async with http.post(f"{base}/sessions") as response:
        return (await response.json())["session_id"]


@needs_espeak
def test_espeak_speaks_text_into_a_session_and_talk_waits_until_it_was_played(runtime: Runtime) -> None:
    async def scenario() -> float:
        async with serving(runtime) as base:
            return await say(base, "Hello, this avatar speaks what you type.", voice="en")

    seconds = asyncio.run(scenario())
    assert 1.0 < seconds < 6.0


@contextlib.asynccontextmanager
async def speech_server(answer: tuple[int, bytes], seen: list) -> AsyncIterator[str]:
    """A local server of OpenAI's /v1/audio/speech shape: records each request, answers `answer`."""

    async def speech(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), await request.json()))
        status, body = answer
        return web.Response(status=status, body=body, content_type="audio/wav" if status == 200 else "text/plain")

    app = web.Application()
    app.router.add_post("/v1/audio/speech", speech)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def _speak(runtime: Runtime, provider: TTSProvider, body: object) -> tuple[int, str]:
    async with serving(runtime, tts=provider) as base, aiohttp.ClientSession() as http:
        session = await _session(http, base)
        code, text, _ = await _call(http, "POST", f"{base}/sessions/{session}/speak", json=body)
        return code, text


def test_an_openai_compatible_server_speaks_with_the_key_and_voice_asked_for(runtime: Runtime) -> None:
    async def scenario() -> tuple[int, str, list]:
        seen: list = []
        async with speech_server((200, tone_wav(1.5)), seen) as url:
            code, text = await _speak(
                runtime, OpenAISpeechProvider(url, key="sk-test"), {"text": "Hi", "voice": "nova"}
            )
        return code, text, seen

    code, text, seen = asyncio.run(scenario())
    assert code == 200 and json.loads(text)["provider"] == "openai", text
    assert json.loads(text)["seconds"] == pytest.approx(1.5, abs=0.01)  # 24 kHz resampled for the features
    ((authorization, request),) = seen
    assert authorization == "Bearer sk-test"
    assert request == {"model": "tts-1", "input": "Hi", "voice": "nova", "response_format": "wav"}


def test_a_provider_that_is_down_or_fails_gets_502_with_its_own_words(runtime: Runtime) -> None:
    async def scenario() -> list[tuple[int, str]]:
        answers = []
        async with speech_server((500, b"model overloaded, retry later"), []) as url:
            answers.append(await _speak(runtime, OpenAISpeechProvider(url), {"text": "Hi"}))
        answers.append(await _speak(runtime, OpenAISpeechProvider("http://127.0.0.1:9"), {"text": "Hi"}))
        answers.append(await _speak(runtime, EspeakProvider("no-such-espeak"), {"text": "Hi"}))
        async with speech_server((200, b"not audio at all"), []) as url:
            answers.append(await _speak(runtime, OpenAISpeechProvider(url), {"text": "Hi"}))
        return answers

    (failed, down, missing, garbage) = asyncio.run(scenario())
    assert failed[0] == 502 and "answered 500: model overloaded, retry later" in failed[1]
    assert down[0] == 502 and "could not be reached" in down[1]
    assert missing[0] == 502 and "apt-get install espeak-ng" in missing[1]
    assert garbage[0] == 502 and "not audio" in garbage[1]


def test_bad_text_is_refused_with_what_was_expected(runtime: Runtime) -> None:
    async def scenario() -> list[tuple[int, str]]:
        provider = OpenAISpeechProvider("http://127.0.0.1:9")  # never reached: the text is refused first
        bodies = [{"text": ""}, {"text": "x" * 2001}, {"voice": "nova"}, {"text": "Hi", "voice": 3}, ["Hi"]]
        return [await _speak(runtime, provider, body) for body in bodies]

    for code, text in asyncio.run(scenario()):
        assert code == 400 and "expected JSON" in text and "2000 characters" in text
