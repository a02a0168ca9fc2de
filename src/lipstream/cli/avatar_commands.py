"""`lipstream models`, `prepare`, `export`, `render` and `personalize`: an avatar's model and the avatar itself."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lipstream.avatars import options as prepare_options
from lipstream.models.config import PROFILES
from lipstream.paths import avatars_dir
from lipstream.training.config import DELTA_P_MODES, PersonalizeConfig

from .args import (
    REFERENCE_HELP,
    WEIGHTS_HELP,
    add_model_options,
    add_profile,
    defaults,
    non_negative_float,
    non_negative_int,
    percentile,
    positive_float,
    positive_int,
    runtime_from_options,
)

PERSONALIZE = defaults(PersonalizeConfig)


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
        hd=args.hd,
        audio_offset_ms=args.audio_offset,
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
        f"  hd path {'on' if m.extra['hd']['enabled'] else 'off'}: {m.extra['hd']['why']}\n"
        f"  {result.frames_per_second:.1f} frames/s ({result.seconds:.1f} s)"
    )
    if result.audio_sync is not None:
        line = f"sound and mouth: {result.audio_sync.message()}"
        if result.audio_sync.suspect:
            print(f"lipstream prepare: warning: {args.name}: {line}", file=sys.stderr)
        else:
            print(f"  {line}")
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


def cmd_render(args: argparse.Namespace) -> int:
    from lipstream.realtime.render import render

    runtime = runtime_from_options(args)
    result = render(runtime, args.audio, args.output)
    print(
        f"wrote {result.path}: {result.frames} frames ({result.speech_frames} generated), "
        f"{result.frames / max(result.seconds, 1e-9):.1f} frames/s with {runtime.engine.label}"
    )
    return 0


def cmd_personalize(args: argparse.Namespace) -> int:
    from lipstream.avatars import Avatar
    from lipstream.models.weights import WEIGHTS_DIR
    from lipstream.realtime.runtime import avatar_folder
    from lipstream.training.personalize import Interrupted, personalize, replay_cache

    folder = avatar_folder(args.avatar)
    if folder is None:
        print(
            "lipstream personalize: error: the built-in avatars are not personalised here (the default ships "
            "personalised, the photo has no speech); prepare an avatar from a video of the person talking "
            "(lipstream prepare VIDEO --name NAME) and personalise that",
            file=sys.stderr,
        )
        return 2
    avatar = Avatar.load(folder)
    sync = avatar.manifest.extra.get("audio_sync", {})
    if sync.get("suspect"):
        print(
            f"lipstream personalize: warning: {avatar.name}'s sound follows its mouth best at {sync['lag_frames']} "
            "frames (real speech: 0 to 2), so its audio track looks shifted and personalising learns the shift; "
            f"prepare it again with --audio-offset {sync['suggested_offset_ms']}",
            file=sys.stderr,
        )
    config = PersonalizeConfig(
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        lambda_p=args.lambda_p,
        lambda_motion=args.lambda_motion,
        hold_out_seconds=args.hold_out,
        delta_p=args.delta_p,
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
    if config.delta_p == "channels":
        print(f"personalised {avatar.name}: any server of model {summary['model_id']} serves it, beside other avatars")
    else:
        print(f"personalised {avatar.name}: serve and render use its own model ({summary['model_id']})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="parameter counts and GFLOPs per frame of each model profile")
    models.add_argument("--json", action="store_true", help="print a JSON object keyed by profile name")
    models.add_argument(
        "--profile", action="append", choices=sorted(PROFILES), help="only this profile (repeatable; default: all)"
    )
    models.add_argument(
        "--latency", type=non_negative_int, default=0, metavar="N", help="also time N per-frame PyTorch CPU runs"
    )
    models.set_defaults(func=cmd_models)

    o = prepare_options
    prepare = sub.add_parser("prepare", help="prepare a template video or photo as an avatar (once)")
    prepare.add_argument("source", help="a video (any codec or frame rate PyAV reads) or a photo")
    prepare.add_argument("--name", required=True, help="avatar name: letters, digits, '_', '-', '.'")
    add_profile(prepare)
    prepare.add_argument(
        "--mask", choices=o.MASK_KINDS, default=o.DEFAULT_MASK, help="lower-face mask (default %(default)s)"
    )
    prepare.add_argument(
        "--max-seconds",
        type=positive_float,
        default=o.MAX_SECONDS,
        help="use at most this much of the video (%(default)s)",
    )
    prepare.add_argument(
        "--smoothing",
        type=non_negative_float,
        default=o.SMOOTHING_SIGMA,
        help="crop smoothing, Gaussian sigma in frames (%(default)s)",
    )
    prepare.add_argument("--weights", help=WEIGHTS_HELP)
    prepare.add_argument(
        "--reference-percentile", type=percentile, default=o.REFERENCE_PERCENTILE, metavar="P", help=REFERENCE_HELP
    )
    prepare.add_argument(
        "--idle-loop",
        choices=o.IDLE_LOOPS,
        default=o.DEFAULT_IDLE_LOOP,
        help=f"frames the avatar plays: the template's stillest {o.QUIET_SECONDS:g} s back and forth (quiet), "
        "or all (default %(default)s)",
    )
    prepare.add_argument(
        "--hd",
        choices=o.HD_MODES,
        default="auto",
        help="the hd path, the generated mouth upsampled 2x for large faces: auto (by the face's size), on or off",
    )
    prepare.add_argument(
        "--audio-offset",
        type=int,
        default=0,
        metavar="MS",
        help="delay the video's sound by MS against its picture (negative: advance it), for a video whose audio "
        "track is shifted; prepare reports how the sound follows the mouth and suggests a value",
    )
    prepare.add_argument("--avatars", help="folder of avatars (default: $LIPSTREAM_AVATARS or the user cache)")
    prepare.add_argument("--sheet", help="also write a PNG contact sheet of the middle frame here")
    prepare.add_argument("--quiet", action="store_true", help="no progress display")
    prepare.set_defaults(func=cmd_prepare)

    export = sub.add_parser("export", help="export a profile to ONNX (fp32, fp16) and TensorRT, with parity checks")
    add_profile(export)
    export.add_argument("--weights", help=WEIGHTS_HELP)
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

    render = sub.add_parser("render", help="the real-time pipeline without WebRTC: avatar + audio -> mp4")
    render.add_argument("avatar", help="avatar name or folder ('default' for the embedded avatar)")
    render.add_argument("audio", help="speech: any audio file FFmpeg reads")
    render.add_argument("-o", "--output", required=True, help="output .mp4")
    add_model_options(render)
    render.set_defaults(func=cmd_render)

    p = PERSONALIZE
    personal = sub.add_parser(
        "personalize", help="personalised optimisation of an avatar (StyleSync dW + dP on its template video)"
    )
    personal.add_argument("avatar", help="prepared avatar name or folder (from a video with speech)")
    personal.add_argument(
        "--epochs", type=positive_float, default=p["epochs"], help="passes over the template (%(default)s)"
    )
    personal.add_argument(
        "--batch", type=positive_int, default=p["batch"], help="template samples per step, as many general"
    )
    personal.add_argument(
        "--lr", type=positive_float, help="learning rate (default: 1e-3 with --delta-p channels, 1e-4 with full)"
    )
    personal.add_argument(
        "--delta-p",
        choices=DELTA_P_MODES,
        default=p["delta_p"],
        help="the generator's shift: per-channel biases only (channels, the default: 3919 values, served by "
        "the general model beside other avatars) or every parameter (full: a model of the avatar's own)",
    )
    personal.add_argument("--lambda-p", type=non_negative_float, default=p["lambda_p"], help="L2 penalty on dW and dP")
    personal.add_argument(
        "--lambda-motion",
        type=non_negative_float,
        default=p["lambda_motion"],
        metavar="W",
        help="keep the general model's motion: weight of the L1 between what the audio changes in the personalised "
        "lips and in the general model's (30 was measured; 0, the default: off; doubles the training time)",
    )
    personal.add_argument(
        "--hold-out",
        type=non_negative_float,
        default=p["hold_out_seconds"],
        metavar="SECONDS",
        help="leave the template's end out",
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
    personal.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: all cores)")
    personal.set_defaults(func=cmd_personalize)
