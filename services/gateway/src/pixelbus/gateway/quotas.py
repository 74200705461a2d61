"""Request rates and active tasks per API key, held in NATS so that every gateway
replica enforces the same limit (the counters: ``pixelbus.runtime.quotas``).

- Rate: a counter per key and second in the rates bucket, raised with compare-and-swap;
  past the limit the answer is 429 with ``Retry-After`` (the seconds until the next
  window). The bucket's TTL drops old windows.
- Active tasks: a counter per tenant in the quotas bucket. The gateway reserves a slot
  (CAS increment, refused with 429 and ``Retry-After`` at the limit) before it publishes
  a new task and gives it back if the publish fails; the projector releases it when the
  task ends.

Within one process the updates of one counter take turns (``KeyTurns``): a flood of one
tenant's requests would otherwise race each other's compare-and-swap (n at once: n rounds,
n² reads, and the last ones past ``add_to_counter``'s attempts), leaving only other
replicas to race. Should they still win every attempt, ``CounterContention`` answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import structlog
from fastapi import HTTPException
from nats.js.kv import KeyValue

from pixelbus.gateway.auth import Principal
from pixelbus.runtime.quotas import ANONYMOUS, add_to_counter, quota_key, release_slot

__all__ = ["QUOTA_RETRY_AFTER_S", "ActiveTasks", "KeyTurns", "RateLimiter"]

#: What a create over the tenant's active-task quota is told to wait (tasks take seconds).
QUOTA_RETRY_AFTER_S = 5

log = structlog.get_logger("pixelbus.quotas")


class KeyTurns:
    """One lock per key while anyone holds or awaits it (then dropped: no key is kept)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    @contextlib.asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


class RateLimiter:
    def __init__(
        self, kv: KeyValue | None, default_per_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._kv = kv
        self._default = default_per_s
        self._clock = clock
        self._turns = KeyTurns()

    async def check(self, principal: Principal) -> None:
        """Count one request of ``principal``; ``HTTPException(429)`` past its rate."""
        limit = principal.rate_per_s if principal.rate_per_s is not None else self._default
        if self._kv is None or limit <= 0:
            return
        now = self._clock()
        window = math.floor(now)
        who = principal.key_id or ANONYMOUS
        per_window = max(1, math.floor(limit))
        key = f"{who}.{window}"
        async with self._turns.turn(key):
            counted = await add_to_counter(self._kv, key, 1, limit=per_window)
        if counted is None:
            retry_after = max(1, math.ceil(window + 1 - now))
            raise HTTPException(
                429,
                f"rate limit: {per_window} requests per second for this API key",
                headers={"Retry-After": str(retry_after)},
            )


class ActiveTasks:
    def __init__(self, kv: KeyValue | None, default_max: int) -> None:
        self._kv = kv
        self._default = default_max
        self._turns = KeyTurns()

    async def reserve(self, principal: Principal) -> bool:
        """Take a slot for a new task; ``HTTPException(429)`` at the limit. ``True`` when
        a slot was taken (and must be given back if the task is not created)."""
        limit = principal.max_active if principal.max_active is not None else self._default
        if self._kv is None or limit <= 0:
            return False
        key = quota_key(principal.owner)
        async with self._turns.turn(key):
            taken = await add_to_counter(self._kv, key, 1, limit=limit)
        if taken is None:
            raise HTTPException(
                429,
                f"quota: at most {limit} active tasks at once for this tenant; "
                "wait for some to finish",
                headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
            )
        return True

    async def release(self, owner: str | None) -> None:
        if self._kv is not None:
            async with self._turns.turn(quota_key(owner)):
                await release_slot(self._kv, owner)
