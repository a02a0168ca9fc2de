"""Counters, gauges and histograms in the Prometheus text format (no client library needed)."""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Callable, Iterator


class Counter:
    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help, self.value = name, help_text, 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter", f"{self.name} {self.value:g}"]


class Gauge:
    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.read():g}"]


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        return [*lines, f"{self.name}_sum {self.sum:g}", f"{self.name}_count {self.count}"]


class StageHistograms:
    """One histogram per pipeline stage, rendered as a single labelled metric."""

    BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16)

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self.stages: dict[str, Histogram] = {}

    def observe(self, stage: str, seconds: float) -> None:
        if stage not in self.stages:
            self.stages[stage] = Histogram(self.name, self.help, self.BUCKETS)
        self.stages[stage].observe(seconds)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for stage, histogram in sorted(self.stages.items()):
            label = f'stage="{stage}"'
            for line in histogram.render()[2:]:
                metric, value = line.rsplit(" ", 1)
                # ..._bucket{le="x"} -> ..._bucket{stage="s",le="x"}; ..._sum -> ..._sum{stage="s"}
                metric = metric.replace("{", "{" + label + ",", 1) if "{" in metric else f"{metric}{{{label}}}"
                lines.append(f"{metric} {value}")
        return lines


class Metrics:
    def __init__(self) -> None:
        self.frames_generated = Counter("lipstream_frames_generated_total", "Frames whose mouth was generated")
        self.frames_idle = Counter("lipstream_frames_idle_total", "Frames showing the template frame untouched")
        self.frames_dropped = Counter("lipstream_frames_dropped_total", "Frames skipped because the machine was late")
        self.inference_errors = Counter("lipstream_inference_errors_total", "Batches whose inference failed")
        self.jitter_patch_missing = Counter(
            "lipstream_jitter_patch_missing_total",
            "Ingest peers left with aiortc's own 80 ms receive buffer (the low-delay one could not be installed)",
        )
        self.underruns = Counter(
            "lipstream_underruns_total", "Times a session's input ran dry mid-utterance (it shows idle frames)"
        )
        self.late_input_dropped = Counter(
            "lipstream_late_input_dropped_total", "Live input frames dropped because they were played too late"
        )
        self.output_dropped = Counter(
            "lipstream_output_dropped_total", "Finished frames dropped because nobody read them in time"
        )
        self.inference_timeouts = Counter(
            "lipstream_inference_timeouts_total", "Batches abandoned because inference overran its time budget"
        )
        self.inference_skipped = Counter(
            "lipstream_inference_skipped_total", "Batches shown idle while an overrun inference was still running"
        )
        self.inference_seconds = Histogram(
            "lipstream_inference_seconds",
            "Time of one batched inference",
            (0.005, 0.01, 0.02, 0.03, 0.04, 0.06, 0.1, 0.2, 0.5),
        )
        self.batch_size = Histogram("lipstream_batch_size", "Frames per inference batch", (1, 2, 4, 8, 16, 32, 64))
        self.stage_seconds = StageHistograms(
            "lipstream_stage_seconds",
            "Time per call of each pipeline stage: resample, vad, mel (per pushed chunk), inference, "
            "composite (per tick), video_queue (a frame waiting for its sender), encode_send (aiortc's "
            "encoding and sending of one video frame)",
        )
        self.gauges: dict[str, Gauge] = {}

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.observe(stage, time.perf_counter() - started)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Registers (or replaces, when a new server is built on the same runtime) a gauge."""
        self.gauges[name] = Gauge(name, help_text, read)

    def render(self) -> str:
        parts = [
            self.frames_generated,
            self.frames_idle,
            self.frames_dropped,
            self.inference_errors,
            self.jitter_patch_missing,
            self.underruns,
            self.late_input_dropped,
            self.output_dropped,
            self.inference_timeouts,
            self.inference_skipped,
            self.inference_seconds,
            self.batch_size,
            self.stage_seconds,
            *self.gauges.values(),
        ]
        return "\n".join(line for part in parts for line in part.render()) + "\n"
