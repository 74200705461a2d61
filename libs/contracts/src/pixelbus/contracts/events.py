"""Task events: one tagged union on a single ``Event`` base.

Events only ever grow by new fields with defaults; readers never forbid unknown fields,
so an old reader survives a new writer. ``event_id`` is deterministic (see ``event_id``)
and doubles as the JetStream ``Nats-Msg-Id``, so a retried publish is stored once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import msgspec

from pixelbus.contracts.task import OutputObject, StoredOutput

__all__ = [
    "AnyEvent",
    "Event",
    "OutputsReady",
    "TaskCancelRequested",
    "TaskCancelled",
    "TaskCompleted",
    "TaskCreated",
    "TaskFailed",
    "TaskProgress",
    "TaskStarted",
    "decode_event",
    "encode_event",
    "event_id",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Every event names its task, when it happened, and its own id."""

    kind: ClassVar[str]
    event_id: str
    task_id: str
    occurred_at: datetime
    attempt: int = 0


class TaskCreated(Event, tag="TaskCreated", frozen=True):
    kind = "created"
    workflow: str
    environment: str
    input_data: dict[str, Any]
    owner: str | None = None
    #: The gateway took an active-task slot of the owner's quota for it (freed at the end).
    quota_reserved: bool = False
    idempotency_key: str | None = None
    #: Webhook of the task (see ``pixelbus.contracts.webhooks``): URL and event names.
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = ()


class TaskStarted(Event, tag="TaskStarted", frozen=True):
    kind = "started"
    worker: str


class TaskProgress(Event, tag="TaskProgress", frozen=True):
    kind = "progress"
    fraction: float | None = None
    node: str | None = None
    message: str | None = None
    #: a video task: frames swapped so far, of how many
    frames_done: int | None = None
    frames_total: int | None = None


class OutputsReady(Event, tag="OutputsReady", frozen=True):
    kind = "outputs"
    outputs: tuple[OutputObject, ...]
    result: dict[str, Any] | None = None
    #: Object Store inputs of the task (inline images), removed once the outputs are stored.
    input_objects: tuple[str, ...] = ()


class TaskCompleted(Event, tag="TaskCompleted", frozen=True):
    kind = "completed"
    outputs: tuple[StoredOutput, ...] = ()
    result: dict[str, Any] | None = None


class TaskFailed(Event, tag="TaskFailed", frozen=True):
    kind = "failed"
    code: str
    message: str
    retryable: bool
    final: bool


class TaskCancelRequested(Event, tag="TaskCancelRequested", frozen=True):
    kind = "cancel_requested"
    reason: str | None = None


class TaskCancelled(Event, tag="TaskCancelled", frozen=True):
    kind = "cancelled"
    reason: str | None = None


AnyEvent = (
    TaskCreated
    | TaskStarted
    | TaskProgress
    | OutputsReady
    | TaskCompleted
    | TaskFailed
    | TaskCancelRequested
    | TaskCancelled
)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(data: bytes) -> AnyEvent:
    """Decode one event; raises ``msgspec.ValidationError``/``DecodeError`` on bad data."""
    return _decoder.decode(data)


_ONCE_PER_TASK = frozenset({"created", "completed", "cancelled", "cancel_requested"})


def event_id(
    task_id: str, kind: str, attempt: int = 0, seq: int | None = None, *, final: bool = False
) -> str:
    """The deterministic id of an event: the same logical event always gets the same id.

    Events that happen once per task (created, completed, cancelled, a final failure) have
    one id whatever the attempt, so two writers racing to finish a task are de-duplicated
    by JetStream; the others are per attempt (and per ``seq`` for progress).
    """
    if kind in _ONCE_PER_TASK:
        return f"{task_id}:{kind}"
    if final:
        return f"{task_id}:{kind}:final"
    base = f"{task_id}:{kind}:{attempt}"
    return base if seq is None else f"{base}:{seq}"
