"""Queue positions are counted without creating a consumer, and shared across readers."""

from __future__ import annotations

from pathlib import Path

from nats.js.api import StreamConfig

from pixelbus.contracts.subjects import TASK_STREAM, pool_for_environment
from pixelbus.gateway.queue import QueueBoard
from pixelbus.runtime.direct import count_from
from pixelbus.runtime.state import read_state
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import wait_for_state
from tests.stack import running_stack

PROBE = {"workflow": "probe", "environment": "face_swap"}


async def test_count_from_is_counted_by_the_server(nats_server: NatsServer) -> None:
    import nats

    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="COUNTS", subjects=["c.>"], allow_direct=True))
        for i in range(5):
            await js.publish(f"c.a.{i}", b"a")  # seq 1, 3, 5, 7, 9
            await js.publish(f"c.b.{i}", b"b")  # seq 2, 4, 6, 8, 10
        assert await count_from(nc, "COUNTS", "c.a.*", 1) == 5
        assert await count_from(nc, "COUNTS", "c.a.*", 4) == 3
        assert await count_from(nc, "COUNTS", "c.b.*", 10) == 1
        assert await count_from(nc, "COUNTS", "c.a.*", 10) == 0
    finally:
        await nc.close()


async def test_positions_create_no_consumer_are_shared_and_move(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with running_stack(nats_server.url, tmp_path, worker=False, uploader=False) as stack:
        js = stack.nc.jetstream()
        ids = [
            (await stack.http.post("/api/tasks/create", json=PROBE)).json()["taskId"]
            for _ in range(3)
        ]
        kv = await stack.kv()
        states = [await wait_for_state(kv, task_id, lambda s: True, 10) for task_id in ids]
        consumers = (await js.stream_info(TASK_STREAM)).state.consumer_count

        for _ in range(3):  # readers over HTTP: GET after GET
            got = [(await stack.http.get(f"/api/tasks/{i}")).json() for i in ids]
            assert [g["queue_position"] for g in got] == [1, 2, 3]
        assert (await js.stream_info(TASK_STREAM)).state.consumer_count == consumers

        board = QueueBoard(stack.nc, js, interval_s=3600)
        assert [await board.position(s) for s in states] == [1, 2, 3]
        first_round = board.requests
        assert first_round <= 3 + 3 * 3  # one sample, then one lookup and two counts per task
        assert [await board.position(s) for s in states] == [1, 2, 3]
        assert board.requests == first_round  # known tasks, fresh sample: no request at all

        # the pool hands out its first task: positions move at the next sample
        pool = pool_for_environment("face_swap")
        sub = await js.pull_subscribe_bind(durable=pool.durable, stream=TASK_STREAM)
        [msg] = await sub.fetch(1, timeout=5)
        await msg.ack()
        moving = QueueBoard(stack.nc, js, interval_s=0)
        state, _ = await read_state(kv, ids[0])
        assert state is not None
        assert [await moving.position(s) for s in [state, *states[1:]]] == [0, 1, 2]
        assert (await js.stream_info(TASK_STREAM)).state.consumer_count == consumers
