"""The planner: reads every task event (its own durable consumer) and, for a task with a
webhook that asked for this kind of change, queues one delivery job (the signed body is
made later, at each attempt). One job per event: its id is the event id, so a
redelivered event queues nothing new (JetStream de-duplicates on ``Nats-Msg-Id``)."""

from __future__ import annotations

from collections import OrderedDict

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from pixelbus.contracts.events import AnyEvent, TaskCreated, decode_event
from pixelbus.contracts.fold import fold
from pixelbus.contracts.subjects import (
    STATE_BUCKET,
    TASK_STREAM,
    WEBHOOK_PLANNER_CONSUMER,
    task_subject,
    webhook_subject,
)
from pixelbus.contracts.webhooks import WebhookJob, webhook_event_name
from pixelbus.gateway.views import task_view
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.pull import DurableLoop
from pixelbus.runtime.state import read_state

__all__ = ["WebhookPlanner", "webhook_body"]

log = structlog.get_logger("pixelbus.webhooks.planner")

_encoder = msgspec.json.Encoder()


def webhook_body(name: str, event: AnyEvent, view: dict[str, object]) -> bytes:
    """The JSON a receiver gets: Standard Webhooks' ``type``, ``timestamp``, ``data``."""
    return _encoder.encode(
        {"type": f"task.{name}", "timestamp": event.occurred_at.isoformat(), "data": view}
    )


class _CreatedCache:
    """TaskCreated per task (immutable, so never stale), least recently used out."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._items: OrderedDict[str, TaskCreated | None] = OrderedDict()

    def get(self, task_id: str) -> tuple[bool, TaskCreated | None]:
        if task_id not in self._items:
            return False, None
        self._items.move_to_end(task_id)
        return True, self._items[task_id]

    def put(self, task_id: str, created: TaskCreated | None) -> None:
        self._items[task_id] = created
        self._items.move_to_end(task_id)
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class WebhookPlanner(DurableLoop):
    stream = TASK_STREAM
    durable = WEBHOOK_PLANNER_CONSUMER
    what = "task event (webhook planning)"

    def __init__(self, nc: Client, *, concurrency: int = 16) -> None:
        super().__init__(nc, concurrency=concurrency)
        self._created = _CreatedCache()
        self.planned = 0

    async def process(self, msg: Msg) -> None:
        # Subject: pixelbus.tasks.<environment>.<workflow>.<kind>.<task id>
        if msg.subject.split(".")[4:5] in (["outputs"], ["cancel_requested"]):
            await msg.ack()  # never a webhook: not even decoded
            return
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            await msg.term()
            return
        if isinstance(event, TaskCreated):
            self._created.put(event.task_id, event)
            await msg.ack()
            return
        name = webhook_event_name(event)
        created = await self._task_created(event, msg.subject) if name else None
        if name is None or created is None or not created.webhook_url:
            await msg.ack()
            return
        if name not in created.webhook_events:
            await msg.ack()
            return
        kv = await self._js.key_value(STATE_BUCKET)
        stored, _ = await read_state(kv, event.task_id)
        # The projector may not have folded this event yet: fold it here (a join).
        state = fold([created, event], stored)
        assert state is not None
        job = WebhookJob(
            delivery_id=event.event_id,
            task_id=event.task_id,
            owner=created.owner,
            url=created.webhook_url,
            event=name,
            body=webhook_body(name, event, task_view(state)),
            created_at=utcnow(),
        )
        await self._js.publish(
            webhook_subject(event.task_id),
            _encoder.encode(job),
            headers={"Nats-Msg-Id": f"webhook:{job.delivery_id}"},
        )
        await msg.ack()
        self.planned += 1
        log.info("webhook queued", task_id=event.task_id, webhook_event=name, outcome="queued")

    async def _task_created(self, event: AnyEvent, subject: str) -> TaskCreated | None:
        known, created = self._created.get(event.task_id)
        if known:
            return created
        # Subject: pixelbus.tasks.<environment>.<workflow>.<kind>.<task id>
        _, _, environment, workflow, *_ = subject.split(".")
        try:
            raw = await self._js.get_last_msg(
                TASK_STREAM, task_subject(environment, workflow, "created", event.task_id)
            )
        except NotFoundError:
            created = None
        else:
            decoded = decode_event(raw.data or b"")
            created = decoded if isinstance(decoded, TaskCreated) else None
        self._created.put(event.task_id, created)
        return created
