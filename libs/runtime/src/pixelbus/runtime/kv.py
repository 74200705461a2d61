"""Compare-and-swap on one KV entry: read it with its revision, write it only if no other
writer changed it since (retrying is the caller's: it knows what to recompute)."""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

__all__ = ["read_entry", "write_at"]


async def read_entry(kv: KeyValue, key: str) -> tuple[bytes | None, int]:
    """The value at ``key`` (``None`` when missing or deleted) and its revision (0 when
    there is none to compare with)."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None, 0
    return entry.value, entry.revision or 0


async def write_at(kv: KeyValue, key: str, value: bytes, revision: int) -> int:
    """Write ``value`` if ``key`` is still at ``revision`` (0: not there yet); the new
    revision. ``KeyWrongLastSequenceError`` when another writer came first."""
    if revision == 0:
        return await kv.create(key, value)
    return await kv.update(key, value, last=revision)
