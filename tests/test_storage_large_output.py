"""A 50 MB output goes from the Object Store to R2 (the S3 server) as a multipart upload,
streamed: the uploader's peak memory stays far below the size of the file.

The uploader runs in this process against a real nats-server; the output is put into the
Object Store from a file before measuring, then ``OutputsReady`` is published and the
Python heap's peak (tracemalloc) is taken from there until ``TaskCompleted``.
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.client import Client

from pixelbus.contracts.events import OutputsReady, TaskCompleted, event_id
from pixelbus.contracts.subjects import OUTPUTS_BUCKET
from pixelbus.contracts.task import OutputObject
from pixelbus.runtime.provision import ensure
from pixelbus.runtime.publisher import EventPublisher
from pixelbus.runtime.settings import BusSettings
from pixelbus.storage_uploader.providers import R2Provider
from pixelbus.storage_uploader.settings import MIN_PART_SIZE, StorageSettings
from pixelbus.storage_uploader.uploader import Uploader
from pixelbus.testkit.s3_server import S3Server
from pixelbus.testkit.waiting import EventLog

SIZE = 50 * 1000 * 1000  # 50 MB
BLOCK = 1024 * 1024


@pytest.fixture
def video(tmp_path: Path) -> tuple[Path, str]:
    """A 50 MB file of varied bytes, written block by block, and its SHA-256."""
    path = tmp_path / "clip.mp4"
    digest = hashlib.sha256()
    with path.open("wb") as file:
        for index in range(0, SIZE, BLOCK):
            block = hashlib.sha256(str(index).encode()).digest() * (BLOCK // 32)
            block = block[: min(BLOCK, SIZE - index)]
            digest.update(block)
            file.write(block)
    return path, digest.hexdigest()


@pytest.fixture
async def uploader(
    nc: Client, s3_server: S3Server, s3_bucket: str
) -> AsyncIterator[tuple[Uploader, R2Provider]]:
    bus = BusSettings.from_env({"PIXELBUS_RETRY_DELAY_S": "0.1"})
    await ensure(nc.jetstream(), bus)
    env = {
        "STORAGE_PROVIDER": "r2",
        "R2_ACCESS_KEY_ID": s3_server.credentials.access_key_id,
        "R2_SECRET_ACCESS_KEY": s3_server.credentials.secret_access_key,
        "R2_BUCKET": s3_bucket,
        "R2_PUBLIC_URL": "https://cdn.example.com",
        "PIXELBUS_R2_ENDPOINT_URL": s3_server.endpoint_url,
        "PIXELBUS_R2_PART_SIZE": str(MIN_PART_SIZE),
    }
    settings = StorageSettings.from_env(env)
    assert settings.r2 is not None
    provider = R2Provider(settings.r2)
    uploader = Uploader(nc, provider, bus, retry=settings.retry)
    running = asyncio.create_task(uploader.run())
    try:
        yield uploader, provider
    finally:
        uploader.stop()
        await asyncio.wait_for(running, 10)
        await provider.aclose()


async def test_a_50_mb_output_goes_up_in_parts_with_memory_far_below_its_size(
    nc: Client,
    uploader: tuple[Uploader, R2Provider],
    s3_server: S3Server,
    s3_bucket: str,
    video: tuple[Path, str],
) -> None:
    path, sha256 = video
    js = nc.jetstream()
    objects = await js.object_store(OUTPUTS_BUCKET)
    with path.open("rb") as file:
        await objects.put("task_big/clip.mp4", file)
    log = await EventLog.open(nc)
    event = OutputsReady(
        event_id=event_id("task_big", "outputs", 1),
        task_id="task_big",
        occurred_at=datetime(2026, 11, 28, 6, 0, tzinfo=UTC),
        attempt=1,
        outputs=(
            OutputObject(
                object_name="task_big/clip.mp4",
                filename="clip.mp4",
                content_type="video/mp4",
                size=SIZE,
            ),
        ),
    )

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        await EventPublisher(js).publish(event, environment="comm", workflow="video")
        done = await log.wait_for(lambda e: isinstance(e, TaskCompleted), timeout=60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(f"\n50 MB output via R2 multipart: uploader peak Python memory {peak / 2**20:.1f} MiB")
    assert peak < SIZE / 4, f"peak {peak / 2**20:.1f} MiB is not far below 50 MB"
    assert isinstance(done, TaskCompleted)
    [stored] = done.outputs
    assert stored.key == "tasks/2026/11/28/task_big/clip.mp4"
    assert stored.url == f"https://cdn.example.com/{stored.key}"
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=stored.key)
    assert head["ContentLength"] == SIZE
    assert head["ETag"].strip('"').endswith(f"-{-(-SIZE // MIN_PART_SIZE)}")  # 10 parts
    assert head["ContentType"] == "video/mp4"
    body = s3_server.client().get_object(Bucket=s3_bucket, Key=stored.key)["Body"]
    digest = hashlib.sha256()
    for block in iter(lambda: body.read(BLOCK), b""):
        digest.update(block)
    assert digest.hexdigest() == sha256
