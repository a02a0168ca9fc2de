"""`lipstream bench ...`: benchmarks that write JSON (and plots, and markdown). Their options default to
what the benchmark functions themselves default to: an option left out is not passed, and `--help` reads
the function's signature to show the value."""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

from lipstream.engines.select import CPU_VARIANTS

from .args import ENGINE_KINDS, add_profile, choice_list, engine_kinds, positive_float, positive_int, positive_ints

# Each benchmark: its function ("module:name" under lipstream.benchmarks), imported only when it runs
# or when its --help is printed (the benchmarks import the whole stack, torch included).
ENGINE = "engine_bench:run_engine_bench"
SESSION = "session_bench:run_session_bench"
FANOUT = "fanout:run_fanout_bench"
SUITE = "suite:run_suite"
SOAK = "soak:run_soak"
TRANSITIONS = "transitions:run_transitions_bench"


def _function(target: str) -> Any:
    module, name = target.split(":")
    return getattr(importlib.import_module(f"lipstream.benchmarks.{module}"), name)


@cache
def _signature_defaults(target: str) -> dict[str, Any]:
    parameters = inspect.signature(_function(target)).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _formatter(target: str) -> type[argparse.HelpFormatter]:
    class LibraryDefaults(argparse.HelpFormatter):
        def _get_help_string(self, action: argparse.Action) -> str:
            text = action.help or ""
            value = _signature_defaults(target).get(action.dest, inspect.Parameter.empty)
            shown_at_all = value not in (inspect.Parameter.empty, None) and action.nargs != 0  # not flags
            if action.default is argparse.SUPPRESS and shown_at_all:
                shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
                text += f" (default {shown})"
            return text

    return LibraryDefaults


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The options given on the command line, as keyword arguments of the benchmark's function."""
    return {k: v for k, v in vars(args).items() if k not in ("command", "benchmark", "func", "target")}


def _run(args: argparse.Namespace, **extra: Any) -> dict:
    return _function(args.target)(**_given(args), **extra)


def cmd_engine(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.engine_bench import markdown

    payload = _run(args)
    print(markdown(payload))
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    payload = _run(args)
    print(json.dumps({k: payload[k] for k in ("sessions", "frames_dropped_by_server", "files")}, indent=2))
    return 0


def cmd_fanout(args: argparse.Namespace) -> int:
    payload = _run(args)
    print(json.dumps({k: v for k, v in payload.items() if k not in ("machine", "commit")}, indent=2))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """The suite and the soak: they write a markdown summary, printed here."""
    payload = _run(args)
    summary = args.summary_path if "summary_path" in args else _signature_defaults(args.target)["summary_path"]
    print(Path(summary).read_text())
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0 if payload.get("passed", True) else 1


def cmd_transitions(args: argparse.Namespace) -> int:
    from lipstream.realtime.audio_in import read_audio_file
    from lipstream.realtime.runtime import build_runtime

    given = _given(args)
    runtime = build_runtime(given.pop("avatar", None), engine=given.pop("engine", "auto"))
    payload = _function(args.target)(runtime, read_audio_file(given.pop("speech")), **given)
    print(json.dumps(payload["results"], indent=2))
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks that write JSON, a PNG plot and a markdown table")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    def benchmark(name: str, target: str, command: Any, help: str) -> argparse.ArgumentParser:
        parser = bench_sub.add_parser(
            name, help=help, formatter_class=_formatter(target), argument_default=argparse.SUPPRESS
        )
        parser.set_defaults(func=command, target=target)
        return parser

    def out_folder(parser: argparse.ArgumentParser, what: str = "the JSON") -> None:
        parser.add_argument("--out", dest="out_dir", type=Path, help=f"folder for {what}")

    def speech(parser: argparse.ArgumentParser, what: str) -> None:
        parser.add_argument("--speech", dest="speech_path", metavar="FILE", help=what)

    engine = benchmark("engine", ENGINE, cmd_engine, "per-frame graph latency and frames/s per engine and batch size")
    add_profile(engine)
    engine.add_argument("--engines", type=engine_kinds, help=f"comma-separated, of: {', '.join(ENGINE_KINDS)}")
    engine.add_argument(
        "--variants",
        type=choice_list("variant", CPU_VARIANTS),
        help=f"ONNX Runtime on the CPU: comma-separated, of: {', '.join(CPU_VARIANTS)} (engines/select.py)",
    )
    engine.add_argument("--batches", type=positive_ints, help="comma-separated batch sizes")
    engine.add_argument("--runs", type=positive_int, help="timed calls per engine and batch (median and p95)")
    engine.add_argument("--rounds", type=positive_int, help="interleaved rounds; the best of each is kept")
    engine.add_argument("--ops", action="store_true", help="add ONNX Runtime's time per operator type (batch 1, 8)")
    out_folder(engine, "the JSON, PNG and markdown")

    transitions = benchmark(
        "transitions",
        TRANSITIONS,
        cmd_transitions,
        "how far the lips jump entering and leaving speech, with and without the blend ramps",
    )
    transitions.add_argument("--avatar", help="avatar name or folder (default: the embedded one)")
    transitions.add_argument("--engine", choices=ENGINE_KINDS, help="inference engine (default auto)")
    transitions.add_argument("--speech", required=True, help="speech to drive it (any audio file FFmpeg reads)")
    out_folder(transitions)

    session = benchmark(
        "session", SESSION, cmd_session, "N loopback clients: fps, dropped frames, audio-to-mouth latency"
    )
    session.add_argument("--sessions", type=positive_int, help="sessions at once")
    session.add_argument("--seconds", type=positive_float, help="measured")
    session.add_argument(
        "--avatar",
        help="avatar name or folder the server shows (default: the built-in default), or A,B,C: the sessions "
        "ask for each in turn",
    )
    speech(session, "16-bit WAV with speech for the bursts (default: the avatar's audio)")
    out_folder(session)

    fanout = benchmark("fanout", FANOUT, cmd_fanout, "one session, N viewers: direct WHEP peers or through Janus")
    fanout.add_argument("--viewers", type=positive_int, help="viewers of the one session")
    fanout.add_argument("--via", choices=("janus", "direct"), help="through Janus, or straight from lipstream")
    fanout.add_argument("--seconds", type=positive_float, help="measured, after 3 s of warm-up")
    speech(fanout, "speech the session says on a loop (default: the bundled sample)")
    fanout.add_argument("--silent", action="store_true", help="no speech: the fan-out's cost without inference")
    fanout.add_argument(
        "--out", type=Path, help="the JSON file (default: benchmarks/results/fanout-<via>-<viewers>.json)"
    )

    suite = benchmark(
        "all", SUITE, cmd_summary, "the latency suite: latency, A/V offset, drift, first frame, interrupt, concurrency"
    )
    suite.add_argument("--minutes", type=positive_float, help="length of the latency/drift run")
    suite.add_argument("--max-sessions", type=positive_int, help="concurrency sweep 1..N sessions")
    suite.add_argument("--concurrency-seconds", type=positive_float, help="per step of the sweep")
    suite.add_argument("--trials", type=positive_int, help="first-frame and interrupt trials")
    speech(suite, "WAV with speech for the bursts (default: the avatar's own audio)")
    out_folder(suite, "the JSON and plots")
    suite.add_argument("--summary", dest="summary_path", type=Path, help="markdown summary")
    suite.add_argument(
        "--no-engine", dest="engine", action="store_false", help="leave out the engine benchmark (default: in)"
    )

    soak = benchmark(
        "soak", SOAK, cmd_summary, "N sessions for a long time: no crash, <= 0.1 %% dropped, A/V drift <= 1 frame"
    )
    soak.add_argument("--minutes", type=positive_float, help="length of the run")
    soak.add_argument("--sessions", type=positive_int, help="sessions at once")
    speech(soak, "WAV with speech for the bursts (default: a file of ../shared/data/speech)")
    out_folder(soak, "the timestamped JSON")
    soak.add_argument("--summary", dest="summary_path", type=Path, help="markdown summary (JSON and PNG beside it)")
