"""The gateway's plain ASGI middleware, driven as ASGI (no server): security headers,
the body size limit and the in-process request limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from pixelbus.gateway.headers import SecurityHeaders
from pixelbus.gateway.limits import BUSY_RETRY_AFTER_S, BodySizeLimit, ConcurrencyLimit

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def http_scope(
    path: str = "/api/tasks/x", headers: list[tuple[bytes, bytes]] | None = None
) -> Scope:
    return {"type": "http", "method": "POST", "path": path, "headers": headers or []}


def receiving(*chunks: bytes) -> Receive:
    """A request body arriving in ``chunks``."""
    queue = list(chunks)

    async def receive() -> Message:
        body = queue.pop(0) if queue else b""
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    return receive


class Sent:
    """What the middleware sent to the client."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.messages[1:]))


def answering(
    status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, *, read_body: bool = False
) -> tuple[App, list[bytes]]:
    """An app that (optionally) reads the whole body, then answers; and what it read."""
    bodies: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if read_body:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            bodies.append(body)
        await send({"type": "http.response.start", "status": status, "headers": headers or []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app, bodies


# -- security headers ------------------------------------------------------------------


async def test_api_answers_are_private_and_never_a_page() -> None:
    app, _ = answering()
    sent = Sent()
    await SecurityHeaders(app)(http_scope("/api/tasks/t1"), receiving(), sent)
    headers = sent.headers
    assert headers["cache-control"] == "no-store"
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cross-origin-opener-policy"] == "same-origin"


async def test_other_answers_get_the_common_headers_but_stay_cacheable() -> None:
    app, _ = answering()
    sent = Sent()
    await SecurityHeaders(app)(http_scope("/files/out.png"), receiving(), sent)
    headers = sent.headers
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    assert "cache-control" not in headers and "content-security-policy" not in headers


async def test_a_header_the_answer_sets_itself_is_kept_not_doubled() -> None:
    app, _ = answering(headers=[(b"cache-control", b"max-age=60")])
    sent = Sent()
    await SecurityHeaders(app)(http_scope("/api/openapi.json"), receiving(), sent)
    names = [name for name, _ in sent.messages[0]["headers"]]
    assert names.count(b"cache-control") == 1
    assert sent.headers["cache-control"] == "max-age=60"


async def test_non_http_scopes_pass_through_untouched() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "websocket.accept"})

    sent = Sent()
    scope = {"type": "websocket", "path": "/api/tasks/t1/ws", "headers": []}
    await SecurityHeaders(app)(scope, receiving(), sent)
    assert seen == [scope] and sent.messages == [{"type": "websocket.accept"}]


# -- body size ---------------------------------------------------------------------------


async def test_a_declared_body_over_the_limit_is_refused_before_the_app_runs() -> None:
    app, bodies = answering(read_body=True)
    sent = Sent()
    scope = http_scope(headers=[(b"content-length", b"101")])
    await BodySizeLimit(app, max_bytes=100)(scope, receiving(b"x" * 101), sent)
    assert sent.status == 413 and bodies == []  # the app never ran
    assert sent.json == {"detail": "request body too large: the limit is 100 bytes"}
    assert sent.headers["content-length"] == str(len(json.dumps(sent.json)))


async def test_a_streamed_body_is_counted_and_refused_once_it_passes_the_limit() -> None:
    app, bodies = answering(read_body=True)
    sent = Sent()
    # no content-length (chunked): 60 + 60 bytes pass the limit in the second chunk
    await BodySizeLimit(app, max_bytes=100)(http_scope(), receiving(b"a" * 60, b"b" * 60), sent)
    assert sent.status == 413 and bodies == []


async def test_a_body_at_the_limit_reaches_the_app_whole() -> None:
    app, bodies = answering(read_body=True)
    sent = Sent()
    scope = http_scope(headers=[(b"content-length", b"100")])
    await BodySizeLimit(app, max_bytes=100)(scope, receiving(b"a" * 50, b"b" * 50), sent)
    assert sent.status == 200 and bodies == [b"a" * 50 + b"b" * 50]


async def test_an_answer_already_started_is_not_followed_by_a_413() -> None:
    """An app that answers before it reads its whole body: the limit cannot replace an
    answer that has begun, so it sends nothing more."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    sent = Sent()
    await BodySizeLimit(app, max_bytes=10)(http_scope(), receiving(b"x" * 8, b"x" * 8), sent)
    assert [m["type"] for m in sent.messages] == ["http.response.start"]
    assert sent.status == 200


# -- requests in the process -------------------------------------------------------------


async def test_one_request_over_the_limit_is_refused_at_once_and_room_returns() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limit = ConcurrencyLimit(slow, max_requests=1)
    first = Sent()
    holding = asyncio.create_task(limit(http_scope(), receiving(), first))
    await asyncio.wait_for(entered.wait(), 5)

    refused = Sent()
    await asyncio.wait_for(limit(http_scope(), receiving(), refused), 5)  # not queued
    assert refused.status == 503
    assert refused.headers["retry-after"] == str(BUSY_RETRY_AFTER_S)
    assert "PIXELBUS_MAX_CONCURRENT_REQUESTS" in refused.json["detail"]

    release.set()
    await asyncio.wait_for(holding, 5)
    assert first.status == 200 and limit.active == 0
    again = Sent()
    await asyncio.wait_for(limit(http_scope(), receiving(), again), 5)
    assert again.status == 200


async def test_a_websocket_over_the_limit_is_closed_with_try_again_later() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def hold(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()

    limit = ConcurrencyLimit(hold, max_requests=1)
    holding = asyncio.create_task(limit(http_scope(), receiving(), Sent()))
    await asyncio.wait_for(entered.wait(), 5)
    closed = Sent()
    await limit({"type": "websocket", "path": "/api/x", "headers": []}, receiving(), closed)
    assert closed.messages == [{"type": "websocket.close", "code": 1013}]
    release.set()
    await holding


async def test_a_request_that_raises_gives_its_room_back() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    limit = ConcurrencyLimit(broken, max_requests=1)
    for _ in range(2):  # the second would be refused if the first kept its room
        with pytest.raises(RuntimeError):
            await limit(http_scope(), receiving(), Sent())
    assert limit.active == 0


async def test_lifespan_is_not_counted() -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            entered.set()
            await release.wait()
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})

    limit = ConcurrencyLimit(app, max_requests=1)
    lifespan = asyncio.create_task(limit({"type": "lifespan"}, receiving(), Sent()))
    await asyncio.wait_for(entered.wait(), 5)  # the lifespan runs in the app
    sent = Sent()
    await limit(http_scope(), receiving(), sent)
    assert sent.status == 204
    release.set()
    await lifespan
