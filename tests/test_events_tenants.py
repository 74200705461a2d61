"""With API keys on: each tenant lists and follows only its own tasks (SSE, WebSocket),
and its webhooks are signed with its own secret."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import nats
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from pixelbus.contracts.webhooks import InvalidSignature, verify
from pixelbus.runtime.keys import create_key
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings
from pixelbus.testkit.nats_server import NatsServer
from tests.stack import running_stack
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.e2e

GLOBAL = "whsec_" + base64.b64encode(b"g" * 32).decode()
TENANT_A = "whsec_" + base64.b64encode(b"a" * 32).decode()


async def make_tokens(url: str) -> tuple[str, str]:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure(js, BusSettings.from_env({"NATS_URL": url}))
        rw = ["tasks:write", "tasks:read"]
        _, a = await create_key(js, name="a", owner="tenant-a", scopes=rw)
        _, b = await create_key(js, name="b", owner="tenant-b", scopes=rw)
        return a, b
    finally:
        await nc.close()


async def test_tenants_see_only_their_own_tasks_and_get_their_own_signatures(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    token_a, token_b = await make_tokens(nats_server.url)
    a = {"Authorization": f"Bearer {token_a}"}
    b = {"Authorization": f"Bearer {token_b}"}
    async with (
        webhook_receiver() as receiver,
        running_stack(
            nats_server.url,
            tmp_path,
            PIXELBUS_AUTH="required",
            PIXELBUS_RATE_LIMIT_RPS="10000",
            PIXELBUS_MAX_ACTIVE_TASKS="1000",
            PIXELBUS_WEBHOOK_SECRET=GLOBAL,
            PIXELBUS_WEBHOOK_SECRETS=f"tenant-a={TENANT_A}",
            PIXELBUS_SSRF_ALLOW_NETWORKS="127.0.0.0/8",
        ) as stack,
    ):
        body = {"workflow": "probe", "environment": "face_swap", "webhook_url": receiver.url}
        task_a = (await stack.http.post("/api/tasks/create", json=body, headers=a)).json()
        task_b = (await stack.http.post("/api/tasks/create", json=body, headers=b)).json()
        [got_a, got_b] = await receiver.wait_for(2)

        listed_a = (await stack.http.get("/api/tasks", headers=a)).json()["tasks"]
        listed_b = (await stack.http.get("/api/tasks", headers=b)).json()["tasks"]
        assert [t["taskId"] for t in listed_a] == [task_a["taskId"]]
        assert [t["taskId"] for t in listed_b] == [task_b["taskId"]]
        assert (await stack.http.get("/api/tasks")).status_code == 401

        other = await stack.http.get(f"/api/tasks/{task_a['taskId']}/events", headers=b)
        assert other.status_code == 404
        own = await stack.http.get(f"/api/tasks/{task_a['taskId']}/events", headers=a)
        assert own.status_code == 200 and "event: end" in own.text

        ws_url = stack.base_url.replace("http", "ws", 1) + f"/api/tasks/{task_a['taskId']}/events"
        with pytest.raises(InvalidStatus) as refused:  # the handshake itself is refused
            async with websockets.connect(f"{ws_url}?token={token_b}"):
                pass
        assert refused.value.response.status_code == 403
        async with websockets.connect(f"{ws_url}?token={token_a}") as ws:
            messages = [json.loads(m) async for m in ws]
        assert messages[-1] == {"event": "end"}
        assert messages[-2]["data"]["status"] == "COMPLETED"

    by_task = {json.loads(r.body)["data"]["taskId"]: r for r in (got_a, got_b)}
    signed_a, signed_b = by_task[task_a["taskId"]], by_task[task_b["taskId"]]
    now = int(time.time())
    verify(TENANT_A, signed_a.headers, signed_a.body, now=now)
    verify(GLOBAL, signed_b.headers, signed_b.body, now=now)
    with pytest.raises(InvalidSignature):
        verify(GLOBAL, signed_a.headers, signed_a.body, now=now)
