"""``GET /api/tasks``: the caller's recent tasks, newest first, a page at a time.

Read from the task-state bucket (one pass over its current values): fine for the
dashboard and the CLI; a large deployment should page with ``before``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from pixelbus.contracts.keys import TASKS_READ
from pixelbus.contracts.task import TaskState
from pixelbus.contracts.views import task_view
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import Gateway, gateway
from pixelbus.runtime.state import decode_state

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


def _newest_first(state: TaskState) -> tuple[str, str]:
    return (state.created_at.isoformat() if state.created_at else "", state.task_id)


@router.get("", summary="Recent tasks", responses=AUTH_RESPONSES)
async def list_tasks(
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_READ))],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> JSONResponse:
    """``tasks``: up to ``limit`` tasks created before the ``before`` cursor (the
    ``next`` of the previous page), newest first, optionally of one ``status``."""
    states: list[TaskState] = []
    watcher = await gw.tasks.kv.watchall(ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                state = decode_state(entry.value)
                if caller.sees(state.owner) and (status is None or state.status == status):
                    states.append(state)
    finally:
        await watcher.stop()
    states.sort(key=_newest_first, reverse=True)
    if before is not None:
        states = [s for s in states if "|".join(_newest_first(s)) < before]
    page = states[:limit]
    more = len(states) > limit
    return JSONResponse(
        content={
            "tasks": [task_view(s) for s in page],
            "next": "|".join(_newest_first(page[-1])) if more and page else None,
        }
    )
