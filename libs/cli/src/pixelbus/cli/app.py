"""The ``pixelbus`` dispatcher: one argparse subcommand per module of ``COMMANDS``.

A command module defines ``register(subparsers)``, which adds its parser and sets the
``run`` default to a function ``(args) -> int`` (the exit status). Command modules import
what they drive lazily, inside ``run``, so that ``pixelbus --help`` stays fast and a
command whose service is not installed fails only when used. To add a command, write
its module under ``pixelbus.cli.commands`` and name it here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[str, ...] = (
    "pixelbus.cli.commands.models",
    "pixelbus.cli.commands.keys",
    "pixelbus.cli.commands.tasks",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelbus", description="pixelbus: AI image tasks on NATS JetStream"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("pixelbus: interrupted", file=sys.stderr)
        return 130
    return status
