"""`lipstream dataset`, `train` and `evaluate`: the training cache, the training jobs, and their scores."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lipstream.avatars.options import HD_MODES
from lipstream.paths import cache_dir
from lipstream.training.config import (
    EVAL_IDENTITY,
    EVAL_MAX_CLIPS,
    EVAL_SPLIT,
    GeneratorTrainConfig,
    SyncTrainConfig,
    UpsamplerTrainConfig,
    VideoEvalOptions,
    VoiceDistillConfig,
)

from .args import (
    ENGINE_KINDS,
    REFERENCE_HELP,
    SMOOTH_HELP,
    add_mouth_options,
    add_profile,
    defaults,
    non_negative_float,
    non_negative_int,
    percentile,
    positive_float,
    positive_int,
    share,
    smoothing_factor,
    voice_factor,
)

SYNCNET = defaults(SyncTrainConfig)
GENERATOR = defaults(GeneratorTrainConfig)
VIDEO_EVAL = defaults(VideoEvalOptions)
UPSAMPLER = defaults(UpsamplerTrainConfig)
VOICE = defaults(VoiceDistillConfig)


def _cache(args: argparse.Namespace) -> Path:
    from lipstream.training.dataset import default_root

    return Path(args.cache) if args.cache else default_root("rt")


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
    root = Path(args.out) if args.out else default_root(args.profile, args.crop_size)
    index = build_dataset(sources, root, args.profile, show_progress=not args.quiet, crop_size=args.crop_size)
    splits: dict[str, int] = {}
    for meta in index["clips"].values():
        splits[meta["split"]] = splits.get(meta["split"], 0) + meta["frames"]
    print(f"dataset at {root}: {len(index['clips'])} clips, frames per split {splits}, {len(index['failed'])} failed")
    for clip_id, reason in index["failed"].items():
        print(f"  skipped {clip_id}: {reason}")
    for clip_id, meta in index["clips"].items():
        if (sync := meta.get("audio_sync") or {}).get("suspect"):
            print(
                f"  {clip_id}: its sound follows the mouth best at {sync['lag_frames']} frames (r {sync['r']}; real "
                f"speech 0 to 2, r {sync['r_natural']}): the audio track looks shifted "
                f"(audio offset to mend it: {sync['suggested_offset_ms']} ms)"
            )
    return 0


def cmd_dataset_voice(args: argparse.Namespace) -> int:
    from lipstream.dsp.voice import DEFAULT_REFERENCE
    from lipstream.training.dataset import default_root, measure_voice_reference

    root = Path(args.cache) if args.cache else default_root("rt")
    try:
        reference, frames = measure_voice_reference(root, args.identity, args.split)
    except (FileNotFoundError, ValueError) as err:
        print(f"lipstream dataset voice: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else DEFAULT_REFERENCE
    reference.to_json(out, frames)
    print(f"wrote {out}: mean speech spectrum of {reference.source}, {frames} speech frames")
    return 0


def cmd_train_syncnet(args: argparse.Namespace) -> int:
    from lipstream.training.syncnet_train import train_syncnet

    out, job = _job(args, "syncnet")
    result = train_syncnet(_cache(args), out, SyncTrainConfig(**job), resume=args.resume)
    return _stopped(result, out)


def cmd_train_generator(args: argparse.Namespace) -> int:
    from lipstream.training.generator_train import GeneratorTrainer

    out, job = _job(args, "generator-rt")
    if args.expert and not Path(args.expert).is_file():
        print(f"lipstream train generator: error: expert {args.expert} does not exist", file=sys.stderr)
        return 2
    config = GeneratorTrainConfig(
        **job,
        d_lr=args.lr,
        perceptual=args.perceptual,
        gan_from_step=args.gan_from_step,
        expert=args.expert,
        grid_share=args.grid_share,
        lambda_sync=args.lambda_sync,
        lambda_mouth_adv=args.lambda_mouth_adv,
        lambda_fm=args.lambda_fm,
        colour_cast=args.augment == "colour",
        voice_factor=args.voice_augment,
        voice_level=args.voice_level,
        trainable=args.trainable,
        init=args.init,
    )
    return _stopped(GeneratorTrainer(_cache(args), out, config, resume=args.resume).run(), out)


def cmd_train_voice(args: argparse.Namespace) -> int:
    from lipstream.training.voice_distill import VoiceDistiller

    out, job = _job(args, "voice")
    config = VoiceDistillConfig(**job, warp=args.warp, grid_share=args.grid_share, init=args.init)
    result = VoiceDistiller(_cache(args), out, config, resume=args.resume).run()
    _stopped(result, out)
    print(f"weights: lipstream train export generator {out / 'checkpoint.pt'} -o WEIGHTS.pt")
    return 0


def cmd_train_upsampler(args: argparse.Namespace) -> int:
    from lipstream.training.dataset import default_root
    from lipstream.training.upsampler_train import UpsamplerTrainer

    out, job = _job(args, "upsampler")
    cache = Path(args.cache) if args.cache else default_root("rt", 256)
    config = UpsamplerTrainConfig(
        **job,
        width=args.width,
        lambda_laplacian=args.lambda_laplacian,
        lambda_adv=args.lambda_adv,
        adv_from_step=args.adv_from_step,
        weights=args.weights,
    )
    return _stopped(UpsamplerTrainer(cache, out, config, resume=args.resume).run(), out)


def cmd_train_export(args: argparse.Namespace) -> int:
    if args.model == "syncnet":
        from lipstream.training.syncnet_train import export_expert as export
    elif args.model == "upsampler":
        from lipstream.training.upsampler_train import export_upsampler as export
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
        from lipstream.benchmarks.video_eval import evaluate_videos

        if args.template and len(args.video) > 1:
            print("lipstream evaluate: error: --template goes with a single --video clip", file=sys.stderr)
            return 2
        if args.template and args.avatar:
            print("lipstream evaluate: error: give --template or --avatar, not both", file=sys.stderr)
            return 2
        options = VideoEvalOptions(
            args.template,
            args.weights,
            args.engine,
            args.max_seconds,
            args.template_seconds,
            args.reference_percentile,
            args.hd,
            args.avatar,
            motion_gain=args.motion_gain,
            voice_warp=args.voice_warp,
            voice_norm=args.voice_norm == "on",
            keep_template=args.keep_template == "on",
        )
        report = evaluate_videos(args.video, args.out, options)
        print(json.dumps(report["mean"], indent=2))
        print(f"wrote {args.out}/summary.json and, per clip, evaluation.json and contact_sheet.png")
        return 0
    if args.template:
        print("lipstream evaluate: error: --template needs --video (the clip to score)", file=sys.stderr)
        return 2
    from lipstream.training.evaluate import evaluate

    report = evaluate(
        _cache(args),
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


def _job(args: argparse.Namespace, model: str) -> tuple[Path, dict]:
    """A training job's checkpoint folder, and the config fields every job takes (those of
    `_add_job_options`, with --batch and --lr)."""
    out = Path(args.out) if args.out else cache_dir() / "train" / f"{model}-seed{args.seed}"
    fields = {
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "max_minutes": args.max_minutes,
    }
    if hasattr(args, "validate_every"):  # jobs whose config validates on a schedule
        fields["validate_every"] = args.validate_every
    return out, fields


def _stopped(result: dict, out: Path) -> int:
    print(f"stopped at step {result['step']}; checkpoint in {out} (continue with --resume)")
    return 0


def _add_job_options(job: argparse.ArgumentParser, config: dict, model: str) -> None:
    """What every resumable training job takes: its data, folder, seed, length and threads."""
    job.add_argument("--cache", help="dataset cache (default: <cache>/dataset/rt)")
    job.add_argument("--out", help=f"checkpoint folder (default: <cache>/train/{model}-seed<N>)")
    job.add_argument("--seed", type=non_negative_int, default=config["seed"])
    job.add_argument("--steps", type=positive_int, default=config["steps"], help="(%(default)s)")
    if "validate_every" in config:
        job.add_argument("--validate-every", type=positive_int, default=config["validate_every"], help="(%(default)s)")
    job.add_argument(
        "--max-minutes", type=positive_float, default=config["max_minutes"], help="length of one chunk (%(default)s)"
    )
    job.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    job.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: all cores)")


def register(sub: argparse._SubParsersAction) -> None:
    dataset = sub.add_parser("dataset", help="the training cache")
    dataset_sub = dataset.add_subparsers(dest="dataset_command", required=True, metavar="ACTION")
    build = dataset_sub.add_parser("build", help="videos -> aligned crops, landmarks and mel (incremental)")
    build.add_argument("--grid", help="GRID speaker folder (video/, align/, splits.json)")
    build.add_argument("--talking", help="folder of talking-head clips (held-out identities go to 'test')")
    add_profile(build)
    build.add_argument(
        "--crop-size", type=positive_int, help="crop side in pixels (default: the profile's; 256 for the upsampler)"
    )
    build.add_argument("--out", help="cache folder (default: <cache>/dataset/<profile>[-<crop size>])")
    build.add_argument("--limit", type=non_negative_int, default=0, help="only the first N clips (0: all)")
    build.add_argument("--quiet", action="store_true")
    build.set_defaults(func=cmd_dataset_build)
    voice = dataset_sub.add_parser(
        "voice", help="the learnt voice's mean speech spectrum, which sessions' voices are shifted to (--voice-norm)"
    )
    voice.add_argument("--cache", help="training cache (default: <cache>/dataset/rt)")
    voice.add_argument("--identity", default="grid_s1", help="the identity whose voice the model learnt (grid_s1)")
    voice.add_argument("--split", default="train")
    voice.add_argument("--out", help="JSON to write (default: the shipped models/weights/rt.voice.json)")
    voice.set_defaults(func=cmd_dataset_voice)

    train = sub.add_parser("train", help="training jobs (resumable)")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="MODEL")
    syncnet = train_sub.add_parser("syncnet", help="the lip-sync expert (in-sync vs shifted pairs)")
    _add_job_options(syncnet, SYNCNET, "syncnet")
    syncnet.add_argument("--batch", type=positive_int, default=SYNCNET["batch"], help="(%(default)s)")
    syncnet.add_argument("--lr", type=positive_float, default=SYNCNET["lr"], help="(%(default)s)")
    syncnet.set_defaults(func=cmd_train_syncnet)

    g = GENERATOR
    generator = train_sub.add_parser("generator", help="the StyleSync generator, general model (rt)")
    _add_job_options(generator, g, "generator-rt")
    generator.add_argument(
        "--batch", type=positive_int, default=g["batch"], help="samples of 5 consecutive frames per step (%(default)s)"
    )
    generator.add_argument(
        "--lr", type=positive_float, default=g["lr"], help="generator and discriminator (%(default)s)"
    )
    generator.add_argument("--expert", help="fp16 SyncNet expert for the sync loss (none: no sync loss)")
    generator.add_argument("--perceptual", choices=("ms-ssim", "none"), default=g["perceptual"])
    generator.add_argument(
        "--grid-share",
        type=share,
        default=g["grid_share"],
        help="probability that a sample comes from GRID, not talking clips (%(default)s)",
    )
    generator.add_argument(
        "--gan-from-step",
        type=non_negative_int,
        default=g["gan_from_step"],
        help="the adversarial loss joins here (%(default)s)",
    )
    generator.add_argument(
        "--lambda-sync",
        type=non_negative_float,
        default=g["lambda_sync"],
        help="weight of the sync loss (lambda_s, %(default)s)",
    )
    generator.add_argument(
        "--lambda-mouth-adv",
        type=non_negative_float,
        default=g["lambda_mouth_adv"],
        help="weight of the lips' patch discriminator (0: none), from --gan-from-step",
    )
    generator.add_argument(
        "--lambda-fm",
        type=non_negative_float,
        default=g["lambda_fm"],
        help="feature matching in the lips' discriminator",
    )
    generator.add_argument(
        "--augment",
        choices=("colour", "light"),
        default="colour" if g["colour_cast"] else "light",
        help="colour: per-channel colour casts; light: brightness and contrast only (with mirroring, both)",
    )
    generator.add_argument(
        "--voice-augment",
        type=voice_factor,
        default=g["voice_factor"],
        metavar="FACTOR",
        help="hear each sample with its formants warped by a factor in [1/FACTOR, FACTOR], "
        "e.g. 1.25 (%(default)s: the clips' own voices)",
    )
    generator.add_argument(
        "--voice-level",
        type=non_negative_float,
        default=g["voice_level"],
        metavar="MEL",
        help="and its level moved by up to this many mel units either way, 1 = 12.5 dB (%(default)s)",
    )
    generator.add_argument(
        "--trainable",
        choices=("all", "audio"),
        default=g["trainable"],
        help="what learns: all, or audio (the audio encoder and mapping; face encoder and generator frozen)",
    )
    generator.add_argument("--init", help="fp16 weights to start from, e.g. models/weights/rt.pt (a fine-tune)")
    generator.set_defaults(func=cmd_train_generator)

    v = VOICE
    voice = train_sub.add_parser(
        "voice", help="the audio encoder, taught to hear voices with other formants as the voice it learnt"
    )
    _add_job_options(voice, v, "voice")
    voice.add_argument("--batch", type=positive_int, default=v["batch"], help="mel windows per step (%(default)s)")
    voice.add_argument("--lr", type=positive_float, default=v["lr"], help="(%(default)s)")
    voice.add_argument(
        "--warp",
        type=voice_factor,
        default=v["warp"],
        metavar="FACTOR",
        help="formants warped by a factor in [1/FACTOR, FACTOR] (%(default)s)",
    )
    voice.add_argument(
        "--grid-share", type=share, default=v["grid_share"], help="probability of a GRID s1 window (%(default)s)"
    )
    voice.add_argument("--init", help="rt weights to start from, and the teacher (default: the shipped ones)")
    voice.set_defaults(func=cmd_train_voice)

    u = UPSAMPLER
    upsampler = train_sub.add_parser("upsampler", help="the hd path's region upsampler (on 256-px crops)")
    _add_job_options(upsampler, u, "upsampler")
    upsampler.add_argument("--batch", type=positive_int, default=u["batch"], help="(%(default)s)")
    upsampler.add_argument("--lr", type=positive_float, default=u["lr"], help="(%(default)s)")
    upsampler.add_argument("--width", type=positive_int, default=u["width"], help="channels (%(default)s)")
    upsampler.add_argument(
        "--lambda-laplacian", type=non_negative_float, default=u["lambda_laplacian"], help="edge loss (%(default)s)"
    )
    upsampler.add_argument(
        "--lambda-adv", type=non_negative_float, default=u["lambda_adv"], help="lips' discriminator (%(default)s)"
    )
    upsampler.add_argument(
        "--adv-from-step", type=non_negative_int, default=u["adv_from_step"], help="it joins here (%(default)s)"
    )
    upsampler.add_argument("--weights", help="the frozen rt weights that make its inputs (default: the shipped ones)")
    upsampler.set_defaults(func=cmd_train_upsampler)

    weights = train_sub.add_parser("export", help="a checkpoint's networks alone, in fp16 (small enough to commit)")
    weights.add_argument("model", choices=("syncnet", "generator", "upsampler"))
    weights.add_argument("checkpoint", help="checkpoint.pt of a training run")
    weights.add_argument("-o", "--output", required=True, help="the fp16 weights file to write")
    weights.set_defaults(func=cmd_train_export)

    evaluate = sub.add_parser("evaluate", help="score renderings of held-out clips, or of any video, against the truth")
    evaluate.add_argument(
        "--video",
        metavar="CLIP",
        nargs="+",
        help="score videos with speech: each is prepared as the avatar and driven by its own audio",
    )
    evaluate.add_argument("--template", metavar="VIDEO", help="with --video: prepare this video as the avatar instead")
    evaluate.add_argument(
        "--engine", choices=ENGINE_KINDS, default=VIDEO_EVAL["engine"], help="with --video: the render's engine"
    )
    evaluate.add_argument(
        "--max-seconds",
        type=positive_float,
        default=VIDEO_EVAL["max_seconds"],
        help="with --video: score at most this much of the clip (%(default)s)",
    )
    evaluate.add_argument(
        "--template-seconds",
        type=positive_float,
        default=VIDEO_EVAL["template_seconds"],
        help="with --template: seconds of it to prepare (%(default)s)",
    )
    evaluate.add_argument(
        "--reference-percentile",
        type=percentile,
        default=VIDEO_EVAL["reference_percentile"],
        metavar="P",
        help="with --video: " + REFERENCE_HELP,
    )
    evaluate.add_argument(
        "--avatar",
        help="with --video: a prepared avatar (personalised or not) as the template, instead of preparing one",
    )
    evaluate.add_argument(
        "--hd", choices=HD_MODES, default=VIDEO_EVAL["hd"], help="with --video: the avatar's hd path (prepare's --hd)"
    )
    evaluate.add_argument("--cache", help="dataset cache (default: <cache>/dataset/rt)")
    evaluate.add_argument("--out", default="evaluation", help="folder for the JSON, MP4 and PNG")
    evaluate.add_argument("--systems", default="model,static,ground-truth", help="comma-separated")
    evaluate.add_argument("--split", default=EVAL_SPLIT)
    evaluate.add_argument(
        "--identity", default=EVAL_IDENTITY, help="comma-separated identities, or held-out (the 5 unseen talking faces)"
    )
    evaluate.add_argument("--max-clips", type=positive_int, default=EVAL_MAX_CLIPS)
    evaluate.add_argument("--weights", help="rt weights for the model (default: the shipped ones)")
    evaluate.add_argument(
        "--tail",
        type=positive_float,
        metavar="SECONDS",
        help="render only each clip's last SECONDS, reference from its start (a personalised avatar's held-out end)",
    )
    evaluate.add_argument("--smooth-styles", type=smoothing_factor, default=0.0, metavar="A", help=SMOOTH_HELP)
    add_mouth_options(evaluate)  # --video: the render's
    evaluate.add_argument("--expert", help="fp16 SyncNet expert for the sync scores")
    evaluate.set_defaults(func=cmd_evaluate)
