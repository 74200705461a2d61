"""A completed task as a downstream service receives it (pure: from the event and its
subject)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pixelbus.contracts.events import AnyEvent, TaskCompleted, TaskFailed
from pixelbus.contracts.subjects import parse_subject
from pixelbus.contracts.task import StoredOutput

__all__ = ["Completion", "completion_from"]


@dataclass(frozen=True, slots=True)
class Completion:
    """``status`` is ``COMPLETED`` (``outputs`` and ``result`` set) or, for a subscriber
    that asked for failures too, ``FAILED`` (``error_code``, ``error_message``).
    ``delivery`` counts the deliveries of this completion (> 1: a redelivery after a
    callback failed or a subscriber stopped before acking): key side effects on
    ``task_id`` to make them idempotent."""

    task_id: str
    environment: str
    workflow: str
    status: str
    occurred_at: datetime
    outputs: tuple[StoredOutput, ...] = ()
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error_message: str | None = None
    stream_seq: int = 0
    delivery: int = 1


def completion_from(
    event: AnyEvent, subject: str, *, stream_seq: int = 0, delivery: int = 1
) -> Completion | None:
    """The completion an event is (None for other events, e.g. a retryable failure)."""
    parsed = parse_subject(subject)
    environment, workflow = (parsed.environment, parsed.workflow) if parsed else ("", "")
    common: dict[str, Any] = {
        "task_id": event.task_id,
        "environment": environment,
        "workflow": workflow,
        "occurred_at": event.occurred_at,
        "stream_seq": stream_seq,
        "delivery": delivery,
    }
    if isinstance(event, TaskCompleted):
        return Completion(status="COMPLETED", outputs=event.outputs, result=event.result, **common)
    if isinstance(event, TaskFailed) and event.final:
        return Completion(
            status="FAILED", error_code=event.code, error_message=event.message, **common
        )
    return None
