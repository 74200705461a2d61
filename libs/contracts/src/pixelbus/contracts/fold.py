"""The pure fold of task events into task state: ``apply(state, event) -> state``.

The fold is a join: applying events in any order, any number of times, gives the same
state, so two projector replicas, a restart half-way through a batch, or a rebuild from
the stream all agree. Each part of the state is decided by one event, chosen by a total
order (``EventKey``: attempt, then time, then event id):

- the *live* status (PENDING or PROCESSING) by the greatest non-final event;
- the *final* status by the least final event (the first way the task finished). Once a
  final event has been applied the status is final for good; a late progress, start or
  retry event changes nothing that a client sees.
- progress, worker and the last retryable error by their greatest event; the request by
  ``TaskCreated``; ``attempts`` and ``updated_at`` by maxima; ``started_at`` by a minimum.

The state stays slim: an input larger than ``INLINE_INPUT_BYTES`` (a ComfyUI graph of
thousands of nodes) is kept by size and digest only; ``GET /api/tasks/{id}?include=input``
reads it from the task's ``TaskCreated``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

import msgspec

from pixelbus.contracts.events import (
    AnyEvent,
    Event,
    OutputsReady,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskCreated,
    TaskFailed,
    TaskProgress,
    TaskStarted,
)
from pixelbus.contracts.task import EventKey, Progress, TaskError, TaskState, TaskStatus

__all__ = ["INLINE_INPUT_BYTES", "apply", "fold", "is_final_event"]

#: The largest input (JSON bytes) a task state carries itself.
INLINE_INPUT_BYTES = 4096


def _key(event: Event) -> EventKey:
    return EventKey(event.attempt, event.occurred_at, event.event_id)


def _max_time(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b > a else a


def _min_time(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def is_final_event(event: Event) -> bool:
    if isinstance(event, TaskFailed):
        return event.final
    return isinstance(event, TaskCompleted | TaskCancelled)


def _live_status(event: Event) -> TaskStatus | None:
    if isinstance(event, TaskCreated | TaskFailed):  # new, or a retryable failure: queued
        return TaskStatus.PENDING
    if isinstance(event, TaskStarted | TaskProgress | OutputsReady):
        return TaskStatus.PROCESSING
    return None


def _final_key(event: Event) -> EventKey:
    # Finals are ordered by time first: the attempt that finished first wins.
    return EventKey(0, event.occurred_at, event.event_id)


def _apply_final(state: TaskState, event: AnyEvent) -> TaskState:
    key = _final_key(event)
    if state.final_key is not None and not key < state.final_key:
        return state
    changes: dict[str, object] = {
        "final_key": key,
        "finished_at": event.occurred_at,
        "outputs": (),
        "result": None,
        "error": None,
    }
    if isinstance(event, TaskCompleted):
        changes.update(status=TaskStatus.COMPLETED, outputs=event.outputs, result=event.result)
    elif isinstance(event, TaskCancelled):
        message = event.reason or "cancelled by request"
        error = TaskError(code="cancelled", message=message)
        changes.update(status=TaskStatus.CANCELLED, error=error)
    elif isinstance(event, TaskFailed):
        error = TaskError(code=event.code, message=event.message, retryable=event.retryable)
        changes.update(status=TaskStatus.FAILED, error=error)
    return msgspec.structs.replace(state, **changes)


def _apply_live(state: TaskState, event: AnyEvent) -> TaskState:
    changes: dict[str, object] = {}
    key = _key(event)
    status = _live_status(event)
    if status is not None and (state.live_key is None or key > state.live_key):
        changes["live_key"] = key
        if state.final_key is None:
            changes["status"] = status
    if isinstance(event, TaskCreated) and (state.created_key is None or key < state.created_key):
        encoded = msgspec.json.encode(event.input_data)
        changes.update(
            created_key=key,
            workflow=event.workflow,
            environment=event.environment,
            input_data=event.input_data if len(encoded) <= INLINE_INPUT_BYTES else None,
            input_bytes=len(encoded),
            input_digest=hashlib.sha256(encoded).hexdigest(),
            owner=event.owner,
            quota_reserved=event.quota_reserved,
            created_at=event.occurred_at,
        )
    elif isinstance(event, TaskStarted):
        changes["attempts"] = max(state.attempts, event.attempt)
        changes["started_at"] = _min_time(state.started_at, event.occurred_at)
        if state.worker_key is None or key > state.worker_key:
            changes.update(worker_key=key, worker=event.worker)
    elif isinstance(event, TaskProgress):
        if state.progress_key is None or key > state.progress_key:
            progress = Progress(
                attempt=event.attempt,
                fraction=event.fraction,
                node=event.node,
                message=event.message,
                frames_done=event.frames_done,
                frames_total=event.frames_total,
            )
            changes.update(progress_key=key, progress=progress)
    elif isinstance(event, TaskFailed):
        if state.failure_key is None or key > state.failure_key:
            error = TaskError(code=event.code, message=event.message, retryable=event.retryable)
            changes.update(failure_key=key, last_error=error)
    elif isinstance(event, TaskCancelRequested):
        changes["cancel_requested"] = True
        if state.cancel_reason is None or (
            event.reason is not None and event.reason < state.cancel_reason
        ):
            changes["cancel_reason"] = event.reason
    if not changes:
        return state
    return msgspec.structs.replace(state, **changes)


def apply(state: TaskState | None, event: AnyEvent) -> TaskState:
    """Fold one event into a task's state (``None`` for a task not seen yet)."""
    if state is None:
        state = TaskState(task_id=event.task_id)
    elif state.task_id != event.task_id:
        raise ValueError(f"event for task {event.task_id!r} applied to task {state.task_id!r}")
    state = msgspec.structs.replace(
        state, updated_at=_max_time(state.updated_at, event.occurred_at)
    )
    if is_final_event(event):
        if isinstance(event, TaskFailed):  # a final failure is also the latest error
            state = _apply_live(state, event)
        return _apply_final(state, event)
    return _apply_live(state, event)


def fold(events: Iterable[AnyEvent], state: TaskState | None = None) -> TaskState | None:
    for event in events:
        state = apply(state, event)
    return state
