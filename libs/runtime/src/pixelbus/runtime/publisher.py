"""Publishing task events: subject from the task, ``Nats-Msg-Id`` from the event id.

The event id is deterministic (``pixelbus.contracts.events.event_id``), so a publish
retried after a lost ack, or the same event published by two racing processes, is stored
once by JetStream within the stream's duplicate window.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry.trace import SpanKind

from pixelbus.contracts.events import Event, TaskCompleted, TaskCreated, TaskFailed, encode_event
from pixelbus.contracts.subjects import TASK_STREAM, task_subject
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.tracing import headers_with_trace, messaging_attributes, tracer

__all__ = ["EventPublisher"]

MSG_ID = "Nats-Msg-Id"


class EventPublisher:
    def __init__(self, js: JetStreamContext, *, timeout_s: float = 5, attempts: int = 3) -> None:
        self._js = js
        self._timeout_s = timeout_s
        self._attempts = attempts

    async def publish(self, event: Event, *, environment: str, workflow: str) -> PubAck:
        """Publish and wait for the stream's ack; retries (same msg id) on timeouts."""
        subject = task_subject(environment, workflow, event.kind, event.task_id)
        with tracer.start_as_current_span(
            f"publish {type(event).__name__}",
            kind=SpanKind.PRODUCER,
            attributes={
                **messaging_attributes("send", subject, event.event_id),
                "pixelbus.task_id": event.task_id,
            },
        ):
            headers = headers_with_trace({MSG_ID: event.event_id})
            payload = encode_event(event)
            for attempt in range(1, self._attempts + 1):
                try:
                    ack = await self._js.publish(
                        subject,
                        payload,
                        timeout=self._timeout_s,
                        stream=TASK_STREAM,
                        headers=headers,
                    )
                except TimeoutError:
                    if attempt == self._attempts:
                        raise
                    await asyncio.sleep(0.1 * attempt)
                    continue
                if not ack.duplicate:  # stored once: counted once
                    _count(event, workflow)
                return ack
        raise AssertionError("unreachable")


def _count(event: Event, workflow: str) -> None:
    """The task counters move where the events are published, whoever publishes them."""
    metrics = process_metrics()
    if isinstance(event, TaskCreated):
        metrics.task_created(workflow, event.environment)
    elif isinstance(event, TaskCompleted):
        metrics.task_completed(workflow)
    elif isinstance(event, TaskFailed):
        metrics.task_failed(workflow, event.code, final=event.final)
