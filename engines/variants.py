"""Choosing, at start-up, the fastest way this host runs a graph: several variants of one engine (ONNX
Runtime's graph optimisation levels), each checked against the first for parity, then timed in rounds
that interleave them, so that a neighbour's load falls on all alike.

Why at start-up: what wins depends on the host. On the 2-core AMD EPYC where the graph was tuned, the
full optimisation (`all`, with its NCHWc layout and the Reorder nodes around it) wins: 12.1 / 8.3 ms
per frame at batch 1 / 8, against 13.2 / 11.1 for `basic` and 14.0 / 11.1 for `extended` (`lipstream
bench engine --variants ...`, 2026-12-07); on an Intel Xeon the same graph ran 3x slower than on the
EPYC (issue 23), and which level loses least there can only be measured there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .base import Engine

logger = logging.getLogger(__name__)

PARITY_DB = 45.0  # a variant's outputs must match the reference variant's to this PSNR (peak: its range)
IDENTICAL_DB = 200.0  # what /health reports for equal outputs (inf is not JSON); fp32 rounding gives ~145
BATCHES = (1, 4)  # timed batch sizes: one session, and the batch of several sessions' frames in one tick
ROUNDS = 3  # interleaved rounds; a variant keeps its best
RUNS = 3  # calls per batch size in a round; a round takes their median


@dataclass
class VariantChoice:
    """What the start-up choice measured and took: the JSON of /health's `engine_variant`."""

    chosen: str
    ms_per_frame: dict[str, float] = field(default_factory=dict)  # best round, mean over BATCHES
    parity_db: dict[str, float | None] = field(default_factory=dict)  # against the first; None: NaN
    rejected: dict[str, str] = field(default_factory=dict)  # variant -> why it was not timed

    def as_dict(self) -> dict:
        return asdict(self)


def random_feed(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the engine's shapes, drawn from a fixed seed: every variant sees the same numbers."""
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal((batch, *s.shape)).astype(np.float32) for s in engine.inputs}


def psnr_db(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> float:
    """PSNR of `other`'s outputs against the reference's, all outputs together, the peak being the
    reference's range (the generated region's is 2, from -1 to 1). inf when they are equal."""
    ref = np.concatenate([np.ravel(reference[name]) for name in sorted(reference)]).astype(np.float64)
    out = np.concatenate([np.ravel(other[name]) for name in sorted(reference)]).astype(np.float64)
    mse = float(np.mean((ref - out) ** 2))
    peak = float(np.ptp(ref)) or 1.0
    return float("inf") if mse == 0.0 else 10.0 * np.log10(peak**2 / mse)


def _seconds_per_frame(engine: Engine, feeds: dict[int, dict[str, np.ndarray]], runs: int) -> float:
    per_frame = []
    for batch, feed in feeds.items():
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            engine.run(feed)
            times.append(time.perf_counter() - started)
        per_frame.append(float(np.median(times)) / batch)
    return float(np.mean(per_frame))


def fastest_variant(
    open_variant: Callable[[str], Engine],
    variants: Sequence[str],
    batches: Sequence[int] = BATCHES,
    rounds: int = ROUNDS,
    runs: int = RUNS,
) -> tuple[Engine, VariantChoice]:
    """Opens every variant, drops those whose outputs differ from the first's (below PARITY_DB), times
    the rest and returns the fastest, open, with what was measured; the others are closed."""
    engines: dict[str, Engine] = {}
    try:
        for name in variants:
            engines[name] = open_variant(name)
        reference_name = variants[0]
        batches = [b for b in batches if b <= engines[reference_name].max_batch] or [1]
        feeds = {b: random_feed(engines[reference_name], b) for b in batches}
        largest = feeds[max(batches)]
        expected = engines[reference_name].run(largest)
        choice = VariantChoice(chosen=reference_name)
        for name in variants[1:]:
            db = psnr_db(expected, engines[name].run(largest))
            choice.parity_db[name] = None if np.isnan(db) else round(min(db, IDENTICAL_DB), 1)
            if not db >= PARITY_DB:  # NaN too
                choice.rejected[name] = f"outputs differ from {reference_name}'s: {db:.1f} dB < {PARITY_DB:g} dB"
                logger.warning("engine variant %s rejected: %s", name, choice.rejected[name])
        timed = [name for name in variants if name not in choice.rejected]
        for engine in engines.values():  # the first calls allocate and tune
            engine.run(feeds[batches[0]])
        best = {name: float("inf") for name in timed}
        for _ in range(rounds):
            for name in timed:
                best[name] = min(best[name], _seconds_per_frame(engines[name], feeds, runs))
        choice.ms_per_frame = {name: round(seconds * 1000, 3) for name, seconds in best.items()}
        choice.chosen = min(timed, key=best.__getitem__)
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    for name, engine in engines.items():
        if name != choice.chosen:
            engine.close()
    logger.info(
        "engine variant %s chosen: ms per frame %s (batches %s)%s",
        choice.chosen,
        choice.ms_per_frame,
        list(batches),
        f"; rejected {choice.rejected}" if choice.rejected else "",
    )
    return engines[choice.chosen], choice
