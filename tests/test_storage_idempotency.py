"""A redelivered ``OutputsReady`` creates no second object: the key depends on the event's
date, the task and the file name only, and ``TaskCompleted`` is stored once per task.

The same outputs reach the uploader twice (the Object Store entry put back in between,
as after a crash before the clean-up); the second time the uploader has no final state to
skip on (no projector runs here), so it really uploads again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.js.errors import ObjectNotFoundError

from pixelbus.contracts.events import OutputsReady, TaskCompleted, event_id
from pixelbus.contracts.subjects import OUTPUTS_BUCKET, TASK_STREAM
from pixelbus.contracts.task import OutputObject
from pixelbus.runtime.objects import ObjectReader
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.settings import BusSettings
from pixelbus.storage_uploader.providers import build_provider
from pixelbus.storage_uploader.settings import StorageSettings
from pixelbus.storage_uploader.uploader import Uploader
from pixelbus.testkit.s3_server import S3Server
from pixelbus.testkit.waiting import EventLog, eventually

KEY = "tasks/2026/11/28/task_twice/result.png"


@pytest.fixture
async def uploader(nc: Client, s3_server: S3Server, s3_bucket: str) -> AsyncIterator[Uploader]:
    bus = BusSettings.from_env({"PIXELBUS_RETRY_DELAY_S": "0.1"})
    await ensure(nc.jetstream(), bus)
    settings = StorageSettings.from_env(
        {
            "STORAGE_PROVIDER": "r2",
            "R2_ACCESS_KEY_ID": s3_server.credentials.access_key_id,
            "R2_SECRET_ACCESS_KEY": s3_server.credentials.secret_access_key,
            "R2_BUCKET": s3_bucket,
            "R2_PUBLIC_URL": "https://cdn.example.com",
            "PIXELBUS_R2_ENDPOINT_URL": s3_server.endpoint_url,
        }
    )
    provider = build_provider(settings)
    uploader = Uploader(nc, provider, bus)
    running = asyncio.create_task(uploader.run())
    try:
        yield uploader
    finally:
        uploader.stop()
        await asyncio.wait_for(running, 10)
        await provider.aclose()


async def test_outputs_delivered_twice_make_one_object_and_one_completion(
    nc: Client, uploader: Uploader, s3_server: S3Server, s3_bucket: str
) -> None:
    js = nc.jetstream()
    objects = await js.object_store(OUTPUTS_BUCKET)
    log = await EventLog.open(nc)
    publisher = EventPublisher(js)
    reader = ObjectReader(js, OUTPUTS_BUCKET)
    occurred = datetime(2026, 11, 28, 23, 59, 59, tzinfo=UTC)
    for attempt, data in ((1, b"\x89PNG first"), (2, b"\x89PNG second")):
        # the worker's entry is there again, as after a crash before the clean-up
        await objects.put("task_twice/result.png", data)
        event = OutputsReady(
            event_id=event_id("task_twice", "outputs", attempt),  # a new stream message
            task_id="task_twice",
            occurred_at=occurred,
            attempt=1,
            outputs=(
                OutputObject(
                    object_name="task_twice/result.png",
                    filename="result.png",
                    content_type="image/png",
                    size=len(data),
                ),
            ),
        )
        await publisher.publish(event, environment="face_swap", workflow="face_swap")
        await log.wait_for(
            lambda _, n=attempt: len(log.of("task_twice", TaskCompleted)) == n, timeout=15
        )
        stored = s3_server.client().get_object(Bucket=s3_bucket, Key=KEY)["Body"].read()
        assert stored == data  # the redelivery overwrote the same object
        await eventually(lambda: entry_gone(reader, "task_twice/result.png"))
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [o["Key"] for o in listing] == [KEY]
    info = await js.stream_info(TASK_STREAM, subjects_filter="pixelbus.tasks.*.*.completed.>")
    assert sum((info.state.subjects or {}).values()) == 1  # stored once (same event id)


async def entry_gone(reader: ObjectReader, name: str) -> bool | None:
    """``True`` once the uploader removed the Object Store entry (its clean-up)."""
    try:
        await reader.info(name)
    except ObjectNotFoundError:
        return True
    return None
