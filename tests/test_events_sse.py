"""Live progress over SSE and WebSocket: a face swap seen PENDING (with its place in the
queue) → PROCESSING (with progress) → COMPLETED, and a resume after a forced
disconnect that misses nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from pixelbus.contracts.subjects import TASK_STREAM
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import eventually
from tests.conftest import data_uri
from tests.events_client import SseEvent, sse_events
from tests.stack import running_stack, start_worker
from tests.test_e2e import face_swap_body

pytestmark = pytest.mark.e2e


async def collect(agen: Any, until: Any, timeout: float = 60) -> list[SseEvent]:
    seen: list[SseEvent] = []

    async def run() -> None:
        async for event in agen:
            seen.append(event)
            if until(event):
                return

    await asyncio.wait_for(run(), timeout)
    return seen


async def test_sse_follows_a_face_swap_and_resumes_without_a_gap(
    nats_server: NatsServer, tmp_path: Path, astronaut: Path, grace_hopper: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        body = face_swap_body(
            data_uri(astronaut, "image/png"),
            data_uri(grace_hopper, "image/jpeg"),
            resolution="128x150",
        )
        ahead = await stack.http.post("/api/tasks/create", json=body)
        assert ahead.status_code == 201
        task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
        path = f"/api/tasks/{task_id}/events"

        # First connection: the current state (PENDING, second in the queue) ...
        first = sse_events(stack.http, path)
        [pending] = await collect(first, lambda e: True)
        assert pending.event == "state" and pending.data["status"] == "PENDING"
        assert pending.data["queue_position"] == 2
        # ... then the worker starts, and the client drops the connection mid-task.
        worker = await start_worker(stack.env, stack.nc)
        runner = asyncio.create_task(worker.run())
        try:
            more = await collect(first, lambda e: e.data["status"] == "PROCESSING")
            await first.aclose()  # forced disconnect
            seen = [pending, *more]
            resumed = await collect(
                sse_events(stack.http, path, last_event_id=seen[-1].id),
                lambda e: e.event == "end",
            )
            assert resumed[-1].event == "end"
            seen += resumed[:-1]
        finally:
            worker.stop()
            await asyncio.wait_for(runner, 10)

        statuses = [e.data["status"] for e in seen]
        assert statuses[0] == "PENDING" and statuses[-1] == "COMPLETED", statuses
        assert "PROCESSING" in statuses
        assert any(
            e.data["status"] == "PROCESSING" and (e.data["progress"] or {}).get("fraction")
            for e in seen
        ), "no progress seen"
        assert seen[-1].data["result"]["outputs"][0]["content_type"] == "image/png"
        # Nothing missed: a full replay (Last-Event-ID 0) holds exactly the ids seen after
        # the first state, each once, in order.
        ids = [e.id for e in seen if e.id is not None]
        replay = await collect(
            sse_events(stack.http, path, last_event_id=0), lambda e: e.event == "end"
        )
        replay_ids = [e.id for e in replay if e.event == "state"]

        # Every stream's short-lived consumer is gone once its client is.
        js = stack.nc.jetstream()

        async def only_durables() -> bool | None:
            infos = await js.consumers_info(TASK_STREAM)
            return True if all(c.config.durable_name for c in infos) else None

        await eventually(only_durables, timeout=10)
        assert replay[0].data["status"] == "PENDING"
        after_first = [i for i in replay_ids if i > ids[0]]
        deduped = list(dict.fromkeys(ids))  # a queue-position refresh repeats its id
        assert deduped[1:] == after_first, (ids, replay_ids)


async def test_websocket_gives_the_same_states_and_resumes(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        created = await stack.http.post(
            "/api/tasks/create", json={"workflow": "probe", "environment": "face_swap"}
        )
        task_id = created.json()["taskId"]
        url = stack.base_url.replace("http", "ws", 1) + f"/api/tasks/{task_id}/events"
        async with asyncio.timeout(30), websockets.connect(url) as ws:
            first = json.loads(await ws.recv())
            assert first["event"] == "state" and first["data"]["status"] == "PENDING"
            assert first["data"]["queue_position"] == 1
            worker = await start_worker(stack.env, stack.nc)
            runner = asyncio.create_task(worker.run())
            messages = [first] + [json.loads(raw) async for raw in ws]
        worker.stop()
        await asyncio.wait_for(runner, 10)
        assert messages[-1] == {"event": "end"}
        states = messages[:-1]
        assert states[-1]["data"]["status"] == "COMPLETED"
        assert "PROCESSING" in [m["data"]["status"] for m in states]
        ids = list(dict.fromkeys(m["id"] for m in states))
        assert ids == sorted(ids)
        # Resume after the first state: every later one (same ids), then the end.
        async with (
            asyncio.timeout(30),
            websockets.connect(f"{url}?last_event_id={first['id']}") as ws,
        ):
            resumed = [json.loads(raw) async for raw in ws]
        assert resumed[-1] == {"event": "end"}
        assert [m["id"] for m in resumed[:-1]] == ids[1:]
        assert resumed[-2]["data"]["status"] == "COMPLETED"


async def test_events_of_an_unknown_task_are_404(nats_server: NatsServer, tmp_path: Path) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False, uploader=False) as stack:
        response = await stack.http.get("/api/tasks/task_nope/events")
        assert response.status_code == 404


async def test_get_shows_the_queue_position_of_pending_tasks(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False, uploader=False) as stack:
        ids = [
            (
                await stack.http.post(
                    "/api/tasks/create", json={"workflow": "probe", "environment": "face_swap"}
                )
            ).json()["taskId"]
            for _ in range(3)
        ]
        comfy = await stack.http.post(
            "/api/tasks/create", json={"workflow": "probe", "environment": "comm"}
        )
        positions = [
            (await stack.http.get(f"/api/tasks/{task_id}")).json()["queue_position"]
            for task_id in [*ids, comfy.json()["taskId"]]
        ]
        cancelled = await stack.http.post(f"/api/tasks/{ids[0]}/cancel")
        after = (await stack.http.get(f"/api/tasks/{ids[0]}")).json()
    assert positions == [1, 2, 3, 1]  # each pool its own queue
    assert cancelled.status_code == 202 and after["queue_position"] is None
