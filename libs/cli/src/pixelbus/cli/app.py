"""The ``pixelbus`` dispatcher: one argparse subcommand per module of ``COMMANDS``, and
one per entry point of the ``pixelbus.cli.commands`` group (``PLUGINS``).

A command module defines ``register(subparsers)``, which adds its parser and sets the
``run`` default to a function ``(args) -> int`` (the exit status). Command modules import
what they drive lazily, inside ``run``, so that ``pixelbus --help`` stays fast. The
command line's own commands are modules under ``pixelbus.cli.commands``, named here; a
service adds a command by naming its ``register`` in that entry point group (the face-swap
worker adds ``pixelbus models``), so the command exists where the service is installed
and no library imports a service.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

__all__ = ["COMMANDS", "PLUGINS", "build_parser", "main"]

COMMANDS: tuple[str, ...] = (
    "pixelbus.cli.commands.keys",
    "pixelbus.cli.commands.tasks",
)
PLUGINS = "pixelbus.cli.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixelbus", description="pixelbus: AI image tasks on NATS JetStream"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    for entry in sorted(entry_points(group=PLUGINS), key=lambda e: e.name):
        entry.load()(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except KeyboardInterrupt:
        print("pixelbus: interrupted", file=sys.stderr)
        return 130
    return status
