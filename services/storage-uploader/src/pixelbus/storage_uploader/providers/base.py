"""What every storage provider offers, and the keys objects are stored under.

An ``Upload`` is what a provider is given: the key, the content type, the size and a way to
open the bytes as a stream of chunks (again, for a retry), so a large output never has to
sit in memory whole. ``StorageProvider.store`` writes it and returns the URL to download it.

Keys are deterministic (``output_key``): ``tasks/<yyyy>/<mm>/<dd>/<task id>/<filename>``,
the date being that of the ``OutputsReady`` event, so a redelivered event overwrites the
same object instead of adding a second one. Keys are restricted to ``[A-Za-z0-9._-]``
segments joined by ``/``: they are safe as file paths and need no escaping in URLs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from pixelbus.storage_uploader.errors import StoragePermanentError

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_KEY_LENGTH",
    "StorageProvider",
    "Stored",
    "Upload",
    "close_stream",
    "output_key",
    "store_bytes",
    "validate_key",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"

MAX_KEY_LENGTH = 1024  # S3's limit, in bytes; our keys are ASCII
_MAX_SEGMENT = 128
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_KEY = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_DIGEST = 12
# What a changed segment ends with; a name that already looks like this is hashed too, so
# that a kept name can never equal the changed form of another one.
_HASHED = re.compile(rf"-[0-9a-f]{{{_DIGEST}}}(?:\.[A-Za-z0-9_-]{{1,10}})?$")


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One object to store: ``open()`` yields its bytes chunk by chunk, from the start;
    ``data`` holds them whole when they are in memory already (an inline output), so a
    provider may skip the streaming."""

    key: str
    content_type: str
    size: int
    open: Callable[[], AsyncIterator[bytes]]
    data: bytes | None = None

    @classmethod
    def of_bytes(cls, key: str, data: bytes, content_type: str) -> Upload:
        """An upload of bytes already in memory (inline outputs, tests)."""

        async def single() -> AsyncIterator[bytes]:
            yield data

        return cls(key=key, content_type=content_type, size=len(data), open=single, data=data)

    async def read(self) -> bytes:
        """All the bytes at once: only for providers whose API takes a whole body."""
        if self.data is not None:
            return self.data
        return b"".join([chunk async for chunk in self.open()])


async def close_stream(chunks: AsyncIterator[bytes]) -> None:
    """Close a chunk stream left part-read (an async generator's ``aclose``), if it has one."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


@dataclass(frozen=True)
class Stored:
    """Where an upload went: its URL, and the provider that holds it (a fallback's name
    when the chosen provider handed it on)."""

    url: str
    provider: str


class StorageProvider(Protocol):
    """A place outputs are stored and served from; failures raise ``StorageError``."""

    name: str

    async def store(self, upload: Upload) -> Stored:
        """Store ``upload`` under its key (overwriting) and say where it is."""
        ...

    async def check(self) -> None:
        """Cheap reachability check for health; raises ``StorageError``."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...


async def store_bytes(provider: StorageProvider, key: str, data: bytes, content_type: str) -> str:
    """``provider.store`` for bytes already in memory; returns the URL."""
    return (await provider.store(Upload.of_bytes(key, data, content_type))).url


def output_key(task_id: str, filename: str, day: date | None = None) -> str:
    """The storage key of a task's output, made safe:
    ``tasks/<yyyy>/<mm>/<dd>/<task_id>/<filename>`` (``tasks/<task_id>/<filename>`` without
    a ``day``).

    A part that had to be changed gets a short hash of its original, so two different
    names never map to the same key (``a b.png`` and ``a_b.png`` stay apart).
    """
    prefix = f"tasks/{day.year:04d}/{day.month:02d}/{day.day:02d}" if day else "tasks"
    return f"{prefix}/{_segment(task_id)}/{_segment(filename)}"


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
