"""``GET /api/tasks/{id}/webhooks``: every delivery attempt of a task's webhook (the log
the webhooks service appends to; the gateway only reads it)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pixelbus.contracts.keys import TASKS_READ
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import Gateway, error_response, gateway

router = APIRouter(prefix="/api/tasks", tags=["webhooks"])


@router.get(
    "/{task_id}/webhooks",
    summary="The task's webhook deliveries",
    responses={**AUTH_RESPONSES, 404: {"description": "no such task (or another tenant's)"}},
)
async def task_webhooks(
    task_id: str,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_READ))],
) -> JSONResponse:
    """``status``: ``none`` (nothing sent yet), ``pending`` (a delivery is retrying),
    ``delivered``, or ``failed`` (a delivery gave up after its attempts); ``attempts``:
    each try with its HTTP status or error, oldest first."""
    if await gw.visible_task(task_id, caller) is None:
        return error_response(404, f"task {task_id} not found")
    log = await gw.webhook_log.read(task_id)
    return JSONResponse(
        content={
            "taskId": task_id,
            "status": log.status(),
            "attempts": msgspec.to_builtins(log.attempts),
        }
    )
