"""``GET /api/tasks``: the caller's tasks, newest first, a page at a time.

Read from the task index (``pixelbus.contracts.task_index``: each owner's tasks in
creation order, kept by the projector), then the page's states, read together: a page
costs a few reads whatever the number of tasks. With a ``status`` filter the walk stops
after ``MAX_CHUNKS_PER_PAGE`` chunks even if the page is not full, and says where to go on
(``next``), so that a rare status never makes one request read everything.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from pixelbus.contracts.keys import TASKS_READ
from pixelbus.contracts.task import TaskState, TaskStatus
from pixelbus.contracts.task_index import (
    ALL_SCOPE,
    CHUNK_SIZE,
    Cursor,
    owner_scope,
    parse_cursor,
)
from pixelbus.contracts.validation import FieldError
from pixelbus.contracts.views import task_view
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import Gateway, gateway, validation_response
from pixelbus.gateway.responses import Json
from pixelbus.runtime.state import read_state

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

MAX_CHUNKS_PER_PAGE = 8
_STATUSES = {status.value for status in TaskStatus}


@router.get("", summary="Recent tasks", responses=AUTH_RESPONSES)
async def list_tasks(
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_READ))],
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    before: Annotated[str | None, Query(max_length=200)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> Response:
    """``tasks``: up to ``limit`` tasks created before the ``before`` cursor (the
    ``next`` of the previous page), newest first, optionally of one ``status``."""
    cursor = parse_cursor(before) if before is not None else None
    if before is not None and cursor is None:
        message = "not a cursor of this listing: pass the `next` of the previous page"
        return validation_response([FieldError(("query", "before"), message, "value_error")])
    if status is not None and status not in _STATUSES:
        message = f"must be one of {', '.join(sorted(_STATUSES))}"
        return validation_response([FieldError(("query", "status"), message, "value_error")])
    scope = ALL_SCOPE if caller.sees_all else owner_scope(caller.owner)
    page, more = await _page(gw, caller, scope, cursor, limit, status)
    return Json(
        content={
            "tasks": [task_view(state) for state in page],
            "next": more.encode() if more is not None else None,
        }
    )


async def _page(
    gw: Gateway,
    caller: Principal,
    scope: str,
    cursor: Cursor | None,
    limit: int,
    status: str | None,
) -> tuple[list[TaskState], Cursor | None]:
    chunk = await gw.index.chunk(scope)
    if chunk is None:
        return [], None
    if cursor is not None and cursor.number != chunk.number:
        chunk = await gw.index.chunk(scope, cursor.number)
        if chunk is None:
            return [], None
    position = len(chunk.entries) if cursor is None else min(cursor.position, len(chunk.entries))
    found: list[TaskState] = []
    chunks_read = 1
    while True:
        while position > 0 and len(found) < limit:
            start = max(0, position - (limit - len(found)))
            ids = [task_id for task_id, _ in reversed(chunk.entries[start:position])]
            states = await asyncio.gather(*(read_state(gw.tasks.kv, i) for i in ids))
            for state, _ in states:
                position -= 1
                if (
                    state is not None
                    and caller.sees(state.owner)
                    and (status is None or state.status == status)
                ):
                    found.append(state)
                    if len(found) == limit:
                        break
        if len(found) == limit:
            more = position > 0 or chunk.number > 0
            return found, Cursor(chunk.number, position) if more else None
        if chunk.number == 0:
            return found, None
        if chunks_read >= MAX_CHUNKS_PER_PAGE:
            return found, Cursor(chunk.number - 1, CHUNK_SIZE)
        previous = await gw.index.chunk(scope, chunk.number - 1)
        if previous is None:  # expired with its tasks
            return found, None
        chunk, position = previous, len(previous.entries)
        chunks_read += 1
