"""The hot routes (``gateway.hot``) answer exactly as FastAPI would, and only their plain form.

Two gateways on one stack: one as shipped, one without ``HotRoutes``; each with a counter
as its innermost layer, which sees a request only when FastAPI is about to route it. The
same requests go to both (refusals, a create, idempotent replays, reads of one task, other
tenants) and every answer must match in status, body and headers, while the shipped
gateway's FastAPI never sees the hot requests and still sees what the hot layer hands on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from pixelbus.gateway.app import create_app
from pixelbus.gateway.hot import HotRoutes
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.runtime.keys import create_key
from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import Stack, running_stack, serve_gateway
from tests.test_auth import Keys, _make_keys

pytestmark = pytest.mark.e2e

PROBE = {"workflow": "probe", "environment": "face_swap"}
#: what differs between two answers for reasons other than the route's logic
_VOLATILE = {"date", "server", "content-length"}


class SeenByFastAPI:
    """Innermost layer: records each request that FastAPI's routing is about to handle."""

    def __init__(self, app: ASGIApp, seen: list[str]) -> None:
        self.app = app
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query = scope["query_string"].decode()
            self.seen.append(f"{scope['method']} {scope['path']}" + (f"?{query}" if query else ""))
        await self.app(scope, receive, send)


@dataclass
class Pair:
    hot: httpx.AsyncClient
    plain: httpx.AsyncClient
    hot_seen: list[str]
    plain_seen: list[str]

    async def both(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, ...]:
        return (
            await self.hot.request(method, path, **kwargs),
            await self.plain.request(method, path, **kwargs),
        )


def _gateway_app(env: dict[str, str], port: int, *, hot: bool, seen: list[str]) -> Any:
    app = create_app(GatewaySettings.from_env({**env, "PIXELBUS_PORT": str(port)}))
    if not hot:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not HotRoutes]
    app.user_middleware.append(Middleware(SeenByFastAPI, seen=seen))
    return app


@pytest.fixture
async def pair(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[Pair, Keys, Stack]]:
    keys = await _make_keys(nats_server.url)
    async with running_stack(
        nats_server.url,
        tmp_path,
        PIXELBUS_AUTH="required",
        PIXELBUS_RATE_LIMIT_RPS="10000",
        PIXELBUS_MAX_ACTIVE_TASKS="1000",
        PIXELBUS_MAX_BODY_BYTES="4096",
    ) as stack:
        hot_seen: list[str] = []
        plain_seen: list[str] = []
        hot_port, plain_port = free_port(), free_port()
        hot_app = _gateway_app(stack.env, hot_port, hot=True, seen=hot_seen)
        plain_app = _gateway_app(stack.env, plain_port, hot=False, seen=plain_seen)
        async with (
            serve_gateway(stack.env, hot_port, app=hot_app) as hot_url,
            serve_gateway(stack.env, plain_port, app=plain_app) as plain_url,
            httpx.AsyncClient(base_url=hot_url, timeout=30) as hot,
            httpx.AsyncClient(base_url=plain_url, timeout=30) as plain,
        ):
            yield Pair(hot, plain, hot_seen, plain_seen), keys, stack


def assert_same(hot: httpx.Response, plain: httpx.Response, *, same_body: bool = True) -> None:
    assert hot.status_code == plain.status_code, (hot.text, plain.text)
    assert {k: v for k, v in hot.headers.items() if k not in _VOLATILE} == {
        k: v for k, v in plain.headers.items() if k not in _VOLATILE
    }
    if same_body:
        assert hot.content == plain.content
        assert hot.headers["content-length"] == plain.headers["content-length"]


async def test_hot_routes_answer_as_fastapi_does(pair: tuple[Pair, Keys, Stack]) -> None:
    gateways, keys, stack = pair
    owner, other, reader = keys.headers("owner"), keys.headers("other"), keys.headers("reader")
    refusals = [
        ("POST", "/api/tasks/create", {"json": PROBE}),  # no key: 401
        ("POST", "/api/tasks/create", {"json": PROBE, "headers": keys.headers("revoked")}),
        ("POST", "/api/tasks/create", {"json": PROBE, "headers": reader}),  # 403
        ("POST", "/api/tasks/create", {"json": {"workflow": 1}, "headers": owner}),  # 422
        ("POST", "/api/tasks/create", {"content": b"{not json", "headers": owner}),  # 400
        ("POST", "/api/tasks/create", {"content": b"[" * 5000, "headers": owner}),  # 413
        ("GET", "/api/tasks/task_nope", {"headers": owner}),  # 404
        ("GET", "/api/tasks/t%C3%A9st", {"headers": owner}),  # 404: not a valid id
        ("GET", "/api/tasks/task_nope", {"headers": keys.headers("nokey")}),  # 401
    ]
    for method, path, kwargs in refusals:
        hot, plain = await gateways.both(method, path, **kwargs)
        assert hot.status_code in (400, 401, 403, 404, 413, 422), hot.text
        assert_same(hot, plain)
    assert gateways.hot_seen == [], "the hot layer handed a plain request on to FastAPI"
    assert len(gateways.plain_seen) == len(refusals) - 1  # the 413 is refused before both

    hot, plain = await gateways.both("POST", "/api/tasks/create", json=PROBE, headers=owner)
    assert (hot.status_code, plain.status_code) == (201, 201)
    assert_same(hot, plain, same_body=False)
    assert hot.json().keys() == plain.json().keys()
    task_id = hot.json()["taskId"]

    keyed = {**owner, "Idempotency-Key": "same-request"}
    first, replay = await gateways.both("POST", "/api/tasks/create", json=PROBE, headers=keyed)
    assert (first.status_code, replay.status_code) == (201, 200)
    assert first.json()["taskId"] == replay.json()["taskId"]

    await wait_for_state(await stack.kv(), task_id, lambda state: state.is_final)
    for headers in (owner, other, keys.headers("admin")):
        hot, plain = await gateways.both("GET", f"/api/tasks/{task_id}", headers=headers)
        assert hot.status_code == (404 if headers is other else 200)
        assert_same(hot, plain)
    assert gateways.hot_seen == []

    # Not the plain form: handed on to FastAPI, whose answer is the one given.
    too_long = {**owner, "Idempotency-Key": "k" * 201}
    handed_on = [
        ("POST", "/api/tasks/create", {"json": PROBE, "headers": too_long}),  # 422
        ("GET", f"/api/tasks/{task_id}?include=input", {"headers": owner}),
        ("GET", f"/api/tasks/{task_id}?include=everything", {"headers": owner}),  # 422
        ("GET", f"/api/tasks/{task_id}/webhooks", {"headers": owner}),
    ]
    for method, path, kwargs in handed_on:
        hot, plain = await gateways.both(method, path, **kwargs)
        assert_same(hot, plain)
    assert len(gateways.hot_seen) == len(handed_on)


async def test_rate_limit_and_bus_errors_use_the_apps_handlers(
    pair: tuple[Pair, Keys, Stack], nats_server: NatsServer
) -> None:
    gateways, _, _ = pair
    nc = await nats.connect(nats_server.url)
    try:
        _, token = await create_key(
            nc.jetstream(), name="slow", owner="tenant-s", scopes=["tasks:write"], rate_per_s=0.01
        )
    finally:
        await nc.close()
    slow = {"Authorization": f"Bearer {token}"}
    await wait_for_key(gateways, slow)
    for _ in range(5):  # one request per second: the second of a window is refused
        hot = await gateways.hot.post("/api/tasks/create", json=PROBE, headers=slow)
        if hot.status_code != 429:
            continue
        plain = await gateways.plain.post("/api/tasks/create", json=PROBE, headers=slow)
        if plain.status_code == 429:  # (else the window turned between the two)
            break
    assert (hot.status_code, plain.status_code) == (429, 429), hot.text
    assert hot.headers["retry-after"] == "1"
    assert_same(hot, plain)
    assert gateways.hot_seen == []


async def wait_for_key(gateways: Pair, headers: dict[str, str]) -> None:
    """Until both gateways know the key (a KV watch away): a read it may not do is 403."""

    async def known() -> bool | None:
        hot, plain = await gateways.both("GET", "/api/tasks/task_nope", headers=headers)
        return True if (hot.status_code, plain.status_code) == (403, 403) else None

    await eventually(known, timeout=10)
