"""The unified task format (what clients send) and the task state (what the KV holds)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "FINAL_STATUSES",
    "CreateTaskRequest",
    "EventKey",
    "OutputObject",
    "Progress",
    "StoredOutput",
    "TaskError",
    "TaskParams",
    "TaskState",
    "TaskStatus",
]


class TaskStatus(enum.StrEnum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class TaskParams(msgspec.Struct, kw_only=True):
    """``params`` of the unified format; parameters always live in ``input_data``."""

    input_data: dict[str, Any] = msgspec.field(default_factory=dict)


class CreateTaskRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /api/tasks/create`` (the replaced system's unified task format).

    ``workflow_name`` is the backward-compatible alias of ``workflow``; ``status`` is
    accepted only as ``PENDING`` because old clients echo it.
    """

    taskId: str | None = None  # the contract keeps camelCase
    workflow: str | None = None
    workflow_name: str | None = None
    environment: str | None = None
    params: TaskParams = msgspec.field(default_factory=TaskParams)
    status: str | None = None
    #: Where pixelbus POSTs the task's state (signed), and on which changes (ours).
    webhook_url: str | None = None
    webhook_events: list[str] | None = None


class OutputObject(msgspec.Struct, frozen=True, kw_only=True):
    """An output a worker made, not yet in storage: its bytes travel inline in ``data``
    when they are small (up to the worker's inline limit), else they wait in the Object
    Store under ``object_name`` (which is set either way)."""

    object_name: str
    filename: str
    content_type: str
    size: int
    node_id: str | None = None
    data: bytes | None = None


class StoredOutput(msgspec.Struct, frozen=True, kw_only=True):
    """An output in its final storage, with the URL a client downloads it from."""

    filename: str
    content_type: str
    size: int
    url: str
    key: str
    provider: str
    node_id: str | None = None


class TaskError(msgspec.Struct, frozen=True, kw_only=True):
    code: str
    message: str
    retryable: bool = False


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    attempt: int
    fraction: float | None = None
    node: str | None = None
    message: str | None = None
    frames_done: int | None = None
    frames_total: int | None = None


class EventKey(msgspec.Struct, frozen=True, order=True, array_like=True):
    """Total order among a task's events, used so that the fold is order-independent."""

    attempt: int
    occurred_at: datetime
    event_id: str


class TaskState(msgspec.Struct, frozen=True, kw_only=True):
    """A task's state as folded from its events (the value in the KV bucket).

    The ``*_key`` fields record which event decided each part of the state; they are
    what makes the fold a join (commutative, idempotent), see ``fold``.
    """

    task_id: str
    status: TaskStatus = TaskStatus.PENDING
    workflow: str | None = None
    environment: str | None = None
    #: the task's input while it is small (``INLINE_INPUT_BYTES``); a larger one (a
    #: ComfyUI graph) stays in its ``TaskCreated`` only, known here by size and digest
    input_data: dict[str, Any] | None = None
    input_bytes: int = 0
    input_digest: str | None = None
    owner: str | None = None
    quota_reserved: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    worker: str | None = None
    progress: Progress | None = None
    outputs: tuple[StoredOutput, ...] = ()
    result: dict[str, Any] | None = None
    error: TaskError | None = None
    last_error: TaskError | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    created_key: EventKey | None = None
    live_key: EventKey | None = None
    worker_key: EventKey | None = None
    progress_key: EventKey | None = None
    failure_key: EventKey | None = None
    final_key: EventKey | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES
