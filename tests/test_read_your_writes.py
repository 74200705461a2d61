"""One writer per view, read-your-writes kept: the gateway never writes the task state,
yet a task created on one gateway replica is found at once on another, whether the
projector keeps up (it runs normally in the first test) or is not running at all (the
answer then comes from the task's ``TaskCreated`` in the stream)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js.errors import KeyNotFoundError

from pixelbus.contracts.validation import TaskSpec
from pixelbus.gateway.tasks import TaskConflict, TaskService
from pixelbus.projector.service import ProjectorService
from pixelbus.projector.settings import ProjectorSettings
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import Stack, running_stack, serve_gateway

pytestmark = pytest.mark.e2e

PROBE = {"workflow": "probe", "environment": "face_swap"}
ROUNDS = 120


async def test_a_get_right_after_a_create_on_another_replica_never_answers_404(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        running_stack(nats_server.url, tmp_path) as stack,
        serve_gateway(stack.env) as other_url,
        httpx.AsyncClient(base_url=other_url, timeout=30) as other,
    ):
        replicas = (stack.http, other)
        seen: dict[str, str] = {}

        async def create_then_read(index: int) -> None:
            writer, reader = replicas[index % 2], replicas[(index + 1) % 2]
            created = await writer.post("/api/tasks/create", json=PROBE)
            assert created.status_code == 201, created.text
            task_id = created.json()["taskId"]
            got = await reader.get(f"/api/tasks/{task_id}")
            assert got.status_code == 200, (index, got.text)
            assert got.json()["taskId"] == task_id
            seen[task_id] = got.json()["status"]

        for start in range(0, ROUNDS, 8):  # a few at a time, both directions
            await asyncio.gather(*(create_then_read(i) for i in range(start, start + 8)))
        assert len(seen) == ROUNDS
        assert set(seen.values()) <= {"PENDING", "PROCESSING", "COMPLETED"}
        # an explicit taskId is taken as soon as one replica answered 201
        mine = {**PROBE, "taskId": "task_taken_once"}
        assert (await stack.http.post("/api/tasks/create", json=mine)).status_code == 201
        again = await other.post("/api/tasks/create", json=mine)
        assert again.status_code == 409, again.text
        # racing creates of one id, on both replicas and in two environments: the stream
        # stores one TaskCreated (checked as it stores, no read first), the rest are 409
        racing = [
            (replica, {**PROBE, "taskId": "task_raced", "environment": env})
            for replica in (stack.http, other)
            for env in ("face_swap", "comm", "face_swap", "comm")
        ]
        answers = await asyncio.gather(
            *(replica.post("/api/tasks/create", json=body) for replica, body in racing)
        )
        assert sorted(a.status_code for a in answers) == [201] + [409] * 7, answers
        created_events = await stack.nc.jetstream().stream_info(
            "PIXELBUS_TASKS", subjects_filter="pixelbus.tasks.*.*.created.task_raced"
        )
        assert created_events.state.subjects == {
            next(
                f"pixelbus.tasks.{body['environment']}.probe.created.task_raced"
                for (_, body), a in zip(racing, answers, strict=True)
                if a.status_code == 201
            ): 1
        }
        # and the projector, running normally, finishes every one of them
        kv = await stack.kv()
        for task_id in seen:
            state = await wait_for_state(kv, task_id, lambda s: s.is_final, 30)
            assert state.status.value == "COMPLETED"


async def test_without_a_projector_reads_come_from_the_stream(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        running_stack(
            nats_server.url, tmp_path, worker=False, uploader=False, projector=False
        ) as stack,
        serve_gateway(stack.env) as other_url,
        httpx.AsyncClient(base_url=other_url, timeout=30) as other,
    ):
        created = await stack.http.post("/api/tasks/create", json=PROBE)
        assert created.status_code == 201, created.text
        answer = created.json()
        task_id = answer["taskId"]
        kv = await stack.kv()
        with pytest.raises(KeyNotFoundError):
            await kv.get(task_id)  # nobody wrote the state: the gateway never does
        got = await other.get(f"/api/tasks/{task_id}")
        assert got.status_code == 200, got.text
        assert got.json()["status"] == "PENDING"
        assert without(got.json(), "queue_position") == without(answer, "queue_position")
        assert (await other.get("/api/tasks/task_never_created")).status_code == 404
        health = (await other.get("/api/health")).json()
        assert health["projector"]["ok"] is False and health["projector"]["pulling"] is False
        assert health["projector"]["pending"] >= 1 and health["status"] == "degraded"
        # cancel reads through the same path: the task is found and cancelled
        cancelled = await other.post(f"/api/tasks/{task_id}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        with pytest.raises(KeyNotFoundError):
            await kv.get(task_id)
        # a projector comes: it folds what waited for it, and reads move to the bucket
        projection = ProjectorService(stack.nc, ProjectorSettings.from_env(stack.env))
        runner = asyncio.create_task(projection.run())
        try:
            state = await wait_for_state(kv, task_id, lambda s: s.is_final, 15)
            assert state.status.value == "CANCELLED"
            assert (await stack.http.get(f"/api/tasks/{task_id}")).json()["status"] == "CANCELLED"

            async def projector_ok() -> dict[str, Any] | None:
                body = (await other.get("/api/health")).json()
                return body if body["projector"]["ok"] and body["projector"]["pulling"] else None

            health = await eventually(projector_ok, timeout=15)
            assert health["projector"]["pending"] == 0 and health["status"] == "ok"
        finally:
            projection.stop()
            await asyncio.wait_for(runner, 10)


def without(view: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in view.items() if k != key}


async def test_a_create_retried_after_a_lost_ack_is_still_the_callers(stack: Stack) -> None:
    """The publish of a caller-chosen id is refused when the id is taken; a refusal caused
    by the very same event (stored, its ack lost, published again) is not a conflict."""
    tasks = TaskService(stack.nc, stack.nc.jetstream(), max_input_image_bytes=1 << 20)
    await tasks.open()
    spec = TaskSpec("task_lost_ack", "probe", "face_swap", {})
    state, is_new = await tasks.create(spec)
    assert is_new and state.task_id == "task_lost_ack"
    stored = await tasks.created_event("task_lost_ack")
    assert stored is not None
    await tasks._publish_first(stored)  # the same event again: ours, no conflict
    with pytest.raises(TaskConflict):
        await tasks.create(spec)  # another request for the id: a new event, refused
    assert (await stack.nc.jetstream().stream_info("PIXELBUS_TASKS")).state.messages >= 1
    assert await tasks.created_event("task_lost_ack") == stored
