"""Publishing task events: subject from the task, ``Nats-Msg-Id`` from the event id.

The event id is deterministic (``pixelbus.contracts.events.event_id``), so a publish
retried after a lost ack, or the same event published by two racing processes, is stored
once by JetStream within the stream's duplicate window. Each publish waits for its ack; a
caller with several events to publish starts them together (``asyncio.gather``) so that
their acks are awaited at once, not one after the other.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry.trace import SpanKind

from pixelbus.contracts.events import Event, TaskCompleted, TaskCreated, TaskFailed, encode_event
from pixelbus.contracts.subjects import TASK_STREAM, task_subject
from pixelbus.runtime.metrics import process_metrics
from pixelbus.runtime.tracing import headers_with_trace, messaging_attributes, tracer, tracing_on

__all__ = ["TRANSIENT_BUS_ERRORS", "EventPublisher", "FirstOnTaken", "store_is_full"]

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
_WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed expected-sequence check
_INSUFFICIENT_RESOURCES = 10023  # JetStream's error code for a store without room
#: JetStream's "duplicate message id is in process": an earlier publish of this very
#: message (whose ack this one retries) is proposed and waits for its quorum
_MSG_ID_IN_PROCESS = 10158
log = structlog.get_logger("pixelbus.publisher")


#: What a publish meets while the stream has no leader (an election, a node restarting)
#: or the connection is re-established: worth retrying, it heals within seconds.
TRANSIENT_BUS_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


#: what ``_transient`` looks at: any JetStream error may be "in process"
_MAYBE_TRANSIENT: tuple[type[BaseException], ...] = (
    *TRANSIENT_BUS_ERRORS,
    nats.js.errors.APIError,
)


def _transient(exc: BaseException) -> bool:
    """Heals within seconds: an election, a reconnect, or the first copy of this message
    waiting for its quorum (its ack lost; this retry then gets a duplicate ack). Not a
    full store."""
    if store_is_full(exc):
        return False
    if isinstance(exc, TRANSIENT_BUS_ERRORS):
        return True
    return getattr(exc, "err_code", None) == _MSG_ID_IN_PROCESS


def store_is_full(exc: BaseException) -> bool:
    """JetStream refused a message for lack of storage (its ``max_file_store``, an account
    or stream limit): not an election that heals in seconds."""
    return getattr(exc, "err_code", None) == _INSUFFICIENT_RESOURCES


class FirstOnTaken(Exception):
    """A publish with ``first_on`` found a message on that filter already."""


class EventPublisher:
    """Publishes events; a transient bus error is retried (same message id, so stored
    once) with a growing pause for up to ``patience_s`` before it is raised."""

    def __init__(
        self, js: JetStreamContext, *, timeout_s: float = 5, patience_s: float = 20
    ) -> None:
        self._js = js
        self._timeout_s = timeout_s
        self._patience_s = patience_s

    async def publish(
        self, event: Event, *, environment: str, workflow: str, first_on: str | None = None
    ) -> PubAck:
        """Publish and wait for the stream's ack.

        ``first_on``: a subject filter (wildcards allowed) that must hold no message yet;
        the server checks it as it stores the event (atomic, no read first) and refuses
        with ``FirstOnTaken`` otherwise.
        """
        subject = task_subject(environment, workflow, event.kind, event.task_id)
        payload = encode_event(event)
        base = {MSG_ID: event.event_id}
        if first_on is not None:
            base |= {EXPECTED_LAST_SUBJECT_SEQ: "0", EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: first_on}
        try:
            ack = await self._publish(event, subject, payload, base)
        except nats.js.errors.BadRequestError as exc:
            if first_on is not None and exc.err_code == _WRONG_LAST_SEQUENCE:
                raise FirstOnTaken(first_on) from None
            raise
        if not ack.duplicate:  # stored once: counted once
            _count(event, workflow)
        return ack

    async def _publish(
        self, event: Event, subject: str, payload: bytes, base: dict[str, str]
    ) -> PubAck:
        if not tracing_on():
            return await self._send(subject, payload, base)
        with tracer.start_as_current_span(
            f"publish {type(event).__name__}",
            kind=SpanKind.PRODUCER,
            attributes={
                **messaging_attributes("send", subject, event.event_id),
                "pixelbus.task_id": event.task_id,
            },
        ):
            return await self._send(subject, payload, headers_with_trace(base))

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str]) -> PubAck:
        deadline = time.monotonic() + self._patience_s
        pause = 0.05
        while True:
            try:
                return await self._js.publish(
                    subject, payload, timeout=self._timeout_s, stream=TASK_STREAM, headers=headers
                )
            except _MAYBE_TRANSIENT as exc:
                if not _transient(exc) or time.monotonic() + pause > deadline:
                    raise  # a refusal, or a full store (it does not heal in seconds): at once
                log.info(
                    "publish retried",
                    subject=subject,
                    error=type(exc).__name__,
                    err_code=getattr(exc, "err_code", None),
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)


def _count(event: Event, workflow: str) -> None:
    """The task counters move where the events are published, whoever publishes them."""
    if isinstance(event, TaskCreated):
        process_metrics().task_created(workflow, event.environment)
    elif isinstance(event, TaskCompleted):
        process_metrics().task_completed(workflow)
    elif isinstance(event, TaskFailed):
        process_metrics().task_failed(workflow, event.code, final=event.final)
