"""Storing the task index (``pixelbus.contracts.task_index``) in its KV bucket.

``TaskIndex.add`` is the projector's (the only writer): it appends a batch's new tasks to
their owner's scope and to ``ALL_SCOPE`` with compare-and-swap, sealing full chunks, so
several projector replicas may append at once. ``chunk`` is the readers' (the gateway).
The open chunk of each scope this process wrote last is remembered, which saves the read
before an append; a stale one costs a CAS conflict and a fresh read.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.task_index import (
    ALL_SCOPE,
    IndexChunk,
    append,
    chunk_key,
    decode_chunk,
    encode_chunk,
    open_key,
    owner_scope,
)
from pixelbus.runtime.kv import read_entry, write_at

__all__ = ["IndexEntry", "TaskIndex"]

#: (owner, task id, created at ISO 8601)
IndexEntry = tuple[str | None, str, str]

_CAS_ATTEMPTS = 50
_REMEMBERED_SCOPES = 10_000


class TaskIndex:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._open: OrderedDict[str, tuple[IndexChunk, int]] = OrderedDict()
        self._sealed_ids: dict[str, frozenset[str]] = {}

    async def add(self, entries: Sequence[IndexEntry]) -> None:
        """Append new tasks (in creation order) to their owner's scope and to the scope
        of every task; an entry already indexed is not added again."""
        by_scope: dict[str, list[tuple[str, str]]] = {}
        for owner, task_id, created_at in entries:
            for scope in (owner_scope(owner), ALL_SCOPE):
                by_scope.setdefault(scope, []).append((task_id, created_at))
        await asyncio.gather(*(self._append(s, items) for s, items in by_scope.items()))

    async def chunk(self, scope: str, number: int | None = None) -> IndexChunk | None:
        """The open chunk of ``scope`` (``number`` None) or a sealed one; None if absent."""
        key = open_key(scope) if number is None else chunk_key(scope, number)
        value, _ = await read_entry(self._kv, key)
        return decode_chunk(value) if value else None

    async def _append(self, scope: str, items: list[tuple[str, str]]) -> None:
        remembered = self._open.get(scope)
        for _ in range(_CAS_ATTEMPTS):
            if remembered is not None:
                current, revision = remembered
                remembered = None
            else:
                current, revision = await self._read_open(scope)
            sealed, now_open = append(current, items, self._sealed_ids.get(scope, frozenset()))
            if not sealed and now_open == current:
                return  # all there already (a redelivered batch)
            for chunk in sealed:  # a put: the same content again is harmless
                await self._kv.put(chunk_key(scope, chunk.number), encode_chunk(chunk))
            try:
                revision = await write_at(
                    self._kv, open_key(scope), encode_chunk(now_open), revision
                )
            except KeyWrongLastSequenceError:
                continue  # another replica appended first: read again
            if sealed:
                self._sealed_ids[scope] = frozenset(task_id for task_id, _ in sealed[-1].entries)
            self._remember(scope, now_open, revision)
            return
        self._open.pop(scope, None)
        raise RuntimeError(f"task index: gave up appending to {scope} after CAS conflicts")

    async def _read_open(self, scope: str) -> tuple[IndexChunk, int]:
        value, revision = await read_entry(self._kv, open_key(scope))
        return (decode_chunk(value) if value else IndexChunk(0)), revision

    def _remember(self, scope: str, chunk: IndexChunk, revision: int) -> None:
        self._open[scope] = (chunk, revision)
        self._open.move_to_end(scope)
        while len(self._open) > _REMEMBERED_SCOPES:
            forgotten, _ = self._open.popitem(last=False)
            self._sealed_ids.pop(forgotten, None)
