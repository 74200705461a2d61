"""The projection (the projector service, run in-process by the stack): rebuild equals
live and plans no webhook; two projectors equal one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pixelbus.contracts.subjects import STATE_BUCKET, WEBHOOK_STREAM
from pixelbus.projector.projector import Projector
from pixelbus.projector.rebuild import rebuild
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import wait_for_state
from tests.stack import Stack, running_stack
from tests.webhook_receiver import webhook_receiver

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


async def test_rebuild_gives_a_bucket_identical_to_the_live_one_and_plans_no_webhook(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with (
        webhook_receiver() as receiver,
        running_stack(
            nats_server.url, tmp_path, PIXELBUS_SSRF_ALLOW_NETWORKS="127.0.0.0/8"
        ) as stack,
    ):
        hooked = {"workflow": "probe", "environment": "face_swap", "webhook_url": receiver.url}
        created = await stack.http.post("/api/tasks/create", json=hooked)
        assert created.status_code == 201, created.text
        ids = [created.json()["taskId"], *await run_mixed_tasks(stack, 15)]
        await receiver.wait_for(1)
        await wait_projected(stack)
        js = stack.nc.jetstream()
        queued = (await js.stream_info(WEBHOOK_STREAM)).state.last_seq
        assert queued >= 1  # the live projector planned the webhook
        written = await rebuild(stack.nc, "REBUILT")
        assert (await js.stream_info(WEBHOOK_STREAM)).state.last_seq == queued  # rebuild: none
        assert written == len(ids)
        live = await bucket_contents(stack, STATE_BUCKET)
        rebuilt = await bucket_contents(stack, "REBUILT")
    assert set(live) == set(rebuilt) == set(ids)
    for key in live:
        assert live[key] == rebuilt[key], key
    assert len(receiver.received) == 1


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
        await rebuild(stack.nc, "ONE_PROJECTOR")
        live = await bucket_contents(stack, STATE_BUCKET)
        single = await bucket_contents(stack, "ONE_PROJECTOR")
        assert set(live) == set(single) == set(ids)
        assert live == single


async def test_a_replacing_rebuild_beside_a_live_projector_loses_nothing(stack: Stack) -> None:
    """``rebuild --replace`` while tasks flow and the projector folds: both write with
    compare-and-swap, so the bucket ends exactly as a rebuild from nothing."""
    first = await run_mixed_tasks(stack, 10)
    later = asyncio.create_task(run_mixed_tasks(stack, 10))
    assert await rebuild(stack.nc, STATE_BUCKET, replace=True) >= len(first)
    ids = [*first, *await later]
    await wait_projected(stack)
    await rebuild(stack.nc, "FROM_NOTHING")
    live = await bucket_contents(stack, STATE_BUCKET)
    assert set(live) == set(ids)
    assert live == await bucket_contents(stack, "FROM_NOTHING")
