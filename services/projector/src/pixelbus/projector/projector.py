"""The projector: folds the task event stream into the KV bucket (task id → state).

It is the only writer of ``PIXELBUS_TASK_STATE`` (one writer per view: the gateway only
reads it, and its NATS user may not write it). Correct with several replicas at once
(they share one durable consumer and write with compare-and-swap: a stale revision
re-reads and re-folds), after restarts (the fold is idempotent, so a redelivered batch
changes nothing) and from nothing (``rebuild``). Writes are batched per task: one KV read
and at most one write per task per batch, and none at all when the folded state is
unchanged.

Each batch, once folded, also appends its new tasks to the task index (each owner's tasks
in creation order, read by ``GET /api/tasks``), frees the quota slots of the tasks it
ended and queues the webhook deliveries its events call for (``planner``), before it is
acked: a batch whose
writes, slot releases or webhook jobs failed is redelivered whole and folded again (a
no-op) and planned again (the same jobs, de-duplicated by JetStream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from pixelbus.contracts.events import AnyEvent, TaskCreated, decode_event
from pixelbus.contracts.fold import fold
from pixelbus.contracts.subjects import (
    INDEX_BUCKET,
    PROJECTOR_CONSUMER,
    QUOTAS_BUCKET,
    STATE_BUCKET,
    TASK_STREAM,
    parse_subject,
)
from pixelbus.contracts.task import TaskState
from pixelbus.projector.planner import Candidate, WebhookPlanner
from pixelbus.runtime.kv import write_at
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.pull import PullConsumer, stop_when_set
from pixelbus.runtime.quotas import release_slot
from pixelbus.runtime.state import encode_state, read_state
from pixelbus.runtime.task_index import IndexEntry, TaskIndex

__all__ = ["Folded", "Projector", "StateCache", "fold_into_kv"]

log = structlog.get_logger("pixelbus.projector")

_CAS_ATTEMPTS = 20
#: A batch this big means load: the projector lingers for more (see ``Projector._linger``).
LINGER_FROM = 16


class StateCache:
    """The last state and revision this projector wrote per task, least recently used out
    once the states held pass ``max_bytes`` (their encoded size).

    Saves the KV read before each write. A stale entry (another replica wrote since) costs
    nothing but a CAS conflict, after which the state is read from the bucket again.
    """

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[TaskState, int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, task_id: str) -> tuple[TaskState, int] | None:
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        self._entries.move_to_end(task_id)
        return entry[0], entry[1]

    def put(self, task_id: str, state: TaskState, revision: int, size: int) -> None:
        self.drop(task_id)
        self._entries[task_id] = (state, revision, size)
        self.bytes += size
        while self.bytes > self._max_bytes and self._entries:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def drop(self, task_id: str) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is not None:
            self.bytes -= entry[2]


@dataclass(frozen=True, slots=True)
class Folded:
    """One task's fold in a batch: the stored state it started from (``None``: the task
    was not in the bucket), the state now stored, and whether this write ended the task
    (exactly one writer sees ``ended``, whatever the number of replicas)."""

    before: TaskState | None
    after: TaskState
    ended: bool


async def fold_into_kv(
    kv: KeyValue, task_id: str, events: list[AnyEvent], cache: StateCache | None = None
) -> Folded:
    """Fold ``events`` into the stored state of ``task_id`` with compare-and-swap."""
    cached = cache.get(task_id) if cache is not None else None
    fresh = cached is None and isinstance(events[0], TaskCreated)
    for _ in range(_CAS_ATTEMPTS):
        if cached is not None:
            state: TaskState | None
            state, revision = cached
            cached = None
        elif fresh:
            state, revision = None, 0  # a new task: create, no read (a conflict reads)
            fresh = False
        else:
            state, revision = await read_state(kv, task_id)
        new_state = fold(events, state)
        assert new_state is not None
        if new_state == state:  # a redelivery: nothing to write
            assert state is not None
            return Folded(state, state, ended=False)
        data = encode_state(new_state)
        try:
            revision = await write_at(kv, task_id, data, revision)
        except KeyWrongLastSequenceError:
            continue  # another replica wrote first: re-read and re-fold
        if cache is not None:
            cache.put(task_id, new_state, revision, len(data))
        ended = new_state.is_final and (state is None or not state.is_final)
        return Folded(state, new_state, ended=ended)
    if cache is not None:
        cache.drop(task_id)
    raise RuntimeError(f"projector: gave up on {task_id} after {_CAS_ATTEMPTS} CAS conflicts")


_ENDING_KINDS = frozenset({"completed", "failed", "cancelled"})


def _note_subject(open_tasks: set[str], subject: str) -> None:
    """Track the tasks of a batch that have not ended yet, from event subjects."""
    parsed = parse_subject(subject)
    if parsed is None:
        return
    if parsed.kind in _ENDING_KINDS:
        open_tasks.discard(parsed.task_id)
    else:
        open_tasks.add(parsed.task_id)


class Projector:
    """The fold loop over the durable consumer ``projector`` (all task events).

    ``planner``: the webhook planning of each batch (``None``: none, e.g. a second
    projector in a test). ``rebuild`` never runs this loop, so it never plans webhooks.
    """

    def __init__(
        self,
        nc: Client,
        *,
        batch: int = 512,
        planner: WebhookPlanner | None = None,
        cache_bytes: int = 32 * 1024 * 1024,
        linger_s: float = 0.002,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._batch = batch
        self._linger_s = linger_s
        self._planner = planner
        self._stopping = asyncio.Event()
        self._cache = StateCache(cache_bytes)
        self._quotas: KeyValue | None = None
        self._index: TaskIndex | None = None
        self.projected = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        kv = await self._js.key_value(STATE_BUCKET)
        self._quotas = await self._js.key_value(QUOTAS_BUCKET)
        self._index = TaskIndex(await self._js.key_value(INDEX_BUCKET))
        # Two batches of credit: the next batch arrives while this one is folded.
        consumer = PullConsumer(self._nc, TASK_STREAM, PROJECTOR_CONSUMER, credit=2 * self._batch)
        await consumer.start()
        stopper = asyncio.create_task(stop_when_set(self._stopping, consumer))
        log.info("projector started", webhooks=self._planner is not None)
        try:
            # Fold whatever has arrived as soon as the last fold is done.
            while msgs := await consumer.batch(self._batch):
                if self._linger_s > 0 and len(msgs) < self._batch:
                    msgs += await self._linger(consumer, msgs)
                try:
                    await self.project(kv, msgs)
                finally:
                    consumer.release(len(msgs))
        finally:
            stopper.cancel()
            await consumer.close()

    async def _linger(self, consumer: PullConsumer, msgs: list[Msg]) -> list[Msg]:
        """What arrives within ``linger_s`` more, so that a task's events fold into one
        KV write: under load (a batch of ``LINGER_FROM`` or more) the whole linger; at
        light load until every task of the batch has its ending event (a probe's
        created, started, outputs and completed come within a millisecond or two)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger_s
        more: list[Msg] = []
        room = self._batch - len(msgs)
        open_tasks: set[str] = set()
        for msg in msgs:
            _note_subject(open_tasks, msg.subject)
        while room > 0 and (open_tasks or len(msgs) + len(more) >= LINGER_FROM):
            left = deadline - loop.time()
            if left <= 0 or not await consumer.arrival(left):
                break
            for msg in consumer.take(room):
                more.append(msg)
                room -= 1
                _note_subject(open_tasks, msg.subject)
        return more

    async def project(self, kv: KeyValue, msgs: list[Msg]) -> None:
        """Fold, free slots, plan webhooks, then ack the batch (or nak it whole)."""
        by_task: dict[str, list[AnyEvent]] = defaultdict(list)
        candidates: list[Candidate] = []
        created: list[IndexEntry] = []
        for msg in msgs:
            try:
                event = decode_event(msg.data)
            except Exception as exc:
                log.error("undecodable event skipped", subject=msg.subject, error=str(exc))
                continue
            by_task[event.task_id].append(event)
            if isinstance(event, TaskCreated):
                created.append((event.owner, event.task_id, event.occurred_at.isoformat()))
            if self._planner is not None and self._planner.concerns(event):
                candidates.append(Candidate(event, msg.subject, msg.metadata.timestamp))
        results = await asyncio.gather(
            *(
                fold_into_kv(kv, task_id, events, self._cache)
                for task_id, events in by_task.items()
            ),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        folded = {
            task_id: r for task_id, r in zip(by_task, results, strict=True) if isinstance(r, Folded)
        }
        try:
            ended = [f.after for f in folded.values() if f.ended]
            if ended:
                await asyncio.gather(*(self._task_ended(state) for state in ended))
            if failed:
                raise failed[0]
            if created and self._index is not None:
                await self._index.add(created)
            if self._planner is not None:
                await self._planner.plan(candidates, {t: f.before for t, f in folded.items()})
        except Exception as exc:
            # Leave the batch unacked: it is redelivered, re-folded (idempotent) and
            # planned again (the jobs keep their message ids).
            log.warning("projector batch failed; will be redelivered", error=str(exc))
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=0.5)
            return
        for msg in msgs:
            await msg.ack()
        self.projected += len(msgs)

    async def _task_ended(self, state: TaskState) -> None:
        """What follows a task's end, once per task: its metric and its quota slot back."""
        if state.finished_at is not None and state.created_at is not None:
            seconds = (state.finished_at - state.created_at).total_seconds()
            process_metrics().observe_duration(state.workflow or "?", "end_to_end", seconds)
        if not state.quota_reserved or self._quotas is None:
            return
        try:
            await release_slot(self._quotas, state.owner)
        except Exception as exc:  # a lost release only makes the quota stricter
            log.warning("active-task slot not released", task_id=state.task_id, error=str(exc))
