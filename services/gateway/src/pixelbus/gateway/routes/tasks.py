"""``/api/tasks``: create (unified task format), read, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from pixelbus.contracts.keys import TASKS_READ, TASKS_WRITE
from pixelbus.contracts.validation import ValidationFailed, decode_create_request, validate_create
from pixelbus.contracts.views import TASK_VIEW_SCHEMA, task_view
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import (
    BODY_RESPONSES,
    Gateway,
    error_response,
    gateway,
    validation_response,
)
from pixelbus.gateway.responses import Json, error, json_body, json_request, validation_error
from pixelbus.gateway.tasks import TaskConflict
from pixelbus.gateway.webhook_admission import admit_webhook

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

CREATE_EXAMPLE: dict[str, Any] = {
    "workflow": "face_swap",
    "environment": "face_swap",
    "params": {
        "input_data": {
            "wf_json": {
                "source_url": "https://example.com/source.jpg",
                "target_url": "https://example.com/target.jpg",
                "resolution": "1024x1024",
            }
        }
    },
}

TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    404: error("no such task (or another tenant's)"),
}


@router.post(
    "/create",
    status_code=201,
    summary="Create a task (unified task format)",
    responses={
        **AUTH_RESPONSES,
        **BODY_RESPONSES,
        200: json_body("an Idempotency-Key seen before: the same task", TASK_VIEW_SCHEMA),
        201: json_body("the task, PENDING", TASK_VIEW_SCHEMA),
        409: error("a task with this taskId exists"),
        413: error("request body too large"),
        422: validation_error("invalid request; `detail` names each field"),
    },
    openapi_extra=json_request({"face_swap": CREATE_EXAMPLE}),
)
async def create_task(
    request: Request,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_WRITE))],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> Response:
    """Validate and publish ``TaskCreated``; answers at once with the task id and ``PENDING``.

    A retried request with the same ``Idempotency-Key`` yields the same task (200).
    """
    return await create(gw, caller, await request.body(), idempotency_key)


async def create(
    gw: Gateway, caller: Principal, raw: bytes, idempotency_key: str | None
) -> Response:
    """``POST /api/tasks/create`` once its caller is known (also called by ``hot``)."""
    try:
        spec = validate_create(decode_create_request(raw))
        admit_webhook(gw.webhook_policy, spec)
        state, is_new = await gw.create_task(spec, caller, idempotency_key=idempotency_key)
    except ValidationFailed as exc:
        return validation_response(exc.errors)
    except TaskConflict as exc:
        return error_response(409, str(exc))
    if not is_new:
        state = await gw.tasks.get(state.task_id) or state
    return Json(status_code=201 if is_new else 200, content=task_view(state))


@router.get(
    "/{task_id}",
    summary="A task's current state",
    responses={**TASK_RESPONSES, 200: json_body("the task", TASK_VIEW_SCHEMA)},
)
async def get_task(
    task_id: str,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_READ))],
    include: Annotated[
        Literal["input"] | None,
        Query(
            description="`input`: the whole input, also when it is too large to be kept "
            "in the task's state (a ComfyUI graph); read from its TaskCreated"
        ),
    ] = None,
) -> Response:
    """The task in the unified format, with ``status``, ``progress``, ``result`` and ``error``."""
    return await read(gw, caller, task_id, include)


async def read(
    gw: Gateway, caller: Principal, task_id: str, include: Literal["input"] | None = None
) -> Response:
    """``GET /api/tasks/{task_id}`` once its caller is known (also called by ``hot``)."""
    state = await gw.visible_task(task_id, caller)
    if state is None:
        return error_response(404, f"task {task_id} not found")
    position = await gw.queues.position_or_none(state)
    input_data = None
    if include == "input" and state.input_data is None and state.input_bytes:
        created = await gw.tasks.created_event(task_id)
        input_data = created.input_data if created is not None else None
    return Json(content=task_view(state, queue_position=position, input_data=input_data))


@router.post(
    "/{task_id}/cancel",
    status_code=202,
    summary="Cancel a task",
    responses={
        **TASK_RESPONSES,
        202: json_body("the task; `cancel_requested` is set", TASK_VIEW_SCHEMA),
        409: error("the task is already final"),
    },
)
async def cancel_task(
    task_id: str,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_WRITE))],
    reason: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    """Queued: skipped when its turn comes. Running: interrupted by its worker. Leased to
    an external consumer: the lease is revoked. Answers 202 with the task's state."""
    if await gw.visible_task(task_id, caller) is None:
        return error_response(404, f"task {task_id} not found")
    try:
        state = await gw.tasks.cancel(task_id, reason)
    except KeyError:
        return error_response(404, f"task {task_id} not found")
    except TaskConflict as exc:
        assert exc.state is not None
        return error_response(409, str(exc), task=task_view(exc.state))
    return Json(status_code=202, content=task_view(state))
