"""Counters in a KV bucket, raised and lowered with compare-and-swap, and the active-task
slots kept with them (one counter per tenant in the quotas bucket).

Two processes share the slots: the gateway takes one (``add_to_counter(..., +1,
limit=...)``) before it publishes a new task, and the projector gives it back
(``release_slot``) when the task ends. Both key a tenant the same way (``quota_key``).
"""

from __future__ import annotations

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.subjects import sanitize_token
from pixelbus.runtime.errors import CounterContention
from pixelbus.runtime.kv import read_entry, write_at

__all__ = ["ANONYMOUS", "add_to_counter", "quota_key", "release_slot"]

#: The tenant of requests made without an API key (``PIXELBUS_AUTH=open``).
ANONYMOUS = "anonymous"

_CAS_ATTEMPTS = 50


async def add_to_counter(
    kv: KeyValue, key: str, delta: int, *, limit: int | None = None
) -> int | None:
    """Add ``delta`` to the integer at ``key`` (CAS); ``None`` (and no change) when the
    result would pass ``limit``. Never goes below zero. ``CounterContention`` when other
    writers won every attempt (a process with many concurrent callers serialises its own
    updates of a key first: ``pixelbus.gateway.quotas``)."""
    for _ in range(_CAS_ATTEMPTS):
        value, revision = await read_entry(kv, key)
        new = max(0, int(value or b"0") + delta)
        if limit is not None and delta > 0 and new > limit:
            return None
        try:
            await write_at(kv, key, str(new).encode(), revision)
            return new
        except KeyWrongLastSequenceError:
            continue  # another replica counted first
    raise CounterContention(f"counter {key}: updated by others {_CAS_ATTEMPTS} times in a row")


def quota_key(owner: str | None) -> str:
    """The tenant's counter in the quotas bucket."""
    return sanitize_token(owner or ANONYMOUS)


async def release_slot(kv: KeyValue, owner: str | None) -> None:
    """Give one of the tenant's active-task slots back."""
    await add_to_counter(kv, quota_key(owner), -1)
