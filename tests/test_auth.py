"""Who may do what: the authorisation matrix over every endpoint, and shared rate limits.

Principals: the owner (tenant A, tasks:write + tasks:read), another tenant (B, the same
scopes), a read-only key of A, a consumer key, an admin, a revoked key and no key at all.
Every route of the app must be in the matrix, so a new endpoint cannot slip in unguarded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import uvicorn

from pixelbus.contracts import task_index
from pixelbus.contracts.subjects import QUOTAS_BUCKET
from pixelbus.gateway.app import create_app
from pixelbus.gateway.settings import GatewaySettings
from pixelbus.projector.projector import Projector
from pixelbus.runtime.keys import create_key, revoke_key
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.quotas import quota_key
from pixelbus.runtime.settings import BusSettings
from pixelbus.testkit.nats_server import NatsServer, free_port
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import Stack, running_stack, serve_gateway

pytestmark = pytest.mark.e2e

PROBE = {"workflow": "probe", "environment": "face_swap"}
SWAP = {"source_url": "https://example.com/a.jpg", "target_url": "https://example.com/b.jpg"}


@dataclass
class Keys:
    tokens: dict[str, str | None]

    def headers(self, who: str) -> dict[str, str]:
        token = self.tokens[who]
        return {"Authorization": f"Bearer {token}"} if token else {}


async def _make_keys(url: str) -> Keys:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure(js, BusSettings.from_env({"NATS_URL": url}))
        rw = ["tasks:write", "tasks:read"]
        tokens: dict[str, str | None] = {"nokey": None}
        _, tokens["owner"] = await create_key(js, name="a", owner="tenant-a", scopes=rw)
        _, tokens["other"] = await create_key(js, name="b", owner="tenant-b", scopes=rw)
        _, tokens["reader"] = await create_key(
            js, name="a-ro", owner="tenant-a", scopes=["tasks:read"]
        )
        _, tokens["consumer"] = await create_key(js, name="gpu", owner="ops", scopes=["consumer"])
        _, tokens["admin"] = await create_key(js, name="root", owner="ops", scopes=["admin"])
        revoked, tokens["revoked"] = await create_key(js, name="old", owner="tenant-a", scopes=rw)
        await revoke_key(js, revoked.key_id)
        return Keys(tokens)
    finally:
        await nc.close()


@pytest.fixture
async def secured(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[Stack, Keys]]:
    keys = await _make_keys(nats_server.url)
    async with running_stack(
        nats_server.url,
        tmp_path,
        PIXELBUS_AUTH="required",
        PIXELBUS_RATE_LIMIT_RPS="10000",
        PIXELBUS_MAX_ACTIVE_TASKS="1000",
    ) as stack:
        yield stack, keys


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {task} and {batch} are filled in
    scope: str | None  # None: open to everyone
    owned: bool = False  # another tenant's resource answers 404
    body: Any = None
    ok: frozenset[int] = frozenset({200})


ENDPOINTS = [
    Endpoint("POST", "/api/tasks/create", "tasks:write", body=PROBE, ok=frozenset({201})),
    Endpoint("GET", "/api/tasks/{task}", "tasks:read", owned=True),
    Endpoint("GET", "/api/tasks", "tasks:read"),
    Endpoint("GET", "/api/tasks/{task}/events", "tasks:read", owned=True),
    Endpoint("GET", "/api/tasks/{task}/webhooks", "tasks:read", owned=True),
    Endpoint("POST", "/api/tasks/{task}/cancel", "tasks:write", owned=True, ok=frozenset({202, 409})),
    Endpoint("POST", "/api/face-swap/process?wait=0", "tasks:write", body=SWAP, ok=frozenset({202})),
    Endpoint("POST", "/api/face-swap/batch", "tasks:write", body={"items": [SWAP]}, ok=frozenset({201})),
    Endpoint("GET", "/api/face-swap/batch/{batch}", "tasks:read", owned=True),
    Endpoint("GET", "/api/comm/task/fetch?wait=0", "consumer", ok=frozenset({204})),
    Endpoint("POST", "/api/comm/task/{task}/progress", "consumer", body={"lease_token": "x" * 20}, ok=frozenset({403})),
    Endpoint("POST", "/api/comm/task/{task}/complete", "consumer", body={"lease_token": "x" * 20}, ok=frozenset({403})),
    Endpoint("POST", "/api/comm/task/{task}/fail", "consumer", body={"lease_token": "x" * 20, "message": "m"}, ok=frozenset({403})),
    Endpoint("GET", "/metrics", "admin"),
    Endpoint("GET", "/api/health", None),
]  # fmt: skip
#: Routes that are not about tasks or tenants: API docs, and local storage's public files.
UNGUARDED = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/files"}

SCOPES = {
    "owner": {"tasks:write", "tasks:read"},
    "other": {"tasks:write", "tasks:read"},
    "reader": {"tasks:read"},
    "consumer": {"consumer"},
    "admin": {"tasks:write", "tasks:read", "consumer", "admin"},
}


def expected(who: str, endpoint: Endpoint) -> frozenset[int]:
    if endpoint.scope is None:
        return endpoint.ok
    if who in ("nokey", "revoked"):
        return frozenset({401})
    if endpoint.scope not in SCOPES[who]:
        return frozenset({403})
    if endpoint.owned and who == "other":
        return frozenset({404})
    return endpoint.ok


async def test_every_route_is_in_the_matrix(secured: tuple[Stack, Keys]) -> None:
    stack, _ = secured
    spec = (await stack.http.get("/openapi.json")).json()
    matrix = {
        e.path.split("?")[0].replace("{task}", "{task_id}").replace("{batch}", "{batch_id}")
        for e in ENDPOINTS
    }
    routes = set(spec["paths"]) - UNGUARDED
    assert routes <= matrix, f"routes without an authorisation row: {sorted(routes - matrix)}"


async def test_authorisation_matrix(secured: tuple[Stack, Keys]) -> None:
    stack, keys = secured
    created = await stack.http.post("/api/tasks/create", json=PROBE, headers=keys.headers("owner"))
    assert created.status_code == 201
    task_id = created.json()["taskId"]
    state = await wait_for_state(await stack.kv(), task_id, lambda s: s.is_final)
    assert state.status.value == "COMPLETED", state
    batch = await stack.http.post(
        "/api/face-swap/batch", json={"items": [SWAP]}, headers=keys.headers("owner")
    )
    batch_id = batch.json()["batch_id"]
    failures = []
    checked = 0
    for endpoint in ENDPOINTS:
        path = endpoint.path.format(task=task_id, batch=batch_id)
        for who in ("nokey", "revoked", "other", "reader", "consumer", "owner", "admin"):
            response = await stack.http.request(
                endpoint.method, path, json=endpoint.body, headers=keys.headers(who)
            )
            checked += 1
            want = expected(who, endpoint)
            if response.status_code not in want:
                failures.append(
                    f"{who} {endpoint.method} {path}: {response.status_code}, want {set(want)}: {response.text[:120]}"
                )
            elif response.status_code == 403 and endpoint.scope not in SCOPES.get(who, set()):
                assert "scope" in response.json()["detail"]
    assert not failures, "\n".join(failures)
    assert checked == len(ENDPOINTS) * 7
    print(f"authorisation matrix: {checked} checks over {len(ENDPOINTS)} endpoints x 7 principals")


async def test_another_tenant_cannot_see_or_cancel_and_ids_look_missing(
    secured: tuple[Stack, Keys],
) -> None:
    stack, keys = secured
    task_id = (
        await stack.http.post(
            "/api/tasks/create",
            json={
                "workflow": "txt2img",
                "environment": "comm",
                "params": {"input_data": {"wf_json": {"1": {}}}},
            },
            headers=keys.headers("owner"),
        )
    ).json()["taskId"]
    theirs = await stack.http.get(f"/api/tasks/{task_id}", headers=keys.headers("other"))
    missing = await stack.http.get("/api/tasks/task_doesnotexist", headers=keys.headers("other"))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(task_id, "X") == missing.json()["detail"].replace(
        "task_doesnotexist", "X"
    )
    cancel = await stack.http.post(f"/api/tasks/{task_id}/cancel", headers=keys.headers("other"))
    assert cancel.status_code == 404
    state = await stack.http.get(f"/api/tasks/{task_id}", headers=keys.headers("owner"))
    assert state.json()["status"] == "PENDING" and state.json()["cancel_requested"] is False
    # The same Idempotency-Key from two tenants makes two tasks.
    a = await stack.http.post(
        "/api/tasks/create", json=PROBE, headers={**keys.headers("owner"), "Idempotency-Key": "k1"}
    )
    b = await stack.http.post(
        "/api/tasks/create", json=PROBE, headers={**keys.headers("other"), "Idempotency-Key": "k1"}
    )
    assert a.status_code == b.status_code == 201 and a.json()["taskId"] != b.json()["taskId"]


async def test_a_client_cannot_set_server_fields(secured: tuple[Stack, Keys]) -> None:
    stack, keys = secured
    for field, value in (("owner", "tenant-b"), ("status", "COMPLETED"), ("result", {})):
        response = await stack.http.post(
            "/api/tasks/create", json={**PROBE, field: value}, headers=keys.headers("owner")
        )
        assert response.status_code == 422, field


async def test_active_task_quota_is_per_tenant_and_freed_when_tasks_end(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    keys = await _make_keys(nats_server.url)
    comm = {
        "workflow": "txt2img",
        "environment": "comm",
        "params": {"input_data": {"wf_json": {"1": {}}}},
    }
    async with running_stack(
        nats_server.url, tmp_path, PIXELBUS_AUTH="required", PIXELBUS_MAX_ACTIVE_TASKS="2"
    ) as stack:
        owner = keys.headers("owner")
        ids = [
            (await stack.http.post("/api/tasks/create", json=comm, headers=owner)).json()["taskId"]
            for _ in range(2)
        ]
        third = await stack.http.post("/api/tasks/create", json=comm, headers=owner)
        assert third.status_code == 429 and "at most 2 active tasks" in third.json()["detail"]
        other = await stack.http.post("/api/tasks/create", json=comm, headers=keys.headers("other"))
        assert other.status_code == 201  # another tenant has its own quota
        await stack.http.post(f"/api/tasks/{ids[0]}/cancel", headers=owner)
        await wait_for_state(await stack.kv(), ids[0], lambda s: s.is_final)

        async def accepted() -> bool | None:
            response = await stack.http.post("/api/tasks/create", json=comm, headers=owner)
            return True if response.status_code == 201 else None

        assert await eventually(accepted, timeout=10)


async def _serve(env: dict[str, str]) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(GatewaySettings.from_env({**env, "PIXELBUS_PORT": str(port)})),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)  # uvicorn exposes no event for "listening"
    return server, task, f"http://127.0.0.1:{port}"


async def test_rate_limit_holds_across_two_gateway_replicas(nats_server: NatsServer) -> None:
    keys = await _make_keys(nats_server.url)
    env = {
        "NATS_URL": nats_server.url,
        "PIXELBUS_AUTH": "required",
        "PIXELBUS_RATE_LIMIT_RPS": "20",
    }
    (one, one_task, one_url), (two, two_task, two_url) = await _serve(env), await _serve(env)
    statuses: list[tuple[float, int]] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def hit(base: str) -> None:
                response = await http.get(f"{base}/api/tasks/task_x", headers=keys.headers("owner"))
                statuses.append((time.time(), response.status_code))
                if response.status_code == 429:
                    assert int(response.headers["Retry-After"]) >= 1

            start = time.monotonic()
            while time.monotonic() - start < 3.0:  # 3 s of load, alternating replicas
                await asyncio.gather(*(hit(one_url if i % 2 else two_url) for i in range(10)))
            elapsed = time.monotonic() - start
    finally:
        one.should_exit = two.should_exit = True
        await asyncio.wait([one_task, two_task], timeout=10)
    allowed = sum(1 for _, status in statuses if status == 404)  # allowed through: not found
    refused = sum(1 for _, status in statuses if status == 429)
    assert allowed + refused == len(statuses) and refused > 0
    rate = allowed / elapsed
    print(
        f"rate limit 20/s over two replicas: {allowed} allowed, {refused} refused (429) "
        f"in {elapsed:.1f} s = {rate:.1f} allowed/s"
    )
    # The limiter counts per wall-clock second on the gateways; a request is counted at
    # some moment between its start and its end, so bound by the windows the run touched.
    first, last = statuses[0][0], statuses[-1][0]
    windows = int(last) - int(first - 0.5) + 1
    print(f"{windows} one-second windows touched: at most {20 * windows} may pass")
    assert allowed <= 20 * windows  # never more than the limit per window, in total
    assert allowed >= 20 * (windows - 2)  # and every whole window under load got its 20


async def test_security_headers_and_closed_cors(secured: tuple[Stack, Keys]) -> None:
    stack, keys = secured
    response = await stack.http.get("/api/tasks/task_x", headers=keys.headers("owner"))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    preflight = await stack.http.options(
        "/api/tasks/create",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


async def test_cors_opens_only_to_the_configured_origins(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_stack(
        nats_server.url, tmp_path, worker=False, PIXELBUS_CORS_ORIGINS="https://app.example"
    ) as stack:
        ok = await stack.http.options(
            "/api/tasks/create",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        other = await stack.http.options(
            "/api/tasks/create",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in other.headers


async def test_json_nested_past_any_sense_is_a_client_error(secured: tuple[Stack, Keys]) -> None:
    stack, keys = secured
    deep = b"[" * 100_000 + b"]" * 100_000
    for path, body in (
        (
            "/api/tasks/create",
            b'{"workflow":"w","environment":"comm","params":{"input_data":{"wf_json":'
            + deep
            + b"}}}",
        ),
        ("/api/face-swap/batch", b'{"items":' + deep + b"}"),
        ("/api/face-swap/process?wait=0", b'{"source_url":' + deep + b"}"),
    ):
        response = await stack.http.post(
            path,
            content=body,
            headers={**keys.headers("owner"), "Content-Type": "application/json"},
        )
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text[:200])


async def test_production_refuses_to_start_without_an_api_key(nats_server: NatsServer) -> None:
    from pixelbus.runtime.errors import SettingsError

    env = {
        "NATS_URL": nats_server.url,
        "APP_ENV": "production",
        "PIXELBUS_LEASE_SECRET": "x" * 40,
    }
    with pytest.raises(SettingsError, match="PIXELBUS_AUTH=open is refused"):
        GatewaySettings.from_env({**env, "PIXELBUS_AUTH": "open"})
    app = create_app(GatewaySettings.from_env(env))
    with pytest.raises(SettingsError, match="no active API key"):
        async with app.router.lifespan_context(app):
            pass
    await _make_keys(nats_server.url)  # now there are keys: it starts
    app = create_app(GatewaySettings.from_env(env))
    async with app.router.lifespan_context(app):
        assert app.state.gateway.keys.active_keys == 5


async def test_lists_page_each_tenants_index_across_chunks(
    secured: tuple[Stack, Keys], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/tasks reads the tenant's own index (chunks of 4 here), newest first."""
    monkeypatch.setattr(task_index, "CHUNK_SIZE", 4)
    stack, keys = secured
    mine: list[str] = []
    theirs: list[str] = []
    for n in range(11):
        who, ids = ("other", theirs) if n % 4 == 3 else ("owner", mine)
        created = await stack.http.post("/api/tasks/create", json=PROBE, headers=keys.headers(who))
        ids.append(created.json()["taskId"])
    kv = await stack.kv()
    for task_id in mine + theirs:
        await wait_for_state(kv, task_id, lambda s: s.is_final, 30)

    async def pages(who: str, **query: Any) -> list[list[str]]:
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **query, **({"before": cursor} if cursor else {})}
            answer = await stack.http.get("/api/tasks", params=params, headers=keys.headers(who))
            assert answer.status_code == 200, answer.text
            seen.append([t["taskId"] for t in answer.json()["tasks"]])
            cursor = answer.json()["next"]
            if cursor is None:
                return seen

    listed = await pages("owner")
    assert [i for page in listed for i in page] == mine[::-1]  # newest first, none twice
    assert all(len(page) == 3 for page in listed[:-1])
    assert [i for page in await pages("other") for i in page] == theirs[::-1]
    done = [i for page in await pages("owner", status="COMPLETED") for i in page]
    assert done == mine[::-1]
    assert [p for p in await pages("owner", status="FAILED") if p] == []
    bad = await stack.http.get("/api/tasks?before=2026|x", headers=keys.headers("owner"))
    assert bad.status_code == 422 and "before" in bad.text


async def test_a_key_revoked_while_the_gateway_runs_is_refused_at_once(
    secured: tuple[Stack, Keys],
) -> None:
    stack, _ = secured
    js = stack.nc.jetstream()
    key, token = await create_key(js, name="live", owner="tenant-c", scopes=["tasks:read"])
    headers = {"Authorization": f"Bearer {token}"}

    async def answered(status: int) -> bool | None:
        got = await stack.http.get("/api/tasks", headers=headers)
        return True if got.status_code == status else None

    await eventually(lambda: answered(200), timeout=10)  # the new key reaches the gateway
    await revoke_key(js, key.key_id)
    # the gateway follows the keys bucket with a watch: the next requests are refused
    await eventually(lambda: answered(401), timeout=2)
    assert (await stack.http.get("/api/tasks", headers=headers)).status_code == 401


async def test_the_active_quota_holds_across_two_gateways_and_two_projectors(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """Three slots shared by two gateway replicas; slots given back exactly once though two
    projectors fold the same events (the quota counter ends at zero, never below)."""
    keys = await _make_keys(nats_server.url)
    slow = {"workflow": "probe", "environment": "comm"}  # no comfy worker: they stay pending
    async with running_stack(
        nats_server.url, tmp_path, PIXELBUS_AUTH="required", PIXELBUS_MAX_ACTIVE_TASKS="3"
    ) as stack:
        second_projector = Projector(stack.nc, batch=3)
        projecting = asyncio.create_task(second_projector.run())
        owner = keys.headers("owner")
        try:
            async with (
                serve_gateway(stack.env) as other_url,
                httpx.AsyncClient(base_url=other_url, timeout=30) as other,
            ):
                replicas = [stack.http, other, stack.http]
                ids = []
                for replica in replicas:
                    answer = await replica.post("/api/tasks/create", json=slow, headers=owner)
                    assert answer.status_code == 201, answer.text
                    ids.append(answer.json()["taskId"])
                for replica in (stack.http, other):
                    refused = await replica.post("/api/tasks/create", json=slow, headers=owner)
                    assert refused.status_code == 429, refused.text
                for task_id in ids:
                    cancel = await other.post(f"/api/tasks/{task_id}/cancel", headers=owner)
                    assert cancel.status_code == 202
            kv = await stack.kv()
            for task_id in ids:
                await wait_for_state(kv, task_id, lambda s: s.is_final, 15)
            quotas = await stack.nc.jetstream().key_value(QUOTAS_BUCKET)

            async def released() -> int | None:
                value = int((await quotas.get(quota_key("tenant-a"))).value or b"0")
                return value if value == 0 else None

            assert await eventually(released, timeout=10) == 0
            again = [
                await stack.http.post("/api/tasks/create", json=slow, headers=owner)
                for _ in range(3)
            ]
            assert [a.status_code for a in again] == [201, 201, 201]  # all three back, once
            fourth = await stack.http.post("/api/tasks/create", json=slow, headers=owner)
            assert fourth.status_code == 429  # and not more: none was given back twice
        finally:
            second_projector.stop()
            await asyncio.wait_for(projecting, 10)
