"""Text in: a TTS provider turns text into speech, which then drives a session like pushed audio.

Two providers behind one small interface (`synthesize(text, voice) -> audio file bytes`):
- `espeak`: the local espeak-ng (Debian's package), run as a subprocess; nothing leaves the machine;
- `openai`: any server with OpenAI's `POST /v1/audio/speech` shape (OpenAI itself, or a local one),
  its address from `--tts-url` and its key from the environment (LIPSTREAM_TTS_KEY), never the CLI.
A provider that fails raises TTSError with the provider's own words; the server answers 502 with them.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from .audio_in import Audio, AudioFormatError, decode_audio

MAX_TEXT_CHARS = 2000  # about two minutes of speech: longer texts are sent in parts
PROVIDERS = ("espeak", "openai")


class TTSError(RuntimeError):
    """The provider could not speak the text; the message carries its reason."""


class TTSProvider(Protocol):
    name: str

    async def synthesize(self, text: str, voice: str | None) -> bytes:
        """An audio file (WAV, MP3, ...) of `text` spoken by `voice` (None: the provider's default)."""
        ...


class EspeakProvider:
    name = "espeak"

    def __init__(self, executable: str = "espeak-ng") -> None:
        self.executable = executable

    async def synthesize(self, text: str, voice: str | None) -> bytes:
        path = shutil.which(self.executable)
        if path is None:
            raise TTSError(f"{self.executable} is not installed here; install it with `apt-get install espeak-ng`")
        command = [path, "--stdout", *(["-v", voice] if voice else []), "--", text]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        wav, error = await process.communicate()
        if process.returncode != 0 or not wav:
            reason = error.decode(errors="replace").strip() or f"exit status {process.returncode}"
            raise TTSError(f"espeak-ng could not speak the text: {reason}")
        return wav


@dataclass
class OpenAISpeechProvider:
    """OpenAI's speech API shape: POST {url}/v1/audio/speech {model, input, voice, response_format}."""

    url: str
    key: str | None = None
    model: str = "tts-1"
    default_voice: str = "alloy"
    timeout_s: float = 60.0
    name: str = "openai"

    async def synthesize(self, text: str, voice: str | None) -> bytes:
        endpoint = self.url.rstrip("/") + "/v1/audio/speech"
        body = {"model": self.model, "input": text, "voice": voice or self.default_voice, "response_format": "wav"}
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as http,
                http.post(endpoint, json=body, headers=headers) as response,
            ):
                data = await response.read()
                if response.status != 200:
                    said = data[:500].decode(errors="replace").strip()
                    raise TTSError(f"{endpoint} answered {response.status}: {said}")
                return data
        except (aiohttp.ClientError, TimeoutError) as err:
            raise TTSError(f"{endpoint} could not be reached: {err or type(err).__name__}") from err


def make_provider(kind: str, url: str | None = None, key: str | None = None) -> TTSProvider:
    if kind == "espeak":
        return EspeakProvider()
    if kind == "openai":
        if not url:
            raise ValueError("the openai TTS provider needs --tts-url (the server that has /v1/audio/speech)")
        return OpenAISpeechProvider(url, key)
    raise ValueError(f"unknown TTS provider {kind!r}; choose one of: {', '.join(PROVIDERS)}")


def decode_speech(data: bytes) -> Audio:
    """A provider's answer (an audio file in any format FFmpeg reads) -> Audio at its full band."""
    try:
        return decode_audio(data, "the TTS provider's answer")
    except AudioFormatError as err:
        raise TTSError(str(err)) from err
