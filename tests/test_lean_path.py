"""The task path costs what the design needs and no more, counted on a real nats-server.

A worker and an uploader (each on its own counting connection, as the services connect)
take probe tasks published straight into the stream. On a first delivery the worker waits
for two publishes (``TaskStarted`` and ``OutputsReady``, together) and the uploader for
one (``TaskCompleted``): no KV read, no Object Store, no double ack. An output over the
inline limit goes through the Object Store and is removed once stored.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from pixelbus.contracts.events import OutputsReady, TaskCompleted, TaskCreated, event_id
from pixelbus.contracts.subjects import OUTPUTS_BUCKET, pool_for_environment
from pixelbus.contracts.validation import PROBE_WORKFLOW
from pixelbus.runtime.clock import utcnow
from pixelbus.runtime.connection import TRAFFIC, connect
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.settings import BusSettings
from pixelbus.runtime.worker import WorkerRuntime
from pixelbus.storage_uploader.providers import build_provider
from pixelbus.storage_uploader.settings import StorageSettings
from pixelbus.storage_uploader.uploader import Uploader
from pixelbus.testkit.nats_server import NatsServer
from pixelbus.testkit.waiting import EventLog, eventually


@asynccontextmanager
async def worker_and_uploader(url: str, storage: Path, bus: BusSettings) -> AsyncIterator[None]:
    worker_nc = await connect(url, "test-worker")
    uploader_nc = await connect(url, "test-uploader")
    worker = WorkerRuntime(
        nc=worker_nc,
        js=worker_nc.jetstream(),
        pool=pool_for_environment("face_swap"),
        handlers={},
        settings=bus,
        concurrency=4,
        presence_interval_s=3600,  # no presence writes inside the counted window
    )
    provider = build_provider(
        StorageSettings.from_env({"PIXELBUS_LOCAL_STORAGE_DIR": str(storage)})
    )
    uploader = Uploader(
        uploader_nc, provider, bus, presence_interval_s=3600, health_interval_s=3600
    )
    tasks = [asyncio.create_task(worker.run()), asyncio.create_task(uploader.run())]
    await asyncio.wait_for(worker.wait_ready(), 10)
    try:
        yield
    finally:
        worker.stop()
        uploader.stop()
        await asyncio.wait(tasks, timeout=10)
        await provider.aclose()
        await worker_nc.close()
        await uploader_nc.close()


async def create_probe(publisher: EventPublisher, task_id: str) -> None:
    await publisher.publish(
        TaskCreated(
            event_id=event_id(task_id, "created"),
            task_id=task_id,
            occurred_at=utcnow(),
            workflow=PROBE_WORKFLOW,
            environment="face_swap",
            input_data={},
        ),
        environment="face_swap",
        workflow=PROBE_WORKFLOW,
    )


async def test_a_probe_task_costs_three_waited_requests_after_create(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    bus = BusSettings.from_env({})
    await ensure(nc.jetstream(), bus)
    publisher = EventPublisher(nc.jetstream())  # the test's own connection: not counted
    events = await EventLog.open(nc)
    async with worker_and_uploader(nats_server.url, tmp_path / "storage", bus):
        # A task created before the worker listened is checked against its state first.
        await create_probe(publisher, "warm_up")
        await events.wait_for(lambda e: isinstance(e, TaskCompleted), timeout=20)
        for n in range(5):
            task_id = f"task_{n}"
            before = TRAFFIC.requests
            await create_probe(publisher, task_id)
            await events.wait_for(
                lambda e, t=task_id: isinstance(e, TaskCompleted) and e.task_id == t,  # type: ignore[misc]
                timeout=20,
            )
            # started + outputs (worker), completed (uploader): nothing else waited for
            assert TRAFFIC.requests - before == 3, f"task {n}"
            (ready,) = events.of(task_id, OutputsReady)
            (output,) = ready.outputs
            assert output.data is not None and json.loads(output.data)["task_id"] == task_id
            (completed,) = events.of(task_id, TaskCompleted)
            (stored,) = completed.outputs
            assert (tmp_path / "storage" / stored.key).read_bytes() == output.data
    info = await nc.jetstream().stream_info(f"OBJ_{OUTPUTS_BUCKET}")
    assert info.state.messages == 0  # inline outputs never touch the Object Store


async def test_an_output_over_the_inline_limit_goes_through_the_object_store(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    bus = BusSettings.from_env({"PIXELBUS_INLINE_OUTPUT_BYTES": "8"})
    await ensure(nc.jetstream(), bus)
    events = await EventLog.open(nc)
    async with worker_and_uploader(nats_server.url, tmp_path / "storage", bus):
        await create_probe(EventPublisher(nc.jetstream()), "task_big")
        completed = await events.wait_for(lambda e: isinstance(e, TaskCompleted), timeout=20)
        (ready,) = events.of("task_big", OutputsReady)
        (output,) = ready.outputs
        assert output.data is None and output.size > 8
        assert isinstance(completed, TaskCompleted)
        (stored,) = completed.outputs
        body = (tmp_path / "storage" / stored.key).read_bytes()
        assert json.loads(body)["task_id"] == "task_big" and len(body) == output.size
        store = await nc.jetstream().object_store(OUTPUTS_BUCKET)

        async def removed() -> bool | None:
            try:
                entries = await store.list(ignore_deletes=True)
            except NotFoundError:  # nats-py's answer to listing an empty store
                return True
            return None if entries else True

        await eventually(removed)  # removal follows the completion
