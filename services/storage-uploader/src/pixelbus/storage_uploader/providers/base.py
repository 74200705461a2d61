"""What every storage provider offers, and the keys objects are stored under.

Keys are deterministic (``output_key``), so a retried upload overwrites the same object
instead of adding a second one. Keys are restricted to ``[A-Za-z0-9._-]`` segments joined
by ``/``: they are safe as file paths and need no escaping in URLs.
"""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from pixelbus.storage_uploader.errors import StoragePermanentError

__all__ = ["MAX_KEY_LENGTH", "StorageProvider", "output_key", "validate_key"]

MAX_KEY_LENGTH = 1024  # S3's limit, in bytes; our keys are ASCII
_MAX_SEGMENT = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_KEY = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_DIGEST = 12
# What a changed segment ends with; a name that already looks like this is hashed too, so
# that a kept name can never equal the changed form of another one.
_HASHED = re.compile(rf"-[0-9a-f]{{{_DIGEST}}}(?:\.[A-Za-z0-9_-]{{1,10}})?$")


class StorageProvider(Protocol):
    """A place outputs are stored and served from; failures raise ``StorageError``."""

    name: str

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key`` (overwriting) and return its public URL."""
        ...

    async def check(self) -> None:
        """Cheap reachability check for health; raises ``StorageError``."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...


def output_key(task_id: str, filename: str) -> str:
    """The storage key of a task's output: ``tasks/<task_id>/<filename>``, made safe.

    A part that had to be changed gets a short hash of its original, so two different
    names never map to the same key (``a b.png`` and ``a_b.png`` stay apart).
    """
    return f"tasks/{_segment(task_id)}/{_segment(filename)}"


def _segment(value: str) -> str:
    cleaned = _UNSAFE.sub("_", value).lstrip(".")
    if cleaned == value and 0 < len(value) <= _MAX_SEGMENT and not _HASHED.search(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_DIGEST]
    stem, dot, ext = cleaned.rpartition(".")
    if not dot or not stem or not ext or len(ext) > 10:
        stem, ext = cleaned, ""
    suffix = f"-{digest}" + (f".{ext}" if ext else "")
    return (stem[: _MAX_SEGMENT - len(suffix)] or "_") + suffix


def validate_key(key: str, provider: str) -> None:
    """Refuse keys that are not relative paths of safe segments (no ``..``, no ``/`` first)."""
    segments = key.split("/")
    if len(key) > MAX_KEY_LENGTH or not _KEY.match(key) or any(s in (".", "..") for s in segments):
        raise StoragePermanentError(
            f"{provider}: refused key {key!r}: a key is a relative path of [A-Za-z0-9._-] "
            "segments without '.' or '..' (see output_key)",
            provider=provider,
            code="invalid_key",
        )
