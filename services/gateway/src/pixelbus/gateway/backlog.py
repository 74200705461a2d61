"""How many tasks may wait in a pool's queue: a create past the limit answers 503 with
``Retry-After`` and nothing is published.

The count is the server's: the ``num_pending`` of the pool's durable consumer (its
``TaskCreated`` messages not yet handed to a worker). Every gateway replica reads the same
figure, and it corrects itself as workers drain the queue or tasks are cancelled; there is
no counter of ours to leak when a process dies. Asking for it at every create would be a
JetStream API request per create, so each process samples it (one request at a time per
pool, shared by every create waiting on it) and adds what it admitted itself since::

    estimate = sampled num_pending + creates admitted here that the sample may not hold

A create is admitted while ``estimate + count <= limit`` and counted at once, with no
``await`` between the test and the count, so within one process the limit holds exactly
(the estimate only errs upwards: a publish that ends while a sample is taken is counted
until the next one). A sample is taken when the last is older than ``max_age_s``, and
when a create finds the queue full and the last sample is older than ``min_refresh_s``
(room made by the workers is seen within that).

Why not a stream limit: the task stream holds every event of every task for days, so
``max_msgs``/``max_bytes`` bound history, not a queue; with ``discard: old`` they would
drop events of accepted tasks, with ``discard: new`` they would refuse a worker's
``TaskCompleted`` as well as a new task. Why not a shared counter (like the per-tenant
quota): one key that every create of the platform updates by compare-and-swap is a hot
spot, and a process dying between its increment and its publish leaks a slot for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import HTTPException
from nats.js import JetStreamContext

from pixelbus.contracts.subjects import TASK_STREAM, Pool, pool_for_environment

__all__ = ["QUEUE_FULL_RETRY_AFTER_S", "PoolBacklog", "QueueEstimate", "consumer_pending"]

#: What a refused create is told to wait: room comes back as workers take tasks.
QUEUE_FULL_RETRY_AFTER_S = 5

Sampler = Callable[[Pool], Awaitable[int]]


def consumer_pending(js: JetStreamContext) -> Sampler:
    """The pool's waiting tasks as the server counts them (one consumer info request)."""

    async def sample(pool: Pool) -> int:
        info = await js.consumer_info(TASK_STREAM, pool.durable)
        return info.num_pending or 0

    return sample


@dataclass
class QueueEstimate:
    """One pool's estimate in one process (pure bookkeeping; the sampling is the caller's).

    ``admitted`` and ``settled`` only grow: creates let in, and creates whose publish has
    ended (stored or not). ``settled_at_sample`` is ``settled`` when the last sample was
    asked for: everything admitted and not settled by then may be missing from it.
    """

    sampled: int = 0
    sampled_at: float | None = None
    admitted: int = 0
    settled: int = 0
    settled_at_sample: int = 0

    @property
    def estimate(self) -> int:
        return self.sampled + self.admitted - self.settled_at_sample

    def try_admit(self, count: int, limit: int) -> bool:
        if self.estimate + count > limit:
            return False
        self.admitted += count
        return True

    def settle(self, count: int) -> None:
        self.settled += count

    def sample_started(self) -> int:
        """Call as the sample is asked for; pass the result to ``sample_taken``."""
        return self.settled

    def sample_taken(self, pending: int, settled_before: int, now: float) -> None:
        self.sampled, self.sampled_at = pending, now
        self.settled_at_sample = settled_before

    def age(self, now: float) -> float:
        return float("inf") if self.sampled_at is None else now - self.sampled_at


class PoolBacklog:
    """Admission to each pool's queue for this process (see the module's docstring).

    ``limit`` 0: no limit (nothing is sampled).
    """

    def __init__(
        self,
        sampler: Sampler,
        limit: int,
        *,
        max_age_s: float = 0.25,
        min_refresh_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sampler = sampler
        self.limit = limit
        self._max_age_s = max_age_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._pools: dict[str, QueueEstimate] = {}
        self._sampling: dict[str, asyncio.Future[None]] = {}

    def estimate(self, pool: Pool) -> int:
        return self._pools.setdefault(pool.name, QueueEstimate()).estimate

    async def check(self, environment: str, count: int = 1) -> None:
        """``HTTPException(503)`` when the queue has no room for ``count`` now; holds
        nothing (a create asks before it takes the tenant's quota slot, so a full queue
        costs no counter update)."""
        pool = _pool(environment)
        if self.limit > 0 and pool is not None and count > 0:
            queue = self._pools.setdefault(pool.name, QueueEstimate())
            if not await self._room(pool, queue, count):
                raise _queue_full(pool, self.limit)

    @contextlib.asynccontextmanager
    async def admit(self, environment: str, count: int = 1) -> AsyncIterator[None]:
        """Hold ``count`` places in the environment's pool while the block publishes;
        ``HTTPException(503)`` with ``Retry-After`` when the queue has no room. A
        ``count`` of 0 holds nothing (the places are held by the caller's caller)."""
        pool = _pool(environment)
        if self.limit <= 0 or pool is None or count <= 0:
            yield
            return
        queue = self._pools.setdefault(pool.name, QueueEstimate())
        if not (await self._room(pool, queue, count) and queue.try_admit(count, self.limit)):
            raise _queue_full(pool, self.limit)
        try:
            yield
        finally:
            queue.settle(count)

    async def _room(self, pool: Pool, queue: QueueEstimate, count: int) -> bool:
        """Whether ``count`` fit, on a sample fresh enough (see the module's docstring)."""
        if queue.age(self._clock()) >= self._max_age_s:
            await self._refresh(pool, queue)
        if queue.estimate + count > self.limit and queue.age(self._clock()) >= self._min_refresh_s:
            await self._refresh(pool, queue)
        return queue.estimate + count <= self.limit

    async def _refresh(self, pool: Pool, queue: QueueEstimate) -> None:
        """One sample at a time per pool; every create that needs one awaits it."""
        running = self._sampling.get(pool.name)
        if running is None:
            running = asyncio.ensure_future(self._sample(pool, queue))
            self._sampling[pool.name] = running
            running.add_done_callback(lambda _: self._sampling.pop(pool.name, None))
        await asyncio.shield(running)

    async def _sample(self, pool: Pool, queue: QueueEstimate) -> None:
        settled_before = queue.sample_started()
        pending = await self._sampler(pool)
        queue.sample_taken(pending, settled_before, self._clock())


def _pool(environment: str) -> Pool | None:
    try:
        return pool_for_environment(environment)
    except KeyError:
        return None


def _queue_full(pool: Pool, limit: int) -> HTTPException:
    return HTTPException(
        503,
        f"the {pool.environment} queue is full: at most {limit} tasks may wait "
        "(PIXELBUS_MAX_PENDING_TASKS); nothing was accepted, retry later",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
    )
