"""The task index: each owner's tasks in creation order, so that ``GET /api/tasks`` reads a
page, never the whole state bucket (pure part; ``pixelbus.runtime.task_index`` stores it).

An index *scope* (one per owner, and ``ALL_SCOPE`` for administrators) is a chain of
chunks in the ``PIXELBUS_TASK_INDEX`` bucket: ``<scope>.open`` holds the newest entries
and its chunk number; when it reaches ``CHUNK_SIZE`` entries it is sealed as
``<scope>.<number>`` and a new open chunk starts. A page walks back from the open chunk,
so it costs a few reads whatever the number of tasks. The projector is the only writer
(it appends the tasks of each folded batch); entries are ``(task id, created at)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import msgspec

__all__ = [
    "ALL_SCOPE",
    "CHUNK_SIZE",
    "Cursor",
    "IndexChunk",
    "append",
    "chunk_key",
    "decode_chunk",
    "encode_chunk",
    "open_key",
    "owner_scope",
    "parse_cursor",
]

CHUNK_SIZE = 256
ALL_SCOPE = "all"  # every task, for callers who see every owner


class IndexChunk(msgspec.Struct, frozen=True):
    number: int
    entries: tuple[tuple[str, str], ...] = ()  # (task id, created at ISO 8601), oldest first


class Cursor(msgspec.Struct, frozen=True):
    """Where the next page starts: chunk ``number``, entries before ``position``."""

    number: int
    position: int

    def encode(self) -> str:
        return f"{self.number}:{self.position}"


def parse_cursor(text: str) -> Cursor | None:
    """A cursor from ``next``; None when it is not one of ours."""
    number, _, position = text.partition(":")
    if not (number.isdigit() and position.isdigit()):
        return None
    return Cursor(int(number), int(position))


def owner_scope(owner: str | None) -> str:
    """The scope of one owner (None: the anonymous tenant's): a digest, since owners may
    hold any character and keys may not."""
    return "o" + hashlib.sha256((owner or "anonymous").encode()).hexdigest()[:24]


def open_key(scope: str) -> str:
    return f"{scope}.open"


def chunk_key(scope: str, number: int) -> str:
    return f"{scope}.{number}"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(IndexChunk)


def encode_chunk(chunk: IndexChunk) -> bytes:
    return _encoder.encode(chunk)


def decode_chunk(data: bytes) -> IndexChunk:
    return _decoder.decode(data)


def append(
    chunk: IndexChunk,
    entries: Sequence[tuple[str, str]],
    sealed_ids: frozenset[str] = frozenset(),
    size: int | None = None,
) -> tuple[list[IndexChunk], IndexChunk]:
    """Add ``entries`` to the open ``chunk``: the chunks it fills (to seal, in order) and
    the new open chunk. An entry already in the open chunk or in ``sealed_ids`` (the last
    sealed chunk's, for a batch redelivered across a seal) is not added twice. ``size``:
    entries per chunk (``CHUNK_SIZE``)."""
    size = size or CHUNK_SIZE
    present = {task_id for task_id, _ in chunk.entries} | sealed_ids
    current = list(chunk.entries)
    number = chunk.number
    sealed: list[IndexChunk] = []
    for entry in entries:
        if entry[0] in present:
            continue
        present.add(entry[0])
        current.append(entry)
        if len(current) >= size:
            sealed.append(IndexChunk(number, tuple(current)))
            number += 1
            current = []
    return sealed, IndexChunk(number, tuple(current))
