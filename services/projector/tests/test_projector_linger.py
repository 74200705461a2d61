"""The projector lingers: a task's later events fold into the same KV write.

At light load a batch waits (up to the linger) until each of its tasks has its ending
event: a task created, started and completed in a row is written once; a task that does
not end within the linger is written when it is over.

Under load it lingers over the whole batch.

Counted by the state bucket's own stream: its last sequence is the number of writes the
projector made. 20 tasks' ``TaskCreated`` are in the stream when the projector starts; once
it lingers over them (a first batch of open tasks takes the rest as they arrive, however
the deliveries were split), their completions are published: each task costs one write.
Without a linger every task costs two.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from pixelbus.contracts.events import (
    AnyEvent,
    TaskCompleted,
    TaskCreated,
    TaskStarted,
    encode_event,
)
from pixelbus.contracts.subjects import STATE_BUCKET, task_subject
from pixelbus.contracts.task import TaskStatus
from pixelbus.projector.projector import Projector
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.pull import PullConsumer
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.testkit.waiting import eventually

TASKS = 20


def created(task_id: str) -> TaskCreated:
    return TaskCreated(
        event_id=f"{task_id}:created", task_id=task_id, occurred_at=datetime.now(UTC),
        workflow="probe", environment="face_swap", input_data={"wf_json": {}}, owner="acme",
    )  # fmt: skip


def completed(task_id: str) -> TaskCompleted:
    return TaskCompleted(
        event_id=f"{task_id}:completed", task_id=task_id, attempt=1,
        occurred_at=datetime.now(UTC) + timedelta(milliseconds=1), result={"ok": True},
    )  # fmt: skip


async def publish(js: JetStreamContext, events: list[AnyEvent]) -> None:
    await asyncio.gather(
        *(
            js.publish(
                task_subject("face_swap", "probe", e.kind, e.task_id),
                encode_event(e),
                headers={"Nats-Msg-Id": e.event_id},
            )
            for e in events
        )
    )


async def state_writes(js: JetStreamContext) -> int:
    return (await js.stream_info(f"KV_{STATE_BUCKET}")).state.last_seq


class ObservedProjector(Projector):
    """The projector under test, saying when it starts to linger (nothing else changed)."""

    def __init__(self, nc: Client, linger_s: float) -> None:
        super().__init__(nc, batch=512, linger_s=linger_s)
        self.lingering = asyncio.Event()

    async def _linger(self, consumer: PullConsumer, msgs: list[Msg]) -> list[Msg]:
        self.lingering.set()
        return await super()._linger(consumer, msgs)


async def project_created_then_completed(nc: Client, linger_s: float) -> tuple[int, int]:
    """The KV writes for 20 tasks whose completions are published once the projector
    lingers (without a linger: once the creates are written), and the writes made before."""
    js = nc.jetstream()
    # a lease far longer than the linger: a batch held for the linger is never redelivered
    await ensure(js, BusSettings(ack_wait_s=30))
    task_ids = [f"task_linger_{linger_s}_{i}" for i in range(TASKS)]
    await publish(js, [created(t) for t in task_ids])  # in the stream before it starts
    projector = ObservedProjector(nc, linger_s)
    runner = asyncio.create_task(projector.run())
    try:
        if linger_s:
            await asyncio.wait_for(projector.lingering.wait(), 10)
        else:

            async def folded() -> bool | None:
                return True if await state_writes(js) == TASKS else None

            await eventually(folded, timeout=10)
        before = await state_writes(js)  # creates written in batches too small to linger
        await publish(js, [completed(t) for t in task_ids])
        kv = await js.key_value(STATE_BUCKET)

        async def all_completed() -> bool | None:
            for task_id in task_ids:
                state, _ = await read_state(kv, task_id)
                if state is None or state.status != TaskStatus.COMPLETED:
                    return None
            return True

        await eventually(all_completed, timeout=10 + linger_s)
        return await state_writes(js), before
    finally:
        projector.stop()
        await asyncio.wait_for(runner, 10)


async def test_a_lingering_projector_writes_each_task_of_its_batch_once(nc: Client) -> None:
    writes, before = await project_created_then_completed(nc, linger_s=3.0)
    # However the creates were split into batches, the first batch lingers while its
    # tasks are open and takes the rest as they arrive: nothing is written before the
    # completions, then each task is written once.
    assert (before, writes) == (0, TASKS)


async def test_without_a_linger_each_event_is_a_write(nc: Client) -> None:
    writes, before = await project_created_then_completed(nc, linger_s=0.0)
    assert (before, writes) == (TASKS, 2 * TASKS)


async def test_at_light_load_a_task_that_ends_within_the_linger_is_written_once(
    nc: Client,
) -> None:
    js = nc.jetstream()
    await ensure(js, BusSettings())
    kv = await js.key_value(STATE_BUCKET)
    projector = Projector(nc, batch=512, linger_s=2.0)
    runner = asyncio.create_task(projector.run())
    try:
        quick = "task_light_quick"
        started = TaskStarted(
            event_id=f"{quick}:started:1", task_id=quick, attempt=1,
            occurred_at=datetime.now(UTC), worker="w1",
        )  # fmt: skip
        for event in (created(quick), started, completed(quick)):  # one by one
            await publish(js, [event])

        async def status(task_id: str) -> TaskStatus | None:
            state, _ = await read_state(kv, task_id)
            return None if state is None else state.status

        async def quick_completed() -> bool | None:
            return True if await status(quick) == TaskStatus.COMPLETED else None

        await eventually(quick_completed, timeout=10)
        assert await state_writes(js) == 1  # not one per event

        slow = "task_light_slow"  # created, nothing more: written once the linger is over
        await publish(js, [created(slow)])

        async def slow_pending() -> bool | None:
            return True if await status(slow) == TaskStatus.PENDING else None

        await eventually(slow_pending, timeout=10)
        assert await state_writes(js) == 2
    finally:
        projector.stop()
        await asyncio.wait_for(runner, 10)
