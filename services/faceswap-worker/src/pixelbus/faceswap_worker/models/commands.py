"""What ``pixelbus models list`` and ``pixelbus models pull`` do (``pixelbus.faceswap_worker.cli``
parses the arguments and imports this when the command runs)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

import httpx

from pixelbus.faceswap_worker.models.download import PullError, pull
from pixelbus.faceswap_worker.models.registry import ENGINE_FILES, load_registry
from pixelbus.faceswap_worker.models.store import ModelStore
from pixelbus.faceswap_worker.settings import ModelSettings
from pixelbus.runtime.errors import SettingsError

__all__ = ["list_models", "pull_models", "store_from"]


def store_from(settings: ModelSettings) -> ModelStore:
    try:
        return ModelStore(settings.directory, load_registry(settings.manifest))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None


def list_models(settings: ModelSettings, out: TextIO | None = None) -> int:
    """A table of every known model: file, role, state (verified, missing, ...), licence."""
    out = out or sys.stdout
    store = store_from(settings)
    rows = [("MODEL", "FILE", "ROLE", "STATE", "SIZE", "LICENCE")]
    for name in sorted(store.registry):
        status = store.status(name)
        size = f"{status.size / 1e6:.1f} MB" if status.size is not None else "-"
        state = status.state.value + (f" ({status.detail})" if status.detail else "")
        spec = status.spec
        rows.append((name, spec.filename, spec.role, state, size, spec.licence))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:5])]
        print("  ".join([*cells, row[5]]).rstrip(), file=out)
    print(f"models directory: {store.directory}", file=out)
    return 0


class _Bar:
    """A tqdm progress bar on stderr."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar = None

    def start(self, total: int | None, done: int) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=total, initial=done, unit="B", unit_scale=True, desc=self._label, leave=True
        )

    def advance(self, size: int) -> None:
        if self._bar is not None:
            self._bar.update(size)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def pull_models(
    names: Sequence[str],
    settings: ModelSettings,
    *,
    sha256: str | None = None,
    force: bool = False,
    only: bool = False,
    progress: bool = True,
    out: TextIO | None = None,
    err: TextIO | None = None,
    client: httpx.Client | None = None,
) -> int:
    """Download ``names`` (a swapper also brings the detector and recogniser it needs,
    unless ``only``). Returns the exit status: 0, or 1 after a message on ``err``."""
    out, err = out or sys.stdout, err or sys.stderr
    if not settings.base_url:
        print(
            "pixelbus models pull: no base URL; set PIXELBUS_MODELS_BASE_URL or pass --base-url",
            file=err,
        )
        return 1
    store = store_from(settings)
    wanted: list[str] = []
    for name in names:
        if name not in store.registry:
            known = ", ".join(sorted(store.registry))
            print(f"pixelbus models pull: unknown model {name!r} (known: {known})", file=err)
            return 1
        for item in (name,) if only else ENGINE_FILES.get(name, (name,)):
            if item not in wanted:
                wanted.append(item)
    if sha256 is not None and len(names) != 1:
        print("pixelbus models pull: --sha256 applies to one model at a time", file=err)
        return 1
    own = client or httpx.Client(timeout=httpx.Timeout(60.0, connect=10.0))
    try:
        for name in wanted:
            pin = sha256 if name == names[0] else None
            bar = _Bar(name) if progress else None
            try:
                path = pull(
                    store,
                    name,
                    base_url=settings.base_url,
                    client=own,
                    progress=bar,
                    sha256=pin,
                    force=force,
                )
            except PullError as exc:
                print(f"pixelbus models pull: {exc}", file=err)
                return 1
            print(f"{name}: {path} verified", file=out)
    finally:
        if client is None:
            own.close()
    return 0
