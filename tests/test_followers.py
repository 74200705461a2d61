"""Live followers share one subscription per followed task, create no consumer, and cost
nothing while their task is idle."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from pixelbus.contracts.subjects import TASK_STREAM
from pixelbus.contracts.task import TaskStatus
from pixelbus.gateway.follow import TaskFeed, Update, follow_task
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import eventually, wait_for_state
from tests.stack import running_stack, start_worker

PROBE = {"workflow": "probe", "environment": "face_swap"}


async def test_followers_share_a_subscription_per_task_and_idle_for_free(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False) as stack:
        js = stack.nc.jetstream()
        ids = [
            (await stack.http.post("/api/tasks/create", json=PROBE)).json()["taskId"]
            for _ in range(5)
        ]
        consumers = (await js.stream_info(TASK_STREAM)).state.consumer_count
        followers_nc = await nats.connect(nats_server.url)
        feed = TaskFeed(followers_nc)
        seen: dict[int, list[Update]] = {i: [] for i in range(10)}

        async def follow(index: int) -> None:
            async for update in follow_task(followers_nc, feed, ids[index % 5]):
                seen[index].append(update)

        followers = [asyncio.create_task(follow(i)) for i in range(10)]
        try:
            await eventually(lambda: _none_unless(all(seen.values())), timeout=10)
            assert all(s[0].state.status is TaskStatus.PENDING for s in seen.values())
            assert feed.subscriptions == 5  # two followers each, one subscription per task
            assert (await js.stream_info(TASK_STREAM)).state.consumer_count == consumers

            # another task's whole life goes by: our followers read nothing
            sent = followers_nc.stats["out_msgs"]
            other = await stack.http.post(
                "/api/tasks/create", json={"workflow": "probe", "environment": "comm"}
            )
            await wait_for_state(await stack.kv(), other.json()["taskId"], lambda s: True, 10)
            await followers_nc.flush()
            assert followers_nc.stats["out_msgs"] == sent

            worker = await start_worker(stack.env, stack.nc)
            runner = asyncio.create_task(worker.run())
            try:
                await asyncio.wait_for(asyncio.gather(*followers), 30)
            finally:
                worker.stop()
                await asyncio.wait_for(runner, 10)
        finally:
            for follower in followers:
                follower.cancel()
            await followers_nc.close()
        for updates in seen.values():
            assert updates[-1].state.status is TaskStatus.COMPLETED
            assert [u.seq for u in updates] == sorted({u.seq for u in updates})
        assert feed.subscriptions == 0  # the last follower of each task unsubscribed


async def _none_unless(flag: bool) -> bool | None:
    return True if flag else None
