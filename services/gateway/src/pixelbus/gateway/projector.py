"""The projector: folds the task event stream into the KV bucket (task id → state).

Correct with several replicas at once (they share one durable consumer and write with
compare-and-swap: a stale revision re-reads and re-folds), after restarts (the fold is
idempotent, so a redelivered batch changes nothing) and from nothing (``rebuild``).
Writes are batched per task: one KV read and at most one write per task per batch, and
none at all when the folded state is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, defaultdict

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.events import AnyEvent, decode_event
from pixelbus.contracts.fold import fold
from pixelbus.contracts.subjects import (
    PROJECTOR_CONSUMER,
    QUOTAS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
)
from pixelbus.contracts.task import TaskState
from pixelbus.gateway.quotas import ActiveTasks
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.pull import PullFeed
from pixelbus.runtime.state import encode_state, read_state

__all__ = ["Projector", "StateCache", "fold_into_kv"]

log = structlog.get_logger("pixelbus.projector")

_CAS_ATTEMPTS = 20


class StateCache:
    """The last state and revision this projector wrote per task (least recently used out).

    Saves the KV read before each write. A stale entry (another replica wrote since) costs
    nothing but a CAS conflict, after which the state is read from the bucket again.
    """

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._entries: OrderedDict[str, tuple[TaskState, int]] = OrderedDict()

    def get(self, task_id: str) -> tuple[TaskState, int] | None:
        entry = self._entries.get(task_id)
        if entry is not None:
            self._entries.move_to_end(task_id)
        return entry

    def put(self, task_id: str, state: TaskState, revision: int) -> None:
        self._entries[task_id] = (state, revision)
        self._entries.move_to_end(task_id)
        if len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def drop(self, task_id: str) -> None:
        self._entries.pop(task_id, None)


async def fold_into_kv(
    kv: KeyValue, task_id: str, events: list[AnyEvent], cache: StateCache | None = None
) -> TaskState | None:
    """Fold ``events`` into the stored state of ``task_id`` with compare-and-swap.

    Returns the new state when this write made the task final (exactly one writer does,
    whatever the number of replicas), else ``None``.
    """
    cached = cache.get(task_id) if cache is not None else None
    for _ in range(_CAS_ATTEMPTS):
        if cached is not None:
            state: TaskState | None
            state, revision = cached
            cached = None
        else:
            state, revision = await read_state(kv, task_id)
        new_state = fold(events, state)
        assert new_state is not None
        data = encode_state(new_state)
        if state is not None and data == encode_state(state):
            return None
        try:
            if revision == 0:
                revision = await kv.create(task_id, data)
            else:
                revision = await kv.update(task_id, data, last=revision)
        except KeyWrongLastSequenceError:
            continue  # another replica wrote first: re-read and re-fold
        if cache is not None:
            cache.put(task_id, new_state, revision)
        if new_state.is_final and (state is None or not state.is_final):
            return new_state
        return None
    if cache is not None:
        cache.drop(task_id)
    raise RuntimeError(f"projector: gave up on {task_id} after {_CAS_ATTEMPTS} CAS conflicts")


def _observe_end_to_end(state: TaskState) -> None:
    if state.finished_at is not None and state.created_at is not None:
        seconds = (state.finished_at - state.created_at).total_seconds()
        process_metrics().observe_duration(state.workflow or "?", "end_to_end", seconds)


async def _task_ended(quotas: ActiveTasks, state: TaskState) -> None:
    """What follows a task's end, once per task: its metric and its quota slot back."""
    _observe_end_to_end(state)
    if not state.quota_reserved:
        return
    try:
        await quotas.release(state.owner)
    except Exception as exc:  # a lost release only makes the quota stricter
        log.warning("active-task slot not released", task_id=state.task_id, error=str(exc))


class Projector:
    def __init__(self, nc: Client, *, batch: int = 512) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._batch = batch
        self._stopping = asyncio.Event()
        self._cache = StateCache()
        self._quotas = ActiveTasks(None, 0)
        self.projected = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        kv = await self._js.key_value(STATE_BUCKET)
        self._quotas = ActiveTasks(await self._js.key_value(QUOTAS_BUCKET), 0)
        feed = PullFeed(self._nc, TASK_STREAM, PROJECTOR_CONSUMER)
        await feed.start()
        log.info("projector started")
        try:
            while not self._stopping.is_set():
                pending: list[Msg] = []
                try:
                    async for msg in feed.pull(self._batch, self._stopping):
                        pending.append(msg)
                        # Fold what has arrived as soon as nothing more is waiting.
                        if feed.queued == 0 or len(pending) >= self._batch:
                            await self.project(kv, pending)
                            pending = []
                except Exception as exc:
                    log.warning("projector pull failed", error=str(exc))
                    await asyncio.sleep(0.5)
                if pending:
                    await self.project(kv, pending)
        finally:
            await feed.close()

    async def project(self, kv: KeyValue, msgs: list[Msg]) -> None:
        by_task: dict[str, list[AnyEvent]] = defaultdict(list)
        for msg in msgs:
            try:
                event = decode_event(msg.data)
            except Exception as exc:
                log.error("undecodable event skipped", subject=msg.subject, error=str(exc))
                continue
            by_task[event.task_id].append(event)
        results = await asyncio.gather(
            *(
                fold_into_kv(kv, task_id, events, self._cache)
                for task_id, events in by_task.items()
            ),
            return_exceptions=True,
        )
        ended = [r for r in results if isinstance(r, TaskState)]
        if ended:
            await asyncio.gather(*(_task_ended(self._quotas, state) for state in ended))
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # Leave the batch unacked: it is redelivered and re-folded (idempotent).
            log.warning("projector batch failed; will be redelivered", error=str(failed[0]))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=0.5)
            return
        for msg in msgs:
            await msg.ack()
        self.projected += len(msgs)
