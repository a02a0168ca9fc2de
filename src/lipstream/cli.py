"""The `lipstream` command. Each subcommand lives in one function; later stages add theirs here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from lipstream.models.config import PROFILES


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "latency", 0) < 0:
        print("lipstream: --latency takes a number of runs >= 0", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
