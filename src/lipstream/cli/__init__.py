"""The `lipstream` command. One module per command group registers its subcommands; each command is a
function of the parsed options that imports what it needs when it runs, so that a client (`talk`) or a
question (`--help`) never pays for torch."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import avatar_commands, bench_commands, serve_commands, train_commands
from .serve_commands import serve_settings

__all__ = ["build_parser", "main", "serve_settings"]

GROUPS = (avatar_commands, serve_commands, train_commands, bench_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipstream", description="Real-time lip-sync avatar server (StyleSync).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
