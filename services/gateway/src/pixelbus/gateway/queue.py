"""A pending task's place in its pool's queue, without creating a NATS consumer.

``queue_position``: 1 = the next task the pool hands out, 0 = already handed to a
worker (starting, or waiting for a retry).

Counting works on *ranks*: the rank of a stream sequence ``x`` in a pool is the number of
the pool's ``TaskCreated`` messages stored at or before ``x``. A task at sequence ``S`` is
at position ``rank(S) - rank(D)``, where ``D`` is the last sequence the pool's consumer
delivered. Ranks are counted by the server with one direct get each (``count_from``: the
first message on the pool's subjects at or after a sequence, whose ``Nats-Num-Pending``
header says how many follow), so:

- ``D`` and ``rank(D)`` are sampled per pool at most once per ``interval_s`` and shared by
  every reader of this process (a GET, each live follower's tick);
- ``rank(S)`` never changes while the task waits (later tasks come after it), so it is
  counted once per task and kept for ``task_ttl_s`` (a bounded cache).

A GET of a pending task thus costs one lookup of its ``TaskCreated`` and two counts the
first time, nothing after; a thousand live followers cost one sample per pool per interval.
Nothing on this path creates a consumer. The figure is exact for the sampled ``D`` (it may
lag the pool by ``interval_s``) as long as no event of the pool expired from the stream in
between (events are kept for days; the cache's TTL bounds the drift).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pixelbus.contracts.subjects import TASK_STREAM, Pool, pool_for_environment, task_subject
from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.runtime.direct import count_from

__all__ = ["QueueBoard"]

log = structlog.get_logger("pixelbus.queue")


@dataclass(frozen=True, slots=True)
class _Sample:
    delivered: int  # D: the last stream sequence the pool's consumer delivered
    rank: int  # rank(D)
    at: float


class QueueBoard:
    """Queue positions for this process (see the module's docstring)."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        interval_s: float = 1.0,
        task_ttl_s: float = 60.0,
        max_tasks: int = 10_000,
    ) -> None:
        self._nc = nc
        self._js = js
        self._interval_s = interval_s
        self._task_ttl_s = task_ttl_s
        self._max_tasks = max_tasks
        self._samples: dict[str, _Sample] = {}
        self._sampling: dict[str, asyncio.Task[_Sample]] = {}
        self._tasks: OrderedDict[str, tuple[int, int, float]] = OrderedDict()  # seq, rank, at
        self.requests = 0  # NATS requests made, for tests and the reads benchmark

    async def position(self, state: TaskState) -> int | None:
        """The position of a PENDING task; None when not pending or not known."""
        if state.status is not TaskStatus.PENDING or state.environment is None:
            return None
        try:
            pool = pool_for_environment(state.environment)
        except KeyError:
            return None
        task = await self._task(pool, state)
        if task is None:
            return None
        seq, rank = task
        sample = await self._sample(pool)
        if seq <= sample.delivered:
            return 0
        return max(1, rank - sample.rank)

    async def position_or_none(self, state: TaskState) -> int | None:
        """``position``, or None when it cannot be had now: a position is a nicety, never
        a reason to fail the request that shows it."""
        if state.status is not TaskStatus.PENDING:
            return None
        try:
            return await self.position(state)
        except Exception as exc:
            log.warning("queue position unavailable", task_id=state.task_id, error=str(exc))
            return None

    async def _task(self, pool: Pool, state: TaskState) -> tuple[int, int] | None:
        now = time.monotonic()
        known = self._tasks.get(state.task_id)
        if known is not None and now - known[2] < self._task_ttl_s:
            self._tasks.move_to_end(state.task_id)
            return known[0], known[1]
        subject = task_subject(
            state.environment or "", state.workflow or "", "created", state.task_id
        )
        try:
            created = await self._js.get_last_msg(TASK_STREAM, subject)
        except NotFoundError:
            return None
        finally:
            self.requests += 1
        if created.seq is None:
            return None
        total, after = await asyncio.gather(
            self._count(pool, 1), self._count(pool, created.seq + 1)
        )
        rank = total - after
        self._tasks[state.task_id] = (created.seq, rank, now)
        self._tasks.move_to_end(state.task_id)
        while len(self._tasks) > self._max_tasks:
            self._tasks.popitem(last=False)
        return created.seq, rank

    async def _sample(self, pool: Pool) -> _Sample:
        sample = self._samples.get(pool.name)
        if sample is not None and time.monotonic() - sample.at < self._interval_s:
            return sample
        running = self._sampling.get(pool.name)
        if running is None:  # one sample at a time per pool; every reader awaits it
            running = asyncio.ensure_future(self._take_sample(pool))
            self._sampling[pool.name] = running
            running.add_done_callback(lambda _: self._sampling.pop(pool.name, None))
        return await asyncio.shield(running)

    async def _take_sample(self, pool: Pool) -> _Sample:
        info = await self._js.consumer_info(TASK_STREAM, pool.durable)
        self.requests += 1
        delivered = info.delivered.stream_seq or 0
        total, after = await asyncio.gather(self._count(pool, 1), self._count(pool, delivered + 1))
        sample = _Sample(delivered, total - after, time.monotonic())
        self._samples[pool.name] = sample
        return sample

    async def _count(self, pool: Pool, seq: int) -> int:
        self.requests += 1
        return await count_from(self._nc, TASK_STREAM, pool.filter_subject, seq)
