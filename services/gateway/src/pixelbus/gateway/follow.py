"""Following one task: its events from the task stream, folded into states, from the
first event on, so that any point of the task's history can be resumed from.

Each state carries the stream sequence of the event that produced it (the SSE event id).
``Emission`` decides, purely, what a follower sends: without a resume point, the state
once caught up with the stream, then every later state; with one (``Last-Event-ID``),
every state after it, none skipped. It ends after a final state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from pixelbus.contracts.events import decode_event
from pixelbus.contracts.fold import apply
from pixelbus.contracts.subjects import SUBJECT_ROOT, TASK_STREAM, sanitize_token
from pixelbus.contracts.task import TaskState
from pixelbus.runtime.pull import PullConsumer

__all__ = ["Emission", "Update", "follow_task", "task_events_filter"]

log = structlog.get_logger("pixelbus.follow")


@dataclass(frozen=True, slots=True)
class Update:
    seq: int
    state: TaskState


def task_events_filter(task_id: str) -> str:
    """Every event of one task, whatever its environment, workflow and kind."""
    return f"{SUBJECT_ROOT}.*.*.*.{sanitize_token(task_id)}"


@dataclass
class Emission:
    """What to send for each folded event (pure)."""

    after: int | None = None
    caught_up: bool = False
    done: bool = False

    def on_event(self, seq: int, state: TaskState, pending: int) -> bool:
        """Whether the state after event ``seq`` is sent; ``pending``: events not yet read."""
        was_caught_up = self.caught_up
        if pending == 0:
            self.caught_up = True
        send = seq > self.after if self.after is not None else was_caught_up or self.caught_up
        if self.caught_up and state.is_final:
            self.done = True
        return send


async def follow_task(
    nc: Client, task_id: str, *, after: int | None = None
) -> AsyncIterator[Update]:
    """Yield the task's states (see ``Emission``) until a final one has been sent."""
    js = nc.jetstream()
    info = await js.add_consumer(
        TASK_STREAM,
        ConsumerConfig(
            filter_subject=task_events_filter(task_id),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=60.0,
            num_replicas=0,
        ),
    )
    consumer = PullConsumer(nc, TASK_STREAM, info.name, credit=256, expires_s=5.0)
    await consumer.start()
    emission = Emission(after=after)
    state: TaskState | None = None
    try:
        async for msg in consumer.messages():
            try:
                event = decode_event(msg.data)
            except Exception as exc:
                log.error("undecodable event skipped", subject=msg.subject, error=str(exc))
                continue
            state = apply(state, event)
            meta = msg.metadata
            if emission.on_event(meta.sequence.stream, state, meta.num_pending):
                yield Update(meta.sequence.stream, state)
            if emission.done:
                break
    finally:
        await consumer.close()
        with contextlib.suppress(Exception):
            await asyncio.shield(js.delete_consumer(TASK_STREAM, info.name))
