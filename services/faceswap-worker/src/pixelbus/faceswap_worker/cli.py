"""``pixelbus models list`` and ``pixelbus models pull NAME...``: the face-swap models in
the models directory (``PIXELBUS_MODELS_DIR``), downloaded from
``PIXELBUS_MODELS_BASE_URL`` with resume, size and sha256 checks.

The worker adds this command to the ``pixelbus`` command line (``libs/cli``) through the
``pixelbus.cli.commands`` entry point group, so the command exists where the worker is
installed and the command line imports no service. This module stays light (it is loaded
by every ``pixelbus`` run); what the command does is imported when it runs
(``models.commands``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pixelbus.faceswap_worker.settings import ModelSettings

__all__ = ["register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("models", help="list and install face-swap models")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="known models and whether they are installed")
    _common(listing)
    listing.set_defaults(run=_list)
    pull = actions.add_parser(
        "pull", help="download models (a swapper brings its detector and recogniser)"
    )
    pull.add_argument("names", nargs="+", metavar="NAME", help="model names (see `models list`)")
    _common(pull)
    pull.add_argument("--base-url", help="where to download from (PIXELBUS_MODELS_BASE_URL)")
    pull.add_argument("--sha256", help="the sha256 you trust, for a model without a pin")
    pull.add_argument("--force", action="store_true", help="download even if verified")
    pull.add_argument("--only", action="store_true", help="only NAME, not what it needs")
    pull.add_argument("--no-progress", action="store_true", help="no progress bar")
    pull.set_defaults(run=_pull)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, help="the models directory (PIXELBUS_MODELS_DIR)")
    parser.add_argument("--manifest", type=Path, help="pins file (PIXELBUS_MODELS_MANIFEST)")


def _settings(args: argparse.Namespace) -> ModelSettings:
    from pixelbus.faceswap_worker.settings import ModelSettings
    from pixelbus.runtime.errors import SettingsError

    try:
        settings = ModelSettings.from_env(os.environ)
    except SettingsError as exc:
        raise SystemExit(f"pixelbus models: {exc}") from None
    # the command line's options, where given, over the environment's
    return replace(
        settings,
        directory=args.dir or settings.directory,
        manifest=args.manifest or settings.manifest,
        base_url=getattr(args, "base_url", None) or settings.base_url,
    )


def _list(args: argparse.Namespace) -> int:
    from pixelbus.faceswap_worker.models.commands import list_models

    return list_models(_settings(args))


def _pull(args: argparse.Namespace) -> int:
    from pixelbus.faceswap_worker.models.commands import pull_models

    return pull_models(
        args.names,
        _settings(args),
        sha256=args.sha256,
        force=args.force,
        only=args.only,
        progress=not args.no_progress,
    )
