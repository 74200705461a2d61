"""Webhook planning inside the projector's batches.

The projector already decodes and folds every event, so it also plans the webhooks (no
second consumer reading and decoding the whole stream again): for each event of a batch
whose task asked for that kind of change, it queues one ``WebhookJob`` on the webhook
stream before the batch is acked. Jobs come from *events*, not from "the state changed":
a redelivered batch whose state is already stored still plans every job, and the job's
``Nats-Msg-Id`` (``webhook:<event id>``) makes JetStream store it once.

What a task asked for is in its ``TaskCreated`` (``webhook_url``, ``webhook_events``),
not in the task state (kept slim): a batch's ``TaskCreated`` events fill a cache of
``WebhookTarget`` per task, and a task not in it (its ``TaskCreated`` went to another
projector replica, or before a restart) costs one request, the last message on its
``created`` subject.

**Old history is never re-sent.** De-duplication only holds within the webhook stream's
duplicate window, so an event stored longer ago than (about) that window is not planned:
a replay of the stream (a recreated projector consumer) queues nothing, and a job planned
twice is always planned twice inside the window. The cost: events that wait longer than
the window for a projector (an outage that long) get no webhook; the skipped count is
logged.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec
import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from pixelbus.contracts.events import AnyEvent, TaskCreated, decode_event
from pixelbus.contracts.fold import apply
from pixelbus.contracts.subjects import TASK_STREAM, WEBHOOK_STREAM, parse_subject, webhook_subject
from pixelbus.contracts.task import TaskState
from pixelbus.contracts.webhooks import (
    WebhookJob,
    WebhookTarget,
    plan_job,
    webhook_event_name,
    webhook_target,
)
from pixelbus.runtime.clock import utcnow

__all__ = ["Candidate", "TargetCache", "WebhookPlanner", "planning_horizon", "recent"]

log = structlog.get_logger("pixelbus.projector.webhooks")

_encoder = msgspec.json.Encoder()
#: Room left inside the duplicate window for clock skew and the publish itself.
_MARGIN_S = 10.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One event of a batch: what it is, its stream subject, when the stream stored it."""

    event: AnyEvent
    subject: str
    stored_at: datetime


def planning_horizon(duplicate_window_s: float) -> timedelta:
    """How old (stream time) an event may be and still be planned: the duplicate window
    less a margin (at most half of it)."""
    return timedelta(seconds=max(duplicate_window_s - _MARGIN_S, duplicate_window_s / 2))


def recent(stored_at: datetime, now: datetime, horizon: timedelta) -> bool:
    return now - stored_at < horizon


_UNKNOWN = object()


class TargetCache:
    """``WebhookTarget`` (or None: no webhook) per task, least recently used out."""

    def __init__(self, size: int = 50_000) -> None:
        self._size = size
        self._items: OrderedDict[str, WebhookTarget | None] = OrderedDict()

    def get(self, task_id: str) -> WebhookTarget | object | None:
        """The task's target, None, or ``_UNKNOWN`` when this cache has not seen it."""
        if task_id not in self._items:
            return _UNKNOWN
        self._items.move_to_end(task_id)
        return self._items[task_id]

    def put(self, task_id: str, target: WebhookTarget | None) -> None:
        self._items[task_id] = target
        self._items.move_to_end(task_id)
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class WebhookPlanner:
    def __init__(
        self,
        js: JetStreamContext,
        *,
        duplicate_window_s: float,
        clock: Callable[[], datetime] = utcnow,
        cache_size: int = 50_000,
    ) -> None:
        self._js = js
        self._horizon = planning_horizon(duplicate_window_s)
        self._clock = clock
        self._targets = TargetCache(cache_size)
        self.planned = 0
        self.lookups = 0
        self.skipped_old = 0

    def concerns(self, event: AnyEvent) -> bool:
        """Whether ``event`` must reach ``plan``: not when its task is known to want no
        webhook (most tasks), which spares reading the stream metadata of its events."""
        return isinstance(event, TaskCreated) or self._targets.get(event.task_id) is not None

    async def plan(
        self, candidates: Sequence[Candidate], before: Mapping[str, TaskState | None]
    ) -> int:
        """Queue the jobs of one folded batch (``before``: each task's stored state before
        the batch); returns how many were new. Raises when a job could not be queued."""
        now = self._clock()
        by_task: dict[str, list[Candidate]] = defaultdict(list)
        wanted: set[str] = set()
        old = 0
        for candidate in candidates:
            event = candidate.event
            if isinstance(event, TaskCreated):
                self._targets.put(event.task_id, webhook_target(event))
            by_task[event.task_id].append(candidate)
            if webhook_event_name(event) is None:
                continue
            if recent(candidate.stored_at, now, self._horizon):
                wanted.add(event.task_id)
            else:
                old += 1
        if old:
            self.skipped_old += old
            log.info("webhook events older than the duplicate window not planned", events=old)
        jobs = await asyncio.gather(
            *(self._plan_task(by_task[task_id], before.get(task_id), now) for task_id in wanted)
        )
        queued = await asyncio.gather(*(self._queue(job) for task in jobs for job in task))
        new = sum(queued)
        self.planned += new
        return new

    async def _plan_task(
        self, candidates: list[Candidate], state: TaskState | None, now: datetime
    ) -> list[WebhookJob]:
        first = candidates[0]
        task_id = first.event.task_id
        target = self._targets.get(task_id)
        created: TaskCreated | None = None
        if target is _UNKNOWN:
            created = await self._created(first.subject, task_id)
            target = webhook_target(created) if created is not None else None
            self._targets.put(task_id, target)
        if not isinstance(target, WebhookTarget):
            return []
        has_created = any(isinstance(c.event, TaskCreated) for c in candidates)
        if (state is None or state.created_key is None) and not has_created:
            # The task's TaskCreated is not folded yet (another replica holds it): fold
            # it in, so that the body shows the task as it will be.
            created = created or await self._created(first.subject, task_id)
            if created is not None:
                state = apply(state, created)
        jobs = []
        for candidate in candidates:
            state = apply(state, candidate.event)
            if not recent(candidate.stored_at, now, self._horizon):
                continue
            job = plan_job(target, candidate.event, state, now=now)
            if job is not None:
                jobs.append(job)
        return jobs

    async def _created(self, subject: str, task_id: str) -> TaskCreated | None:
        """The task's ``TaskCreated``: the last message on its ``created`` subject."""
        parsed = parse_subject(subject)
        if parsed is None:
            return None
        self.lookups += 1
        try:
            raw = await self._js.get_last_msg(TASK_STREAM, parsed.with_kind("created"))
        except NotFoundError:
            return None  # aged out of the stream (or never there)
        event = decode_event(raw.data or b"")
        if not isinstance(event, TaskCreated) or event.task_id != task_id:
            return None
        return event

    async def _queue(self, job: WebhookJob) -> bool:
        ack = await self._js.publish(
            webhook_subject(job.task_id),
            _encoder.encode(job),
            stream=WEBHOOK_STREAM,
            headers={"Nats-Msg-Id": f"webhook:{job.delivery_id}"},
        )
        if ack.duplicate:
            return False
        log.info("webhook queued", task_id=job.task_id, webhook_event=job.event, outcome="queued")
        return True
