"""The `lipstream` command. Each subcommand lives in one function; later stages add theirs here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lipstream.engines.select import ENGINE_KINDS as ENGINE_CHOICES
from lipstream.models.config import PROFILES
from lipstream.paths import avatars_dir, cache_dir

if TYPE_CHECKING:
    from lipstream.realtime.registry import ServerSettings


def _format_models(reports: dict[str, dict]) -> str:
    lines = []
    for name, r in reports.items():
        p = r["params"]
        rows, width = r["output_shape"]
        lines.append(
            f"{name}: {r['face_size']}px face, generates {rows}x{width}, L={r['style_layers']} style layers, "
            f"{p['inference_total'] / 1e6:.2f} M params for inference"
        )
        lines.append(
            f"  per frame (E_a + mapping + G): {p['per_frame_path'] / 1e6:.2f} M params, "
            f"{r['gflops_per_frame']:.3f} GFLOPs"
        )
        lines.append(
            f"  per template frame (E_face, cached): {p['face_encoder'] / 1e6:.2f} M params, "
            f"{r['face_encoder_gflops_per_template_frame']:.3f} GFLOPs"
        )
        lines.append(
            f"  dW head {p['delta_w'] / 1e6:.2f} M, discriminator {p['discriminator'] / 1e6:.2f} M, "
            f"SyncNet {p['syncnet'] / 1e6:.2f} M params"
        )
        if "latency_ms" in r:
            lat = r["latency_ms"]
            lines.append(
                f"  PyTorch CPU latency per frame: median {lat['median']:.1f} ms "
                f"(min {lat['min']:.1f}, max {lat['max']:.1f}, {lat['runs']} runs, {r['torch_threads']} threads)"
            )
    return "\n".join(lines)


def cmd_models(args: argparse.Namespace) -> int:
    from lipstream.models.report import profile_report

    reports = {name: profile_report(name, latency_runs=args.latency) for name in args.profile or PROFILES}
    print(json.dumps(reports, indent=2) if args.json else _format_models(reports))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from lipstream.avatars import Avatar
    from lipstream.avatars.prepare import prepare_avatar

    result = prepare_avatar(
        args.source,
        args.name,
        profile=args.profile,
        mask=args.mask,
        root=args.avatars,
        max_seconds=args.max_seconds,
        smoothing=args.smoothing,
        weights=args.weights,
        show_progress=not args.quiet,
        reference_percentile=args.reference_percentile,
        idle_loop=args.idle_loop,
    )
    m = result.manifest
    jitter = m.extra["crop_jitter"]
    print(
        f"avatar {args.name!r} ready at {result.path}\n"
        f"  {m.frame_count} frames ({m.extra['interpolated_frames']} interpolated where no face was detected), "
        f"reference frame {m.reference_frame}, model {m.model_id}\n"
        f"  crop-centre jitter, raw -> smoothed: {jitter['raw']['speed']:.2f} -> {jitter['smoothed']['speed']:.2f} "
        f"px/frame (mean movement), {jitter['raw']['shake']:.2f} -> {jitter['smoothed']['shake']:.2f} px/frame^2 "
        "(shake)\n"
        f"  {result.frames_per_second:.1f} frames/s ({result.seconds:.1f} s)"
    )
    if args.sheet:
        import cv2

        from lipstream.avatars.sheet import contact_sheet

        sheet = contact_sheet(Avatar.load(result.path, verify=False), index=m.frame_count // 2)
        cv2.imwrite(str(args.sheet), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        print(f"  contact sheet: {args.sheet}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from lipstream.avatars import Avatar
    from lipstream.avatars.default import default_avatar
    from lipstream.dsp import read_wav
    from lipstream.export.onnx_export import export_onnx
    from lipstream.export.parity import run_parity
    from lipstream.models.weights import load_stylesync

    if args.tensorrt:  # say what is missing before spending time on the export
        from lipstream.engines import tensorrt_engine

        tensorrt_engine.gpu_name()
    result = export_onnx(
        args.profile, weights=args.weights, out=args.out, fp16=args.fp16 or args.tensorrt, force=args.force
    )
    settings = result.settings
    print(f"{'reused' if result.reused else 'exported'} {settings['model_id']} to {result.folder}")
    model, model_id = load_stylesync(args.profile, args.weights)
    if args.avatar:
        path = Path(args.avatar) if Path(args.avatar).is_dir() else avatars_dir() / args.avatar
        avatar = Avatar.load(path, model_id=model_id)
    else:
        avatar = default_avatar(args.profile)
    speech = read_wav(args.speech)[0] if args.speech else read_wav(avatar.path / "audio.wav")[0]
    report = run_parity(result.folder, settings, model, avatar, speech)
    report["speech"] = args.speech or f"the avatar's template audio ({avatar.name})"
    if args.tensorrt:
        from lipstream.engines.select import open_engine

        for graph in ("frame", "face_encoder"):
            open_engine("tensorrt", result, graph, fp16=True).close()
        report["tensorrt"] = "engines built"
    (result.folder / "parity.json").write_text(json.dumps(report, indent=2))
    frame = report["frame"]
    print(
        f"  parity, ONNX Runtime fp32 vs PyTorch: max abs error {frame['fp32_max_abs_error']:.2e} (frame graph), "
        f"{report['face_encoder']['fp32_max_abs_error']:.2e} (face encoder)"
    )
    if "fp16_psnr_db" in frame:
        print(f"  fp16 graph vs fp32: PSNR {frame['fp16_psnr_db']:.1f} dB, finite: {frame['fp16_finite']}")
    print(f"  largest pre-demodulation activation: {frame['pre_demodulation_peak']:.2f}")
    print(f"  report: {result.folder / 'parity.json'}")
    return 0


def cmd_bench_session(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.session_bench import run_session_bench

    payload = run_session_bench(args.sessions, args.seconds, args.speech, out_dir=Path(args.out))
    print(json.dumps({k: payload[k] for k in ("sessions", "frames_dropped_by_server", "files")}, indent=2))
    return 0


def cmd_bench_fanout(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.fanout import run_fanout_bench

    payload = run_fanout_bench(
        args.viewers, args.via, args.seconds, Path(args.out) if args.out else None, args.speech, args.silent
    )
    print(json.dumps({k: v for k, v in payload.items() if k not in ("machine", "commit")}, indent=2))
    return 0


def cmd_bench_all(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.suite import run_suite

    payload = run_suite(
        minutes=args.minutes,
        max_sessions=args.max_sessions,
        concurrency_seconds=args.concurrency_seconds,
        trials=args.trials,
        speech_path=args.speech,
        out_dir=Path(args.out),
        summary_path=Path(args.summary),
        engine=not args.no_engine,
    )
    print(Path(args.summary).read_text())
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.soak import run_soak

    payload = run_soak(
        args.minutes, args.sessions, args.speech, out_dir=Path(args.out), summary_path=Path(args.summary)
    )
    print(Path(args.summary).read_text())
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0 if payload["passed"] else 1


def cmd_bench_transitions(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.transitions import run_transitions_bench
    from lipstream.realtime.audio_in import read_audio_file
    from lipstream.realtime.runtime import build_runtime

    runtime = build_runtime(args.avatar, engine=args.engine)
    speech = read_audio_file(args.speech)
    payload = run_transitions_bench(runtime, speech, Path(args.out))
    print(json.dumps(payload["results"], indent=2))
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from lipstream.benchmarks.engine_bench import run_engine_bench

    payload = run_engine_bench(
        args.profile,
        engines=tuple(args.engines.split(",")),
        batches=tuple(int(b) for b in args.batches.split(",")),
        runs=args.runs,
        out_dir=Path(args.out),
        rounds=args.rounds,
        ops=args.ops,
    )
    from lipstream.benchmarks.engine_bench import markdown

    print(markdown(payload))
    print("\n".join(f"wrote {f}" for f in payload["files"]))
    return 0


def serve_settings(args: argparse.Namespace) -> ServerSettings:
    """`lipstream serve`'s options as the server's settings (checked before any model loads)."""
    from lipstream.realtime.ice import DEFAULT_TURN_TTL_S, IceSettings, read_turn_secret
    from lipstream.realtime.security import load_tokens
    from lipstream.realtime.server import ServerSettings
    from lipstream.realtime.tts import make_provider

    return ServerSettings(
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        jitter_frames=args.jitter_frames,
        measured_admission=args.admission == "measured",
        tokens=load_tokens(args.token_file),
        ice=IceSettings(
            urls=tuple(args.ice_server),
            username=args.ice_username,
            credential=args.ice_credential,
            turn_secret=read_turn_secret(args.turn_secret_file, os.environ.get("LIPSTREAM_TURN_SECRET")),
            turn_ttl_s=args.turn_ttl or DEFAULT_TURN_TTL_S,
            relay_only=args.ice_relay_only,
        ),
        tts=make_provider(args.tts, args.tts_url, os.environ.get("LIPSTREAM_TTS_KEY") or None),
        cors_origins=tuple(args.cors_origin),
        instance=args.instance or "",
        agent_port=args.agent_port or 0,
        agent_host=args.host,
        trusted_proxies=tuple(args.trust_proxy),
        janus_url=args.janus or "",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from lipstream.realtime.runtime import build_runtime
    from lipstream.realtime.server import create_app

    settings = serve_settings(args)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    runtime = build_runtime(
        args.avatar, engine=args.engine, profile=args.profile, weights=args.weights, samples_dir=args.samples
    )
    runtime.style_smoothing = args.smooth_styles
    tokens = settings.tokens
    print(
        f"serving avatar {runtime.assets.avatar.name!r} with {runtime.engine.kind} ({runtime.engine.model_id}) "
        f"on http://{args.host}:{args.port}"
        + (f"; {len(tokens)} bearer token(s) required to open, drive or watch sessions" if tokens else "")
    )
    web.run_app(
        create_app(runtime, settings),
        host=args.host,
        port=args.port,
        print=None,
    )
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    import time

    from lipstream.deploy.haproxy import LocalCluster

    serve_args = tuple(a for a in args.serve_args if a != "--")
    with LocalCluster(args.port, args.processes, serve_args) as cluster:
        print(f"{args.processes} serve processes behind HAProxy on {cluster.url}; configuration: {cluster.config}")
        try:
            while cluster.haproxy.poll() is None:
                cluster.restart_exited()
                time.sleep(1.0)
        except KeyboardInterrupt:
            return 0
    print(f"HAProxy exited; its log is in {cluster.folder}", file=sys.stderr)
    return 1


def instance_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9]{1,16}", text):
        raise argparse.ArgumentTypeError(f"expected 1 to 16 lower-case letters or digits, got {text!r}")
    return text


def port_number(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return value


def cmd_talk(args: argparse.Namespace) -> int:
    import asyncio

    from lipstream.realtime.talk import TalkError, say, talk

    token = os.environ.get("LIPSTREAM_TOKEN") or None  # the server's bearer token, when it needs one
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    try:
        if args.text:
            seconds = asyncio.run(say(args.server, args.text, args.voice, args.session, args.avatar, token))
        else:
            seconds = asyncio.run(
                talk(args.server, Path(args.file) if args.file else None, args.session, args.avatar, token, device)
            )
    except KeyboardInterrupt:
        print("stopped")
        return 0
    except TalkError as err:
        print(f"lipstream talk: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # connection refused, unreachable host
        print(
            f"lipstream talk: error: cannot reach {args.server} ({err}); is `lipstream serve` running?", file=sys.stderr
        )
        return 2
    print(f"sent {seconds:.1f} s of audio")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from lipstream.realtime.render import render
    from lipstream.realtime.runtime import build_runtime

    runtime = build_runtime(args.avatar, engine=args.engine, profile=args.profile, weights=args.weights)
    runtime.style_smoothing = args.smooth_styles
    result = render(runtime, args.audio, args.output)
    print(
        f"wrote {result.path}: {result.frames} frames ({result.speech_frames} generated), "
        f"{result.frames / max(result.seconds, 1e-9):.1f} frames/s with {runtime.engine.kind}"
    )
    return 0


def cmd_dataset_build(args: argparse.Namespace) -> int:
    from lipstream.training.dataset import build_dataset, default_root, grid_sources, talking_sources

    sources = []
    if args.grid:
        sources += grid_sources(Path(args.grid))
    if args.talking:
        sources += talking_sources(Path(args.talking))
    if not sources:
        print("lipstream dataset build: error: give --grid and/or --talking folders", file=sys.stderr)
        return 2
    sources = sources[: args.limit] if args.limit else sources
    root = Path(args.out) if args.out else default_root(args.profile)
    index = build_dataset(sources, root, args.profile, show_progress=not args.quiet)
    splits: dict[str, int] = {}
    for meta in index["clips"].values():
        splits[meta["split"]] = splits.get(meta["split"], 0) + meta["frames"]
    print(f"dataset at {root}: {len(index['clips'])} clips, frames per split {splits}, {len(index['failed'])} failed")
    for clip_id, reason in index["failed"].items():
        print(f"  skipped {clip_id}: {reason}")
    return 0


def cmd_train_syncnet(args: argparse.Namespace) -> int:
    from lipstream.training.dataset import default_root
    from lipstream.training.syncnet_train import SyncTrainConfig, train_syncnet

    cache = Path(args.cache) if args.cache else default_root("rt")
    out = Path(args.out) if args.out else cache_dir() / "train" / f"syncnet-seed{args.seed}"
    config = SyncTrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        max_minutes=args.max_minutes,
        validate_every=args.validate_every,
    )
    result = train_syncnet(cache, out, config, resume=args.resume)
    print(f"stopped at step {result['step']}; checkpoint in {out} (continue with --resume)")
    return 0


def cmd_train_generator(args: argparse.Namespace) -> int:
    from lipstream.training.dataset import default_root
    from lipstream.training.generator_train import GeneratorTrainConfig, GeneratorTrainer

    cache = Path(args.cache) if args.cache else default_root("rt")
    out = Path(args.out) if args.out else cache_dir() / "train" / f"generator-rt-seed{args.seed}"
    if args.expert and not Path(args.expert).is_file():
        print(f"lipstream train generator: error: expert {args.expert} does not exist", file=sys.stderr)
        return 2
    config = GeneratorTrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        d_lr=args.lr,
        perceptual=args.perceptual,
        gan_from_step=args.gan_from_step,
        max_minutes=args.max_minutes,
        validate_every=args.validate_every,
        expert=args.expert,
        grid_share=args.grid_share,
        lambda_sync=args.lambda_sync,
        lambda_mouth_adv=args.lambda_mouth_adv,
        lambda_fm=args.lambda_fm,
        colour_cast=args.augment == "colour",
        init=args.init,
    )
    result = GeneratorTrainer(cache, out, config, resume=args.resume).run()
    print(f"stopped at step {result['step']}; checkpoint in {out} (continue with --resume)")
    return 0


def cmd_train_export(args: argparse.Namespace) -> int:
    if args.model == "syncnet":
        from lipstream.training.syncnet_train import export_expert as export
    else:
        from lipstream.training.generator_train import export_generator as export
    if not Path(args.checkpoint).is_file():
        print(f"lipstream train export: error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 2
    out = export(Path(args.checkpoint), Path(args.output))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, fp16)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.video:
        from lipstream.benchmarks.video_eval import VideoEvalOptions, evaluate_videos

        if args.template and len(args.video) > 1:
            print("lipstream evaluate: error: --template goes with a single --video clip", file=sys.stderr)
            return 2
        options = VideoEvalOptions(
            args.template, args.weights, args.engine, args.max_seconds, args.template_seconds, args.reference_percentile
        )
        report = evaluate_videos(args.video, args.out, options)
        print(json.dumps(report["mean"], indent=2))
        print(f"wrote {args.out}/summary.json and, per clip, evaluation.json and contact_sheet.png")
        return 0
    if args.template:
        print("lipstream evaluate: error: --template needs --video (the clip to score)", file=sys.stderr)
        return 2
    from lipstream.training.dataset import default_root
    from lipstream.training.evaluate import evaluate

    cache = Path(args.cache) if args.cache else default_root("rt")
    report = evaluate(
        cache,
        Path(args.out),
        tuple(args.systems.split(",")),
        args.split,
        args.identity,
        args.max_clips,
        args.weights,
        args.expert,
        args.tail,
        args.smooth_styles,
    )
    print(json.dumps(report["systems"], indent=2))
    print(f"wrote {args.out}/evaluation.json, side_by_side.mp4, contact_sheet.png")
    return 0


def cmd_personalize(args: argparse.Namespace) -> int:
    from lipstream.models.weights import WEIGHTS_DIR
    from lipstream.realtime.runtime import avatar_folder
    from lipstream.training.personalize import Interrupted, PersonalizeConfig, personalize, replay_cache

    folder = avatar_folder(args.avatar)
    if folder is None:
        print(
            "lipstream personalize: error: the embedded default avatar is a photo without speech; prepare an "
            "avatar from a video of the person talking (lipstream prepare VIDEO --name NAME) and personalise that",
            file=sys.stderr,
        )
        return 2
    from lipstream.avatars import Avatar

    avatar = Avatar.load(folder)
    config = PersonalizeConfig(
        epochs=args.epochs, batch=args.batch, lr=args.lr, lambda_p=args.lambda_p, hold_out_seconds=args.hold_out
    )
    expert = Path(args.expert) if args.expert else WEIGHTS_DIR.parent / "experts" / "syncnet-seed0.pt"
    cache = replay_cache(args.replay, Path(args.cache) if args.cache else None, avatar.manifest.profile)
    print(f"replay: {cache or 'none (the template alone)'}", file=sys.stderr)
    try:
        summary = personalize(
            avatar, cache, expert, config, weights=args.weights, resume=args.resume, show_progress=sys.stderr.isatty()
        )
    except Interrupted as stop:
        print(f"lipstream personalize: {stop}; continue with: lipstream personalize {args.avatar} --resume")
        return 130
    print(json.dumps(summary, indent=2))
    print(f"personalised {avatar.name}: serve and render use it by themselves (model {summary['model_id']})")
    return 0


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def smoothing_factor(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 (off) to below 1, e.g. 0.3; got {text}")
    return value


REFERENCE_HELP = "the reference frame is the one whose mouth opening is at this percentile of the clip's (75)"


def percentile(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentile from 0 to 100, got {text}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, e.g. 0.3; got {text}")
    return value


SMOOTH_HELP = (
    "average the styles over frames (StyleLipSync's MaLS, causal): weight of the previous frame, 0 (off, "
    "default) to <1; the mouth lags speech by a/(1-a) frames"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipstream", description="Real-time lip-sync avatar server (StyleSync).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = sub.add_parser("models", help="parameter counts and GFLOPs per frame of each model profile")
    models.add_argument("--json", action="store_true", help="print a JSON object keyed by profile name")
    models.add_argument(
        "--profile", action="append", choices=sorted(PROFILES), help="only this profile (repeatable; default: all)"
    )
    models.add_argument(
        "--latency", type=int, default=0, metavar="N", help="also time N per-frame PyTorch CPU runs (median)"
    )
    models.set_defaults(func=cmd_models)

    prepare = sub.add_parser("prepare", help="prepare a template video or photo as an avatar (once)")
    prepare.add_argument("source", help="a video (any codec or frame rate PyAV reads) or a photo")
    prepare.add_argument("--name", required=True, help="avatar name: letters, digits, '_', '-', '.'")
    prepare.add_argument("--profile", choices=sorted(PROFILES), default="rt", help="model profile (default rt)")
    prepare.add_argument(
        "--mask", choices=("ushape", "pose"), default="ushape", help="lower-face mask (default ushape)"
    )
    prepare.add_argument(
        "--max-seconds", type=positive_float, default=10.0, help="use at most this much of the video (10)"
    )
    prepare.add_argument(
        "--smoothing", type=non_negative_float, default=2.0, help="crop smoothing, Gaussian sigma in frames (2)"
    )
    prepare.add_argument("--weights", help="model weights file (default: the profile's shipped weights)")
    prepare.add_argument("--reference-percentile", type=percentile, default=75.0, metavar="P", help=REFERENCE_HELP)
    prepare.add_argument(
        "--idle-loop",
        choices=("quiet", "all"),
        default="quiet",
        help="frames the avatar plays: the template's stillest 4 s back and forth (quiet, default), or all",
    )
    prepare.add_argument("--avatars", help="folder of avatars (default: $LIPSTREAM_AVATARS or the user cache)")
    prepare.add_argument("--sheet", help="also write a PNG contact sheet of the middle frame here")
    prepare.add_argument("--quiet", action="store_true", help="no progress display")
    prepare.set_defaults(func=cmd_prepare)

    export = sub.add_parser("export", help="export a profile to ONNX (fp32, fp16) and TensorRT, with parity checks")
    export.add_argument("--profile", choices=sorted(PROFILES), default="rt", help="model profile (default rt)")
    export.add_argument("--weights", help="model weights file (default: the profile's shipped weights)")
    export.add_argument("--fp16", action="store_true", help="also write fp16 graphs (style path kept in fp32)")
    export.add_argument("--tensorrt", action="store_true", help="also build TensorRT FP16 engines (NVIDIA GPU)")
    export.add_argument("--out", help="output folder (default: <cache>/exports/<model id>)")
    export.add_argument("--force", action="store_true", help="export again even if the folder is up to date")
    export.add_argument(
        "--avatar", help="avatar (name or folder) whose features feed the parity check (default: the default avatar)"
    )
    export.add_argument(
        "--speech", help="16-bit WAV whose mel windows feed the parity check (default: the avatar's audio)"
    )
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="serve an avatar over WebRTC (default: the embedded avatar on the CPU)")
    serve.add_argument("--avatar", help="avatar name or folder (default: the embedded default avatar)")
    serve.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="inference engine (default auto)")
    serve.add_argument("--profile", choices=sorted(PROFILES), default="rt")
    serve.add_argument("--weights", help="model weights file (default: the profile's shipped weights)")
    serve.add_argument("--smooth-styles", type=smoothing_factor, default=0.0, metavar="A", help=SMOOTH_HELP)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--samples", help="folder of 16-bit WAV speech samples the browser page may play")
    serve.add_argument(
        "--jitter-frames", type=int, default=1, help="input frames buffered before playback (1; 0 saves 40 ms)"
    )
    serve.add_argument("--max-sessions", type=int, default=4, help="admission limit; more get 503 (default 4)")
    serve.add_argument("--max-sessions-per-client", type=int, default=2, help="per remote address; more get 429")
    serve.add_argument(
        "--admission",
        choices=("measured", "count"),
        default="measured",
        help="measured (default): also refuse a session (503) when the machine's spare CPU could not hold it at "
        "25 fps; count: only --max-sessions",
    )
    serve.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN server for the server's ICE candidates, e.g. turn:turn.example.com:3478 (repeatable)",
    )
    serve.add_argument("--ice-username", help="TURN username (static; see --turn-secret-file for per-session ones)")
    serve.add_argument("--ice-credential", help="TURN password")
    serve.add_argument(
        "--turn-secret-file",
        help="coturn's static-auth-secret (use-auth-secret): every session and client gets its own short-lived "
        "TURN credential (also read from $LIPSTREAM_TURN_SECRET)",
    )
    serve.add_argument(
        "--turn-ttl", type=positive_int, metavar="SECONDS", help="TURN credential lifetime (default 12 h)"
    )
    serve.add_argument(
        "--ice-relay-only", action="store_true", help="the server's peers use TURN relays only (hides its address)"
    )
    serve.add_argument(
        "--token-file",
        help="bearer tokens, one per line, required to open, drive, watch or end sessions "
        "(also read from $LIPSTREAM_TOKENS, comma separated)",
    )
    serve.add_argument(
        "--tts",
        choices=("espeak", "openai"),
        default="espeak",
        help="who speaks the text of POST /sessions/{id}/speak: the local espeak-ng (default), or an "
        "OpenAI-compatible /v1/audio/speech server at --tts-url (key in $LIPSTREAM_TTS_KEY)",
    )
    serve.add_argument("--tts-url", help="base address of the OpenAI-compatible speech server")
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let pages from this origin (e.g. https://app.example.com, or *) call the API, WHIP and WHEP; repeatable",
    )
    serve.add_argument(
        "--instance",
        type=instance_name,
        help="this process's name behind a load balancer: it starts every session id (see lipstream cluster)",
    )
    serve.add_argument(
        "--agent-port", type=port_number, help="answer HAProxy's agent check here: ready with a weight, or drain"
    )
    serve.add_argument(
        "--trust-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a load balancer's address whose X-Forwarded-For names the client (repeatable)",
    )
    serve.add_argument(
        "--janus",
        metavar="URL",
        help="Janus's HTTP API (e.g. http://127.0.0.1:8088/janus): POST /sessions/{id}/publish fans a session "
        "out through a VideoRoom there",
    )
    serve.set_defaults(func=cmd_serve)

    cluster = sub.add_parser(
        "cluster", help="several serve processes behind Debian's HAProxy on this machine (see the README)"
    )
    cluster.add_argument("--processes", type=positive_int, default=2, help="serve processes (default 2)")
    cluster.add_argument(
        "--port", type=port_number, default=8080, help="HAProxy's port; process i serves on port+i (default 8080)"
    )
    cluster.add_argument(
        "serve_args", nargs=argparse.REMAINDER, help="after --: options for every serve process (e.g. --engine)"
    )
    cluster.set_defaults(func=cmd_cluster)

    talk = sub.add_parser("talk", help="stream the local microphone (or a WAV file) to a running server")
    talk.add_argument("--server", default="http://127.0.0.1:8080", help="the server (default http://127.0.0.1:8080)")
    talk.add_argument("--session", help="drive this session (default: open one, and end it afterwards)")
    talk.add_argument("--avatar", help="avatar of the session it opens")
    talk.add_argument("--file", help="a WAV file instead of the microphone, sent in real time")
    talk.add_argument("--device", help="input device name or number (python -m sounddevice lists them)")
    talk.add_argument("--text", help="say this through the server's TTS provider instead of sending audio")
    talk.add_argument("--voice", help="with --text: the provider's voice (espeak-ng: en, de, fr, ...)")
    talk.set_defaults(func=cmd_talk)

    render = sub.add_parser("render", help="the real-time pipeline without WebRTC: avatar + audio -> mp4")
    render.add_argument("avatar", help="avatar name or folder ('default' for the embedded avatar)")
    render.add_argument("audio", help="speech: any audio file FFmpeg reads")
    render.add_argument("-o", "--output", required=True, help="output .mp4")
    render.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    render.add_argument("--profile", choices=sorted(PROFILES), default="rt")
    render.add_argument("--weights", help="model weights file")
    render.add_argument("--smooth-styles", type=smoothing_factor, default=0.0, metavar="A", help=SMOOTH_HELP)
    render.set_defaults(func=cmd_render)

    personal = sub.add_parser(
        "personalize", help="personalised optimisation of an avatar (StyleSync dW + dP on its template video)"
    )
    personal.add_argument("avatar", help="prepared avatar name or folder (from a video with speech)")
    personal.add_argument("--epochs", type=positive_float, default=5.0, help="passes over the template (5)")
    personal.add_argument("--batch", type=positive_int, default=4, help="template samples per step, as many general")
    personal.add_argument("--lr", type=positive_float, default=1e-4)
    personal.add_argument("--lambda-p", type=non_negative_float, default=1e-3, help="L2 penalty on dW and dP")
    personal.add_argument(
        "--hold-out", type=non_negative_float, default=0.0, metavar="SECONDS", help="leave the template's end out"
    )
    personal.add_argument("--cache", help="general training cache mixed in 1:1 (default: <cache>/dataset/rt)")
    personal.add_argument(
        "--replay",
        choices=("auto", "cache", "none"),
        default="auto",
        help="mix general training data in 1:1: auto (when a training cache is built), cache (required) or none",
    )
    personal.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    personal.add_argument("--expert", help="SyncNet expert for the sync loss (default: the shipped seed 0)")
    personal.add_argument("--weights", help="general weights to start from (default: the profile's shipped ones)")
    personal.set_defaults(func=cmd_personalize)

    dataset = sub.add_parser("dataset", help="the training cache")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    build = dataset_sub.add_parser("build", help="videos -> aligned crops, landmarks and mel (incremental)")
    build.add_argument("--grid", help="GRID speaker folder (video/, align/, splits.json)")
    build.add_argument("--talking", help="folder of talking-head clips (held-out identities go to 'test')")
    build.add_argument("--profile", choices=sorted(PROFILES), default="rt")
    build.add_argument("--out", help="cache folder (default: <cache>/dataset/<profile>)")
    build.add_argument("--limit", type=int, default=0, help="only the first N clips (0: all)")
    build.add_argument("--quiet", action="store_true")
    build.set_defaults(func=cmd_dataset_build)

    train = sub.add_parser("train", help="training jobs (resumable)")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="MODEL")
    syncnet = train_sub.add_parser("syncnet", help="the lip-sync expert (in-sync vs shifted pairs)")
    syncnet.add_argument("--cache", help="dataset cache (default: <cache>/dataset/rt)")
    syncnet.add_argument("--out", help="checkpoint folder (default: <cache>/train/syncnet-seed<N>)")
    syncnet.add_argument("--seed", type=int, default=0)
    syncnet.add_argument("--steps", type=int, default=20_000)
    syncnet.add_argument("--batch", type=int, default=32)
    syncnet.add_argument("--lr", type=positive_float, default=3e-4)
    syncnet.add_argument("--validate-every", type=int, default=1000)
    syncnet.add_argument("--max-minutes", type=positive_float, default=120.0, help="length of one chunk")
    syncnet.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    syncnet.set_defaults(func=cmd_train_syncnet)
    generator = train_sub.add_parser("generator", help="the StyleSync generator, general model (rt)")
    generator.add_argument("--cache", help="dataset cache (default: <cache>/dataset/rt)")
    generator.add_argument("--out", help="checkpoint folder (default: <cache>/train/generator-rt-seed<N>)")
    generator.add_argument("--seed", type=int, default=0)
    generator.add_argument("--steps", type=int, default=200_000)
    generator.add_argument("--batch", type=int, default=4, help="samples of 5 consecutive frames per step")
    generator.add_argument("--lr", type=positive_float, default=1e-3, help="generator and discriminator")
    generator.add_argument("--expert", help="fp16 SyncNet expert for the sync loss (none: no sync loss)")
    generator.add_argument("--perceptual", choices=("ms-ssim", "none"), default="ms-ssim")
    generator.add_argument(
        "--grid-share", type=share, default=0.5, help="probability that a sample comes from GRID, not talking clips"
    )
    generator.add_argument("--gan-from-step", type=int, default=3000, help="the adversarial loss joins here")
    generator.add_argument(
        "--lambda-sync", type=non_negative_float, default=1.0, help="weight of the sync loss (lambda_s)"
    )
    generator.add_argument(
        "--lambda-mouth-adv",
        type=non_negative_float,
        default=0.0,
        help="weight of the lips' patch discriminator (0: none), from --gan-from-step",
    )
    generator.add_argument(
        "--lambda-fm", type=non_negative_float, default=0.0, help="feature matching in the lips' discriminator"
    )
    generator.add_argument(
        "--augment",
        choices=("colour", "light"),
        default="colour",
        help="colour: per-channel colour casts; light: brightness and contrast only (with mirroring, both)",
    )
    generator.add_argument("--init", help="fp16 weights to start from, e.g. models/weights/rt.pt (a fine-tune)")
    generator.add_argument("--validate-every", type=int, default=2000)
    generator.add_argument("--max-minutes", type=positive_float, default=120.0, help="length of one chunk")
    generator.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    generator.set_defaults(func=cmd_train_generator)
    weights = train_sub.add_parser("export", help="a checkpoint's networks alone, in fp16 (small enough to commit)")
    weights.add_argument("model", choices=("syncnet", "generator"))
    weights.add_argument("checkpoint", help="checkpoint.pt of a training run")
    weights.add_argument("-o", "--output", required=True, help="the fp16 weights file to write")
    weights.set_defaults(func=cmd_train_export)
    for job in (syncnet, generator, personal):
        job.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")

    evaluate = sub.add_parser("evaluate", help="score renderings of held-out clips against ground truth")
    evaluate.add_argument(
        "--video",
        metavar="CLIP",
        nargs="+",
        help="score videos with speech: each is prepared as the avatar and driven by its own audio",
    )
    evaluate.add_argument("--template", metavar="VIDEO", help="with --video: prepare this video as the avatar instead")
    evaluate.add_argument("--engine", choices=ENGINE_CHOICES, default="auto", help="with --video: the render's engine")
    evaluate.add_argument(
        "--max-seconds", type=positive_float, default=60.0, help="with --video: score at most this much of the clip"
    )
    evaluate.add_argument(
        "--template-seconds", type=positive_float, default=120.0, help="with --template: seconds of it to prepare"
    )
    evaluate.add_argument(
        "--reference-percentile", type=percentile, default=75.0, metavar="P", help="with --video: " + REFERENCE_HELP
    )
    evaluate.add_argument("--cache", help="dataset cache (default: <cache>/dataset/rt)")
    evaluate.add_argument("--out", default="evaluation", help="folder for the JSON, MP4 and PNG")
    evaluate.add_argument("--systems", default="model,static,ground-truth", help="comma-separated")
    evaluate.add_argument("--split", default="test")
    evaluate.add_argument(
        "--identity", default="grid_s1", help="comma-separated identities, or held-out (the 5 unseen talking faces)"
    )
    evaluate.add_argument("--max-clips", type=int, default=10)
    evaluate.add_argument("--weights", help="rt weights for the model (default: the shipped ones)")
    evaluate.add_argument(
        "--tail",
        type=positive_float,
        metavar="SECONDS",
        help="render only each clip's last SECONDS, reference from its start (a personalised avatar's held-out end)",
    )
    evaluate.add_argument("--smooth-styles", type=smoothing_factor, default=0.0, metavar="A", help=SMOOTH_HELP)
    evaluate.add_argument("--expert", help="fp16 SyncNet expert for the sync scores")
    evaluate.set_defaults(func=cmd_evaluate)

    bench = sub.add_parser("bench", help="benchmarks that write JSON, a PNG plot and a markdown table")
    bench_sub = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    engine = bench_sub.add_parser("engine", help="per-frame graph latency and frames/s per engine and batch size")
    engine.add_argument("--profile", choices=sorted(PROFILES), default="rt")
    engine.add_argument(
        "--engines",
        default="onnxruntime,torch",
        help="comma-separated: auto, tensorrt, onnxruntime-cuda, onnxruntime, torch",
    )
    engine.add_argument("--batches", default="1,2,4,8,16", help="comma-separated batch sizes")
    engine.add_argument("--runs", type=int, default=30, help="timed calls per engine and batch (median and p95)")
    engine.add_argument("--rounds", type=positive_int, default=3, help="interleaved rounds; the best of each is kept")
    engine.add_argument("--ops", action="store_true", help="add ONNX Runtime's time per operator type (batch 1, 8)")
    engine.add_argument("--out", default="benchmarks/results", help="folder for the JSON, PNG and markdown")
    engine.set_defaults(func=cmd_bench)
    transitions = bench_sub.add_parser(
        "transitions", help="how far the lips jump entering and leaving speech, with and without the blend ramps"
    )
    transitions.add_argument("--avatar", help="avatar name or folder (default: the embedded one)")
    transitions.add_argument("--engine", choices=ENGINE_CHOICES, default="auto")
    transitions.add_argument("--speech", required=True, help="speech to drive it (any audio file FFmpeg reads)")
    transitions.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    transitions.set_defaults(func=cmd_bench_transitions)
    session = bench_sub.add_parser("session", help="N loopback clients: fps, dropped frames, audio-to-mouth latency")
    session.add_argument("--sessions", type=int, default=2)
    session.add_argument("--seconds", type=positive_float, default=60.0)
    session.add_argument("--speech", help="16-bit WAV with speech for the bursts (default: the avatar's audio)")
    session.add_argument("--out", default="benchmarks/results", help="folder for the JSON")
    session.set_defaults(func=cmd_bench_session)
    fanout = bench_sub.add_parser("fanout", help="one session, N viewers: direct WHEP peers or through Janus")
    fanout.add_argument("--viewers", type=positive_int, default=10)
    fanout.add_argument("--via", choices=("janus", "direct"), default="janus")
    fanout.add_argument("--seconds", type=positive_float, default=20.0, help="measured, after 3 s of warm-up")
    fanout.add_argument("--speech", help="speech the session says on a loop (default: the bundled sample)")
    fanout.add_argument("--silent", action="store_true", help="no speech: the fan-out's cost without inference")
    fanout.add_argument("--out", help="the JSON file (default: benchmarks/results/fanout-<via>-<viewers>.json)")
    fanout.set_defaults(func=cmd_bench_fanout)
    suite = bench_sub.add_parser(
        "all", help="the latency suite: latency, A/V offset, drift, first frame, interrupt, concurrency, stages"
    )
    suite.add_argument("--minutes", type=positive_float, default=10.0, help="length of the latency/drift run")
    suite.add_argument("--max-sessions", type=int, default=4, help="concurrency sweep 1..N sessions")
    suite.add_argument("--concurrency-seconds", type=positive_float, default=20.0, help="per step of the sweep")
    suite.add_argument("--trials", type=int, default=10, help="first-frame and interrupt trials")
    suite.add_argument("--speech", help="WAV with speech for the bursts (default: the avatar's own audio)")
    suite.add_argument("--out", default="benchmarks/results", help="folder for the JSON and plots")
    suite.add_argument("--summary", default="benchmarks/RESULTS.md", help="markdown summary")
    suite.add_argument("--no-engine", action="store_true", help="leave out the engine benchmark")
    suite.set_defaults(func=cmd_bench_all)
    soak = bench_sub.add_parser(
        "soak", help="N sessions for a long time: no crash, <= 0.1 %% dropped, A/V drift <= 1 frame per session"
    )
    soak.add_argument("--minutes", type=positive_float, default=30.0)
    soak.add_argument("--sessions", type=positive_int, default=2)
    soak.add_argument("--speech", help="WAV with speech for the bursts (default: a file of ../shared/data/speech)")
    soak.add_argument("--out", default="benchmarks/results", help="folder for the timestamped JSON")
    soak.add_argument("--summary", default="benchmarks/SOAK.md", help="markdown summary (JSON and PNG beside it)")
    soak.set_defaults(func=cmd_bench_soak)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "latency", 0) < 0:
        print("lipstream: --latency takes a number of runs >= 0", file=sys.stderr)
        return 2
    from lipstream.errors import is_user_error

    # lipstream's own records (engine failures, failed tasks) reach stderr; other libraries' warnings too.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("lipstream").setLevel(logging.INFO)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.func(args)
    except Exception as err:
        if not is_user_error(err):
            raise
        print(f"lipstream {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
