"""What the agents' scripts share: the recording their stand-in TTS says (24 kHz s16 mono, a common TTS
rate, in 20 ms pieces), and their command line (a server, the recording, the runs: whole or interrupted; one JSON
list printed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import wave
from collections.abc import Awaitable, Callable

import numpy as np

TTS_RATE = 24_000


def tts_pieces(path: str) -> tuple[list[np.ndarray], float]:
    """(20-ms int16 pieces at TTS_RATE, the recording's length in seconds) of a 16-bit mono WAV."""
    with wave.open(path) as wav:
        rate, samples = wav.getframerate(), np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    seconds = len(samples) / rate
    times = np.arange(round(seconds * TTS_RATE)) / TTS_RATE
    audio = np.interp(times, np.arange(len(samples)) / rate, samples.astype(np.float64)).astype(np.int16)
    step = TTS_RATE // 50
    return [audio[i : i + step] for i in range(0, len(audio), step)], seconds


def run(scenario: Callable[[str, str, float | None], Awaitable[dict]]) -> None:
    """Runs the scenario once per --run (in one interpreter: the agents' imports take seconds), each on a
    session of its own, and prints their results as one JSON list."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--speech", required=True, help="16-bit mono WAV")
    parser.add_argument(
        "--run", action="append", required=True, help="'whole', or the seconds after which to interrupt the speech"
    )
    args = parser.parse_args()

    async def runs() -> list[dict]:
        return [await scenario(args.server, args.speech, None if run == "whole" else float(run)) for run in args.run]

    print(json.dumps(asyncio.run(runs())))
