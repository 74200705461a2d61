"""The two hottest routes, answered without FastAPI's per-request machinery.

``POST /api/tasks/create`` and ``GET /api/tasks/{task_id}`` are most of a busy gateway's
requests, and FastAPI spends about as much CPU resolving one's dependencies, headers and
route as the route's own work (py-spy at saturation: routing, dependency solving and
exception layers ≈ 30 % of the gateway's samples). This plain ASGI layer sits inside the
gateway's own middleware (body limit, concurrency limit, security headers), so those still
apply, and answers the plain form of these two requests by calling the very same route
functions (``routes.tasks.create`` and ``read``) after the same ``authorize``. Anything
else (another path or method, a query string, an ``Idempotency-Key`` FastAPI would refuse)
goes on to FastAPI unchanged, which stays the API's one definition (OpenAPI, docs,
validation). An exception goes to the app's own exception handlers, as in FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pixelbus.contracts.keys import TASKS_READ, TASKS_WRITE
from pixelbus.gateway.auth import authorize
from pixelbus.gateway.deps import Gateway
from pixelbus.gateway.routes import tasks

__all__ = ["HotRoutes"]

_CREATE_PATH = "/api/tasks/create"
_TASK_PREFIX = "/api/tasks/"
#: the ``max_length`` of the create route's ``Idempotency-Key`` header (longer: FastAPI's 422)
_MAX_KEY_LENGTH = 200


class HotRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["query_string"]:
            method, path = scope["method"], scope["path"]
            if method == "POST" and path == _CREATE_PATH:
                key = _header(scope, b"idempotency-key")
                if key is None or len(key) <= _MAX_KEY_LENGTH:
                    await self._create(scope, receive, send, key)
                    return
            elif method == "GET" and path.startswith(_TASK_PREFIX):
                task_id = path[len(_TASK_PREFIX) :]
                if task_id and "/" not in task_id:
                    await self._read(scope, receive, send, task_id)
                    return
        await self.app(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send, key: str | None) -> None:
        body = await _read_body(receive)
        if body is None:  # the client went away
            return

        async def answer(gw: Gateway) -> Response:
            caller = await authorize(gw, _header(scope, b"authorization"), TASKS_WRITE)
            return await tasks.create(gw, caller, body, key)

        await _respond(scope, receive, send, answer)

    async def _read(self, scope: Scope, receive: Receive, send: Send, task_id: str) -> None:
        async def answer(gw: Gateway) -> Response:
            caller = await authorize(gw, _header(scope, b"authorization"), TASKS_READ)
            return await tasks.read(gw, caller, task_id)

        await _respond(scope, receive, send, answer)


async def _respond(
    scope: Scope, receive: Receive, send: Send, answer: Callable[[Gateway], Awaitable[Response]]
) -> None:
    api: Any = scope["app"]  # the FastAPI application (Starlette puts itself in the scope)
    try:
        response = await answer(api.state.gateway)
    except Exception as exc:
        response = await _handled(api, scope, exc)
    await response(scope, receive, send)


async def _handled(api: Any, scope: Scope, exc: Exception) -> Response:
    """The answer of the app's own handler for ``exc`` (the most specific one)."""
    handlers = api.exception_handlers
    for kind in type(exc).__mro__:
        handler = handlers.get(kind)
        if handler is not None:
            response: Response = await handler(Request(scope), exc)
            return response
    raise exc


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of a header (what FastAPI's ``Header`` reads), or ``None``."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; ``None`` when the client disconnects first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
