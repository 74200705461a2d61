"""Limits on what one request, and all of them together, may hold (plain ASGI middleware):
the body size (413 before the body is read) and the requests in the process at once (503
with ``Retry-After``, at once)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BUSY_RETRY_AFTER_S", "BodySizeLimit", "ConcurrencyLimit"]

#: What a request refused for lack of room in the process is told to wait.
BUSY_RETRY_AFTER_S = 1


class _TooLarge(Exception):
    pass


async def _send_error(send: Send, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
    """A JSON ``{"detail": ...}`` answer sent by the middleware itself, not by the app."""
    data = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send: Send) -> None:
        detail = f"request body too large: the limit is {self.max_bytes} bytes"
        await _send_error(send, 413, detail)


class ConcurrencyLimit:
    """At most ``max_requests`` HTTP requests and WebSockets in the app at once.

    One more is refused at once (503 with ``Retry-After``; a WebSocket is closed with 1013,
    "try again later"), never queued: a queue of waiting requests would hold their memory
    and connections while their clients time out, and grow with the flood.
    """

    def __init__(self, app: ASGIApp, max_requests: int) -> None:
        self.app = app
        self.max_requests = max_requests
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_requests:
            await self._refuse(scope, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})
            return
        detail = (
            f"the gateway is busy: {self.max_requests} requests in progress "
            "(PIXELBUS_MAX_CONCURRENT_REQUESTS); nothing was done, retry shortly"
        )
        await _send_error(send, 503, detail, (b"retry-after", str(BUSY_RETRY_AFTER_S).encode()))
