"""The server's Prometheus metrics (prometheus-client), one registry per runtime.

Counters, histograms and gauges keep prometheus-client's own types and text format; the small wrappers
here only add `value` / `count`, which the admission logic and the tests read back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

prometheus_client.disable_created_metrics()  # no *_created series: nothing here needs them


class Counter:
    def __init__(self, name: str, help_text: str, registry: CollectorRegistry) -> None:
        if not name.endswith("_total"):
            raise ValueError(f"a counter's name ends in _total (Prometheus naming): {name}")
        self.name, self._registry = name, registry
        self._counter = prometheus_client.Counter(name.removesuffix("_total"), help_text, registry=registry)

    def inc(self, amount: float = 1.0) -> None:
        self._counter.inc(amount)

    @property
    def value(self) -> float:
        return self._registry.get_sample_value(self.name) or 0.0


class Histogram:
    def __init__(
        self, name: str, help_text: str, buckets: tuple[float, ...], registry: CollectorRegistry, **labels: str
    ) -> None:
        self.name, self._registry, self._labels = name, registry, labels
        self._histogram = prometheus_client.Histogram(
            name, help_text, labelnames=tuple(labels), buckets=buckets, registry=registry
        )

    def observe(self, value: float, **labels: str) -> None:
        (self._histogram.labels(**labels) if labels else self._histogram).observe(value)

    @property
    def count(self) -> float:
        return self._registry.get_sample_value(f"{self.name}_count") or 0.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_generated = Counter("lipstream_frames_generated_total", "Frames whose mouth was generated", r)
        self.frames_idle = Counter("lipstream_frames_idle_total", "Frames showing the template frame untouched", r)
        self.frames_dropped = Counter(
            "lipstream_frames_dropped_total", "Frames skipped because the machine was late", r
        )
        self.inference_errors = Counter("lipstream_inference_errors_total", "Batches whose inference failed", r)
        self.jitter_patch_missing = Counter(
            "lipstream_jitter_patch_missing_total",
            "Ingest peers left with aiortc's own 80 ms receive buffer (the low-delay one could not be installed)",
            r,
        )
        self.underruns = Counter(
            "lipstream_underruns_total", "Times a session's input ran dry mid-utterance (it shows idle frames)", r
        )
        self.late_input_dropped = Counter(
            "lipstream_late_input_dropped_total", "Live input frames dropped because they were played too late", r
        )
        self.output_dropped = Counter(
            "lipstream_output_dropped_total", "Finished frames dropped because nobody read them in time", r
        )
        self.inference_timeouts = Counter(
            "lipstream_inference_timeouts_total", "Batches abandoned because inference overran its time budget", r
        )
        self.inference_skipped = Counter(
            "lipstream_inference_skipped_total", "Batches shown idle while an overrun inference was still running", r
        )
        self.inference_seconds = Histogram(
            "lipstream_inference_seconds",
            "Time of one batched inference",
            (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.1, 0.2, 0.5),
            r,
        )
        self.batch_size = Histogram("lipstream_batch_size", "Frames per inference batch", (1, 2, 4, 8, 16, 32, 64), r)
        self.stage_seconds = Histogram(
            "lipstream_stage_seconds",
            "Time per call of each pipeline stage: resample, vad, mel (per pushed chunk), inference, "
            "composite (per tick), video_queue (a frame waiting for its sender), encode_send (aiortc's "
            "encoding and sending of one video frame)",
            (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16),
            r,
            stage="",
        )
        self._gauges: dict[str, prometheus_client.Gauge] = {}
        self._totals: dict[str, tuple[float, float]] = {}

    def stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.observe(seconds, stage=stage)
        self.add_total(stage, seconds)

    def add_total(self, name: str, seconds: float, count: float = 1.0) -> None:
        """Running (seconds, count) of a cost, for averages over a window (admission's TickModel)."""
        total, calls = self._totals.get(name, (0.0, 0.0))
        self._totals[name] = (total + seconds, calls + count)

    def totals(self) -> dict[str, tuple[float, float]]:
        return dict(self._totals)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage(stage, time.perf_counter() - started)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Registers (or, when a new server is built on the same runtime, re-points) a gauge read on demand."""
        if name not in self._gauges:
            self._gauges[name] = prometheus_client.Gauge(name, help_text, registry=self.registry)
        self._gauges[name].set_function(read)

    def render(self) -> str:
        return generate_latest(self.registry).decode()
