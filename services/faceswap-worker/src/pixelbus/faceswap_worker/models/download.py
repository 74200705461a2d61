"""``pixelbus models pull``: download a model file from a base URL into the models
directory, resuming a partial download (HTTP Range), then checking its size and sha256
before it takes the file's name. Only an operator's command downloads; workers never do.

Errors (``PullError``) say what went wrong and leave no file under the model's name:
a damaged download is removed, a partial one (connection lost) is kept for the resume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import httpx

from pixelbus.faceswap_worker.models.registry import ModelSpec
from pixelbus.faceswap_worker.models.store import ModelState, ModelStore, sha256_file

__all__ = ["Progress", "PullError", "model_url", "pull"]


class PullError(Exception):
    pass


class Progress(Protocol):
    def start(self, total: int | None, done: int) -> None: ...
    def advance(self, size: int) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def start(self, total: int | None, done: int) -> None:
        pass

    def advance(self, size: int) -> None:
        pass

    def close(self) -> None:
        pass


def model_url(base_url: str, spec: ModelSpec) -> str:
    if not base_url.lower().startswith(("http://", "https://")):
        raise PullError(f"the models base URL must be http(s), got {base_url!r}")
    return f"{base_url.rstrip('/')}/{spec.filename}"


def pull(
    store: ModelStore,
    name: str,
    *,
    base_url: str,
    client: httpx.Client,
    progress: Progress | None = None,
    sha256: str | None = None,
    force: bool = False,
) -> Path:
    """Download ``name`` unless a verified copy is there; returns its path. ``sha256``
    pins an unpinned model (or must equal the registry's pin)."""
    spec = store.spec(name)
    expected = (sha256 or spec.sha256 or "").lower() or None
    if spec.sha256 and sha256 and sha256.lower() != spec.sha256:
        raise PullError(f"{name}: --sha256 {sha256} differs from the pinned {spec.sha256}")
    if expected is None:
        raise PullError(
            f"{name} has no pinned sha256: give the one you trust with --sha256, or pin it in "
            "the models manifest (PIXELBUS_MODELS_MANIFEST)"
        )
    final = store.directory / spec.filename
    if not force and final.exists() and store.status(name).state is ModelState.VERIFIED:
        return final
    store.directory.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    progress = progress or _Silent()
    try:
        _fetch(model_url(base_url, spec), part, spec.size, client, progress)
    finally:
        progress.close()
    size = part.stat().st_size
    if spec.size is not None and size != spec.size:
        part.unlink()
        raise PullError(f"{name}: downloaded {size} bytes where {spec.size} are expected")
    digest = sha256_file(part)
    if digest != expected:
        part.unlink()
        raise PullError(
            f"{name}: sha256 of the download is {digest}, expected {expected}; "
            "the file was refused (corrupted or not the pinned model)"
        )
    os.replace(part, final)
    store.write_stamp(final, digest)
    return final


def _fetch(
    url: str, part: Path, size: int | None, client: httpx.Client, progress: Progress
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # complete already: only the checks remain
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 416 and offset:
                part.unlink()  # the server has less than we hold: start again
                return _fetch(url, part, size, client, progress)
            if response.status_code not in (200, 206):
                raise PullError(f"GET {url}: HTTP {response.status_code}")
            resumed = response.status_code == 206
            if resumed and not response.headers.get("content-range", "").startswith(
                f"bytes {offset}-"
            ):
                raise PullError(f"GET {url}: the server resumed at the wrong offset")
            total = _total(response, offset if resumed else 0) or size
            progress.start(total, offset if resumed else 0)
            with part.open("ab" if resumed else "wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    progress.advance(len(chunk))
    except httpx.HTTPError as exc:
        raise PullError(
            f"GET {url}: {exc.__class__.__name__}: {exc}; run the command again to resume"
        ) from exc
    return None


def _total(response: httpx.Response, offset: int) -> int | None:
    length = response.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None
