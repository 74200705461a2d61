"""Live progress of one task: ``GET /api/tasks/{id}/events`` as Server-Sent Events, and
the same over a WebSocket at the same path.

Every message is the task's state (as ``GET /api/tasks/{id}`` shows it, with
``queue_position`` while it is pending); its id is the stream sequence of the event
that produced it. A client reconnecting with ``Last-Event-ID`` (SSE) or
``?last_event_id=`` (WebSocket) gets every state after that one. The stream ends after
the final state (SSE: an ``end`` event; WebSocket: closed with 1000).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, WebSocket
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketDisconnect

from pixelbus.contracts.keys import TASKS_READ
from pixelbus.contracts.task import TaskStatus
from pixelbus.contracts.views import task_view
from pixelbus.gateway.auth import AUTH_RESPONSES, Principal, require
from pixelbus.gateway.deps import Gateway, error_response, gateway
from pixelbus.gateway.follow import Update, follow_task
from pixelbus.gateway.sse import comment, message, parse_last_event_id

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

KEEPALIVE_S = 15.0
QUEUE_REFRESH_S = 2.0
#: States read ahead of a follower's client: a slow client stops the reading (events
#: stay in the stream) instead of piling up states in the gateway.
READ_AHEAD = 16
_END = object()


async def _updates(gw: Gateway, task_id: str, after: int | None) -> AsyncIterator[Any]:
    """``(id, view)`` per state, the same view again when a pending task's queue position
    moves, ``None`` as a keep-alive tick, and ``_END`` last."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=READ_AHEAD)

    async def pump() -> None:
        try:
            async for update in follow_task(gw.nc, gw.feed, task_id, after=after):
                await queue.put(update)
        finally:
            await queue.put(_END)

    pumper = asyncio.create_task(pump())
    last: Update | None = None
    position: int | None = None
    try:
        while True:
            pending = last is not None and last.state.status is TaskStatus.PENDING
            try:
                item = await asyncio.wait_for(
                    queue.get(), QUEUE_REFRESH_S if pending else KEEPALIVE_S
                )
            except TimeoutError:
                if not pending or last is None:
                    yield None
                    continue
                moved = await gw.queues.position_or_none(last.state)
                if moved != position:
                    position = moved
                    yield last.seq, task_view(last.state, queue_position=position)
                continue
            if item is _END:
                pumper.result()  # a failure of the follower surfaces here
                yield _END
                return
            last = item
            position = await gw.queues.position_or_none(item.state)
            yield item.seq, task_view(item.state, queue_position=position)
    finally:
        pumper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumper


@router.get(
    "/{task_id}/events",
    summary="Live progress (Server-Sent Events)",
    responses={
        **AUTH_RESPONSES,
        200: {"content": {"text/event-stream": {}}, "description": "task states"},
        404: {"description": "no such task (or another tenant's)"},
    },
)
async def task_events(
    task_id: str,
    gw: Annotated[Gateway, Depends(gateway)],
    caller: Annotated[Principal, Depends(require(TASKS_READ))],
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Any:
    """The current state first, then every state change and progress update until the
    task is final. Reconnect with ``Last-Event-ID`` to resume without a gap."""
    if await gw.visible_task(task_id, caller) is None:
        return error_response(404, f"task {task_id} not found")
    after = parse_last_event_id(last_event_id)

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 1000\n\n"
        async for item in _updates(gw, task_id, after):
            if item is None:
                yield comment("keep-alive")
            elif item is _END:
                yield message("{}", event="end")
                return
            else:
                seq, view = item
                yield message(json.dumps(view), event="state", id=seq)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/{task_id}/events")
async def task_events_ws(
    websocket: WebSocket,
    task_id: str,
    last_event_id: Annotated[str | None, Query()] = None,
    token: Annotated[str | None, Query()] = None,
) -> None:
    """The same states as JSON messages ``{"id", "event": "state", "data"}``, then
    ``{"event": "end"}``. Authenticate with ``Authorization: Bearer`` or ``?token=``;
    without a valid key, or for another tenant's task, the handshake is refused (403)."""
    gw: Gateway = websocket.app.state.gateway
    authorization = websocket.headers.get("authorization") or (f"Bearer {token}" if token else None)
    try:
        caller = gw.keys.authenticate(authorization, open_mode=gw.settings.auth_open)
    except HTTPException:
        await websocket.close(code=1008, reason="unauthorized")
        return
    if not caller.may(TASKS_READ) or await gw.visible_task(task_id, caller) is None:
        await websocket.close(code=1008, reason=f"task {task_id} not found")
        return
    await websocket.accept()
    try:
        async for item in _updates(gw, task_id, parse_last_event_id(last_event_id)):
            if item is None:
                continue
            if item is _END:
                await websocket.send_json({"event": "end"})
                await websocket.close(code=1000)
                return
            seq, view = item
            await websocket.send_json({"id": seq, "event": "state", "data": view})
    except WebSocketDisconnect:
        return
