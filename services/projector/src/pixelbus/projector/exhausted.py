"""Tasks whose messages ran out of deliveries end FAILED instead of PROCESSING forever.

JetStream stops redelivering a message after the consumer's ``max_deliver`` attempts and
emits a MAX_DELIVERIES advisory; nothing else tells the task. A worker publishes its own
final ``TaskFailed`` when a handler fails on the last attempt, but not when it died
(kill -9, a lost connection, a lease that lapsed) during that attempt. The advisories are
captured in a stream of their own (see ``provision``), so one raised while no projector
runs is handled when one starts; several projector replicas share the durable consumer,
and the failure has one event id per task, so it is recorded once. It runs beside the
projector because it reads the state the projector writes (a task already final is left
alone) and the final ``failed`` it publishes is folded there like any other event.
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from pixelbus.contracts.events import AnyEvent, TaskFailed, decode_event
from pixelbus.contracts.subjects import (
    ADVISORY_STREAM,
    EXHAUSTED_CONSUMER,
    STATE_BUCKET,
    TASK_STREAM,
    UPLOADER_CONSUMER,
    parse_subject,
)
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.lifecycle import Before, TaskEvents, before_run
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.pull import DurableLoop
from pixelbus.runtime.state import read_state

__all__ = ["ExhaustedWatcher", "MaxDeliveriesAdvisory", "exhaustion_failure"]

log = structlog.get_logger("pixelbus.exhausted")


class MaxDeliveriesAdvisory(msgspec.Struct, kw_only=True):
    """``io.nats.jetstream.advisory.v1.max_deliver`` (the fields pixelbus reads)."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


def exhaustion_failure(task_event: AnyEvent, consumer: str, deliveries: int) -> TaskFailed:
    """The final failure of a task whose ``consumer`` gave up on it after ``deliveries``."""
    step = "storing its outputs" if consumer == UPLOADER_CONSUMER else "running it"
    message = (
        f"each attempt at {step} ended without a result "
        "(the process handling it stopped or lost its connection)"
    )
    return TaskEvents(task_event.task_id, deliveries, utcnow).failed(
        "attempts_exhausted", message, retryable=True, final=True
    )


class ExhaustedWatcher(DurableLoop):
    stream = ADVISORY_STREAM
    durable = EXHAUSTED_CONSUMER
    what = "max-deliveries advisory"

    def __init__(self, nc: Client, *, concurrency: int = 8) -> None:
        super().__init__(nc, concurrency=concurrency)
        self._publisher = EventPublisher(self._js)

    async def process(self, msg: Msg) -> None:
        try:
            advisory = msgspec.json.decode(msg.data, type=MaxDeliveriesAdvisory)
        except msgspec.DecodeError as exc:
            log.error("unreadable advisory terminated", error=str(exc))
            await msg.term()
            return
        if advisory.stream != TASK_STREAM:
            await msg.ack()
            return
        try:
            raw = await self._js.get_msg(TASK_STREAM, advisory.stream_seq)
        except NotFoundError:
            await msg.ack()  # aged out of the stream: nothing left to fail
            return
        task_event = decode_event(raw.data or b"")
        kv = await self._js.key_value(STATE_BUCKET)
        state, _ = await read_state(kv, task_event.task_id)
        if before_run(state) is Before.SKIP:
            await msg.ack()
            return
        parsed = parse_subject(raw.subject or "")
        if parsed is None:  # not a task event: nothing to fail
            await msg.ack()
            return
        failure = exhaustion_failure(task_event, advisory.consumer, advisory.deliveries)
        await self._publisher.publish(
            failure, environment=parsed.environment, workflow=parsed.workflow
        )
        await msg.ack()
        log.warning(
            "task failed: attempts exhausted",
            task_id=task_event.task_id,
            consumer=advisory.consumer,
            deliveries=advisory.deliveries,
            outcome="attempts_exhausted",
        )
