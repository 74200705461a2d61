"""The projection: rebuild equals live; two projectors equal one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client

from pixelbus.contracts.events import TaskCreated, TaskProgress, TaskStarted
from pixelbus.contracts.subjects import STATE_BUCKET
from pixelbus.gateway.projector import Projector, StateCache, fold_into_kv
from pixelbus.gateway.rebuild import rebuild
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import wait_for_state
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e


async def bucket_contents(stack: Stack, bucket: str) -> dict[str, bytes]:
    kv = await stack.nc.jetstream().key_value(bucket)
    contents = {}
    for key in await kv.keys():
        entry = await kv.get(key)
        assert entry.value is not None
        contents[key] = entry.value
    return contents


async def run_mixed_tasks(stack: Stack, count: int) -> list[str]:
    ids = []
    for i in range(count):
        body = {"workflow": "probe", "environment": "face_swap"}
        if i % 5 == 3:  # a queued comm task, cancelled
            body = {
                "workflow": "txt2img",
                "environment": "comm",
                "params": {"input_data": {"wf_json": {"1": {}}}},
            }
        task_id = (await stack.http.post("/api/tasks/create", json=body)).json()["taskId"]
        if i % 5 == 3:
            await stack.http.post(f"/api/tasks/{task_id}/cancel")
        ids.append(task_id)
    kv = await stack.kv()
    for task_id in ids:
        await wait_for_state(kv, task_id, lambda s: s.is_final, 30)
    return ids


async def wait_projected(stack: Stack) -> None:
    """Until the projector consumer has nothing pending or unacked."""
    js = stack.nc.jetstream()
    for _ in range(200):
        info = await js.consumer_info("PIXELBUS_TASKS", "projector")
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("projector did not catch up")


async def test_rebuild_gives_a_bucket_identical_to_the_live_one(stack: Stack) -> None:
    ids = await run_mixed_tasks(stack, 15)
    await wait_projected(stack)
    written = await rebuild(stack.nc.jetstream(), "REBUILT")
    assert written == len(ids)
    live = await bucket_contents(stack, STATE_BUCKET)
    rebuilt = await bucket_contents(stack, "REBUILT")
    assert set(live) == set(rebuilt) == set(ids)
    for key in live:
        assert live[key] == rebuilt[key], key


async def test_two_projectors_give_the_same_state_as_one(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path) as stack:
        second = Projector(stack.nc, batch=7)
        runner = asyncio.create_task(second.run())
        try:
            ids = await run_mixed_tasks(stack, 25)
            await wait_projected(stack)
        finally:
            second.stop()
            await asyncio.wait_for(runner, 5)
        assert second.projected > 0, "the second projector took no share of the work"
        await rebuild(stack.nc.jetstream(), "ONE_PROJECTOR")
        live = await bucket_contents(stack, STATE_BUCKET)
        single = await bucket_contents(stack, "ONE_PROJECTOR")
        assert set(live) == set(single) == set(ids)
        assert live == single


async def test_a_stale_cached_state_is_re_read_not_written_over(nc: Client) -> None:
    """Projector A caches its write; B writes after it; A's next fold must not lose B's."""
    js = nc.jetstream()
    await ensure(js, BusSettings.from_env({}))
    kv = await js.key_value(STATE_BUCKET)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    created = TaskCreated(
        event_id="t1:created", task_id="t1", occurred_at=now, workflow="probe",
        environment="face_swap", input_data={},
    )  # fmt: skip
    started = TaskStarted(
        event_id="t1:started:1", task_id="t1", occurred_at=now + timedelta(seconds=1),
        attempt=1, worker="w",
    )  # fmt: skip
    progress = TaskProgress(
        event_id="t1:progress:1:1", task_id="t1", occurred_at=now + timedelta(seconds=2),
        attempt=1, fraction=0.5,
    )  # fmt: skip
    cache_a = StateCache()
    await fold_into_kv(kv, "t1", [created], cache_a)
    await fold_into_kv(kv, "t1", [started], StateCache())  # replica B, its own cache
    await fold_into_kv(kv, "t1", [progress], cache_a)  # A's cache is one revision behind
    state, _ = await read_state(kv, "t1")
    assert state is not None and state.worker == "w" and state.progress is not None
    assert state.progress.fraction == 0.5
