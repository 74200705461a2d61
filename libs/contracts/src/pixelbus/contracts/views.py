"""Task state → the unified task format clients read (``taskId`` kept camelCase).

Pure: the gateway answers with it, and the projector puts it in webhook bodies, so a
receiver gets the task exactly as ``GET /api/tasks/{id}`` shows it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pixelbus.contracts.task import TaskState, TaskStatus

__all__ = ["TASK_VIEW_SCHEMA", "task_view"]


_NULLABLE_TEXT: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_TIME: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_OBJECT: dict[str, Any] = {"type": ["object", "null"]}

#: The JSON schema of ``task_view``, for the OpenAPI ``responses`` of the routes that
#: answer with a task (more fields may come; none of these go away).
TASK_VIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "taskId", "workflow", "workflow_name", "environment", "params", "status",
        "progress", "result", "error", "attempts", "queue_position", "worker",
        "cancel_requested", "created_at", "started_at", "finished_at", "updated_at",
    ],
    "properties": {
        "taskId": {"type": "string", "minLength": 1},
        "workflow": _NULLABLE_TEXT,
        "workflow_name": _NULLABLE_TEXT,
        "environment": _NULLABLE_TEXT,
        "params": {
            "type": "object",
            "required": ["input_data"],
            "properties": {
                "input_data": {"type": "object"},
                "input_omitted": {
                    "type": "object",
                    "description": "a large input left out (`?include=input` shows it)",
                    "properties": {"bytes": {"type": "integer"}, "sha256": {"type": "string"}},
                },
            },
        },
        "status": {"type": "string", "enum": [s.value for s in TaskStatus]},
        "progress": _NULLABLE_OBJECT,
        "result": _NULLABLE_OBJECT,
        "error": _NULLABLE_OBJECT,
        "attempts": {"type": "integer", "minimum": 0},
        "queue_position": {"type": ["integer", "null"], "minimum": 0},
        "worker": _NULLABLE_TEXT,
        "cancel_requested": {"type": "boolean"},
        "created_at": _NULLABLE_TIME,
        "started_at": _NULLABLE_TIME,
        "finished_at": _NULLABLE_TIME,
        "updated_at": _NULLABLE_TIME,
    },
}  # fmt: skip


def task_view(
    state: TaskState,
    *,
    queue_position: int | None = None,
    input_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``queue_position`` (a PENDING task's place in its pool's queue, 1 = next; 0 =
    handed to a worker) where the caller looked it up, else None. ``input_data``: the
    task's whole input where the caller read it (``?include=input``); otherwise a large
    input the state does not carry shows as ``input_omitted`` (its size and digest)."""
    progress = None
    if (
        state.progress is not None
        and state.progress.attempt == state.attempts
        and not state.is_final
    ):
        progress = msgspec.to_builtins(state.progress)
    outputs = [msgspec.to_builtins(o) for o in state.outputs]
    error = state.error if state.is_final else state.last_error
    return {
        "taskId": state.task_id,
        "workflow": state.workflow,
        "workflow_name": state.workflow,
        "environment": state.environment,
        "params": _params(state, input_data),
        "status": state.status.value,
        "progress": progress,
        "result": {"outputs": outputs, **(state.result or {})}
        if state.outputs or state.result
        else None,
        "error": msgspec.to_builtins(error) if error is not None else None,
        "attempts": state.attempts,
        "queue_position": queue_position,
        "worker": state.worker,
        "cancel_requested": state.cancel_requested,
        "created_at": _iso(state.created_at),
        "started_at": _iso(state.started_at),
        "finished_at": _iso(state.finished_at),
        "updated_at": _iso(state.updated_at),
    }


def _params(state: TaskState, input_data: dict[str, Any] | None) -> dict[str, Any]:
    if input_data is not None:
        return {"input_data": input_data}
    if state.input_data is None and state.input_bytes:
        omitted = {"bytes": state.input_bytes, "sha256": state.input_digest}
        return {"input_data": {}, "input_omitted": omitted}
    return {"input_data": state.input_data or {}}


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
