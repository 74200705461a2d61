"""Under load the projector lingers: a task's later events fold into the same KV write.

Counted by the state bucket's own stream: its last sequence is the number of writes the
projector made. 20 tasks' ``TaskCreated`` are delivered together (a batch of 20, at least
``LINGER_FROM``); while the projector holds them unacked (it lingers), their completions
are published; with a linger each task costs one write, without one it costs two.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from pixelbus.contracts.events import AnyEvent, TaskCompleted, TaskCreated, encode_event
from pixelbus.contracts.subjects import PROJECTOR_CONSUMER, STATE_BUCKET, TASK_STREAM, task_subject
from pixelbus.contracts.task import TaskStatus
from pixelbus.projector.projector import LINGER_FROM, Projector
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.state import read_state
from pixelbus.testkit.waiting import eventually

TASKS = 20
assert TASKS >= LINGER_FROM


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


async def project_created_then_completed(nc: Client, linger_s: float) -> int:
    """The KV writes of 20 tasks whose completions arrive while their creates are held."""
    js = nc.jetstream()
    await ensure(js, BusSettings())
    task_ids = [f"task_linger_{linger_s}_{i}" for i in range(TASKS)]
    await publish(js, [created(t) for t in task_ids])  # in the stream before it starts
    projector = Projector(nc, batch=512, linger_s=linger_s)
    runner = asyncio.create_task(projector.run())
    try:
        if linger_s:  # the batch of creates is delivered and held (the projector lingers)

            async def holding() -> bool | None:
                info = await js.consumer_info(TASK_STREAM, PROJECTOR_CONSUMER)
                return True if info.num_ack_pending == TASKS else None

            await eventually(holding, timeout=linger_s / 2)
        else:  # the creates are folded and acked first

            async def folded() -> bool | None:
                return True if await state_writes(js) == TASKS else None

            await eventually(folded, timeout=10)
        await publish(js, [completed(t) for t in task_ids])
        kv = await js.key_value(STATE_BUCKET)

        async def all_completed() -> bool | None:
            for task_id in task_ids:
                state, _ = await read_state(kv, task_id)
                if state is None or state.status != TaskStatus.COMPLETED:
                    return None
            return True

        await eventually(all_completed, timeout=10 + linger_s)
        return await state_writes(js)
    finally:
        projector.stop()
        await asyncio.wait_for(runner, 10)


@pytest.mark.parametrize(("linger_s", "writes"), [(3.0, TASKS), (0.0, 2 * TASKS)])
async def test_a_lingering_projector_writes_each_task_once(
    nc: Client, linger_s: float, writes: int
) -> None:
    assert await project_created_then_completed(nc, linger_s) == writes
